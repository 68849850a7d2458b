//! The user stacks the kernel program copies at connect, read from their ring buffer and
//! unwound as they arrive: while their process and the files it maps are there to be read (a
//! short-lived client such as curl is gone by the time its stack is asked for).

use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use probe_common::StackCopy;

use super::unwind::{StackUnwinder, Unwound};
use crate::track::StackRef;

/// The stacks the kernel program copied, unwound as they arrive (while their process and its
/// modules are there to be read), until the stack they belong to is asked for.
pub struct StackCopies {
    ring: RingBuf<MapData>,
    unwinder: StackUnwinder,
    unwound: HashMap<StackRef, Unwound>,
}

/// Unwound stacks kept for their stack to be asked for, at most: each is asked for as soon as
/// its connect is decoded, so only stacks whose event was lost wait here long.
const MAX_UNWOUND: usize = 16384;

impl StackCopies {
    /// Unwinds the copies the kernel program leaves in `ring`.
    pub fn new(ring: RingBuf<MapData>) -> StackCopies {
        StackCopies {
            ring,
            unwinder: StackUnwinder::default(),
            unwound: HashMap::new(),
        }
    }

    /// Unwinds every copy waiting in the ring buffer.
    pub fn drain(&mut self) {
        while let Some(record) = self.ring.next() {
            if record.len() < size_of::<StackCopy>() {
                continue;
            }
            // SAFETY: the record holds a whole `StackCopy` (checked above), written by the
            // kernel program; `StackCopy` is plain integers and bytes, valid for any bits, and
            // read unaligned.
            let copy: Box<StackCopy> =
                Box::new(unsafe { (record.as_ptr() as *const StackCopy).read_unaligned() });
            drop(record);
            let unwound = self.unwinder.unwind(&copy);
            log::debug!(
                "stack {} of pid {} ({} bytes copied): {} frames unwound{}",
                copy.stack_id,
                copy.tgid,
                copy.len,
                unwound.frames.len(),
                if unwound.complete {
                    ", to its root"
                } else {
                    ""
                }
            );
            if self.unwound.len() >= MAX_UNWOUND {
                self.unwound.clear();
            }
            let stack = StackRef {
                pid: copy.tgid,
                id: copy.stack_id as u32,
            };
            self.unwound.insert(stack, unwound);
        }
    }

    /// The frames of `stack` unwound from its copy, if the kernel program copied it.
    pub fn take(&mut self, stack: StackRef) -> Option<Unwound> {
        self.drain();
        self.unwound.remove(&stack)
    }
}
