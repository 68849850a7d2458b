//! Turning the kernel's stack ids into code paths: read the stack from the kernel's stack map,
//! symbolize it in the process it came from (blazesym), and cache the result per process and
//! stack id.

use std::{collections::HashMap, path::Path, sync::Arc};

use aya::maps::{MapData, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blazesym,
    source::{Process, Source},
};

use crate::track::{CodePath, Frame};

/// Symbolizes the user stacks the kernel program captured.
pub struct Symbolizer {
    stacks: StackTraceMap<MapData>,
    blazesym: Blazesym,
    cache: HashMap<(u32, u32), Option<Arc<CodePath>>>,
}

impl Symbolizer {
    /// A symbolizer over the kernel's stack map.
    pub fn new(stacks: StackTraceMap<MapData>) -> Self {
        Symbolizer {
            stacks,
            blazesym: Blazesym::new(),
            cache: HashMap::new(),
        }
    }

    /// The code path of stack `stack_id` captured in process `pid`, while that process is still
    /// there to be read.
    pub fn code_path(&mut self, pid: u32, stack_id: u32) -> Option<Arc<CodePath>> {
        if let Some(known) = self.cache.get(&(pid, stack_id)) {
            return known.clone();
        }
        let resolved = self.resolve(pid, stack_id).map(Arc::new);
        self.cache.insert((pid, stack_id), resolved.clone());
        resolved
    }

    fn resolve(&self, pid: u32, stack_id: u32) -> Option<CodePath> {
        let trace = self.stacks.get(&stack_id, 0).ok()?;
        let addresses: Vec<u64> = trace.frames().iter().map(|frame| frame.ip).collect();
        let source = Source::Process(Process::new(pid.into()));
        let symbols = self
            .blazesym
            .symbolize(&source, Input::AbsAddr(&addresses))
            .map_err(|error| log::debug!("cannot symbolize a stack of {pid}: {error}"))
            .ok()?;
        let frames = addresses
            .iter()
            .zip(symbols)
            .map(|(&address, symbol)| match symbol {
                Symbolized::Sym(sym) => {
                    let code = sym.code_info.as_deref();
                    Frame {
                        function: sym.name.into_owned(),
                        file: code.map(|code| {
                            Path::new(&code.file)
                                .file_name()
                                .unwrap_or(&code.file)
                                .to_string_lossy()
                                .into_owned()
                        }),
                        line: code.and_then(|code| code.line),
                        address,
                    }
                }
                Symbolized::Unknown(_) => Frame {
                    function: String::new(),
                    file: None,
                    line: None,
                    address,
                },
            })
            .collect();
        Some(CodePath { frames })
    }
}
