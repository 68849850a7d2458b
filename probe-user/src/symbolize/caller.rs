//! The caller a frame-pointer walk skips. A C library wrapper that sets up no frame of its
//! own (glibc's `connect`) leaves the frame pointer to its caller's frame, so the walk goes
//! from the wrapper straight to its caller's caller: the function that called `connect` (the
//! one a reader wants) is missing. Its return address is on the stack, though, at or a few
//! words above the stack pointer at the system call (the kernel program saves those words):
//! the first of them that points just after a call instruction, in executable memory, is it.

use std::os::unix::fs::FileExt;

use probe_common::CallerWords;

use super::memory::AddressSpace;

/// `addresses` (a walk, innermost first, cut where it stops being code), with the caller the
/// walk skipped put back after the first frame, when `words` show one.
pub fn with_skipped_caller(
    addresses: &[u64],
    words: &CallerWords,
    space: &AddressSpace,
    code: &impl Fn(u64) -> Option<[u8; 7]>,
) -> Vec<u64> {
    let mut fixed = addresses.to_vec();
    let Some(&first) = addresses.first() else {
        return fixed;
    };
    let candidate = words
        .iter()
        .copied()
        .filter(|&word| word != first && space.is_code(word))
        .find(|&word| code(word).is_some_and(|before| ends_with_call(&before)));
    match candidate {
        // The walk has it: nothing was skipped.
        Some(caller) if addresses.contains(&caller) => {}
        Some(caller) => fixed.insert(1, caller),
        None => {}
    }
    fixed
}

/// Whether the 7 bytes before a return address end with a call instruction of the architecture
/// probe runs on.
fn ends_with_call(before: &[u8; 7]) -> bool {
    #[cfg(target_arch = "x86_64")]
    return ends_with_x86_64_call(before);
    #[cfg(target_arch = "aarch64")]
    return ends_with_aarch64_call(before);
}

/// Whether the 7 bytes before a return address end with an x86-64 call instruction: `call
/// rel32` (E8), or an indirect `call` (FF /2) through a register or memory, with or without a
/// REX prefix, a SIB byte, an 8- or 32-bit displacement.
// Both decoders are unit-tested on every host; each architecture calls its own.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn ends_with_x86_64_call(before: &[u8; 7]) -> bool {
    let at = |back: usize| before[7 - back];
    let indirect = |back: usize, modrm_mod: u8, sib: bool| {
        let modrm = at(back - 1);
        at(back) == 0xff
            && (modrm >> 3) & 7 == 2
            && modrm >> 6 == modrm_mod
            && (modrm & 7 == 4) == sib
    };
    at(5) == 0xe8
        // call reg (FF D0+r), with a REX prefix for r8-r15.
        || indirect(2, 0b11, false)
        || indirect(2, 0b11, true)
        // call [reg] (mod 00), call [rip+disp32] (FF 15).
        || indirect(2, 0b00, false)
        || indirect(3, 0b00, true)
        || (at(6) == 0xff && at(5) == 0x15)
        // call [reg+disp8] (mod 01), with or without SIB.
        || indirect(3, 0b01, false)
        || indirect(4, 0b01, true)
        // call [reg+disp32] (mod 10), with or without SIB.
        || indirect(6, 0b10, false)
        || indirect(7, 0b10, true)
}

/// Whether the 4-byte instruction before a return address is an arm64 call: `bl` (100101 and a
/// 26-bit offset) or `blr` (a register). On arm64 the kernel program notes the link register,
/// which holds the return address into the caller of a function that saved no frame record.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
fn ends_with_aarch64_call(before: &[u8; 7]) -> bool {
    let instruction = u32::from_le_bytes([before[3], before[4], before[5], before[6]]);
    instruction & 0xfc00_0000 == 0x9400_0000 || instruction & 0xffff_fc1f == 0xd63f_0000
}

/// The 7 bytes before `address` in process `pid`'s memory.
pub fn code_before(pid: u32) -> impl Fn(u64) -> Option<[u8; 7]> {
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).ok();
    move |address| {
        let mut bytes = [0u8; 7];
        memory
            .as_ref()?
            .read_exact_at(&mut bytes, address.checked_sub(7)?)
            .ok()?;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Code whose return addresses are in `calls` (each preceded by `call rel32`).
    fn code(calls: &'static [u64]) -> impl Fn(u64) -> Option<[u8; 7]> {
        move |address| {
            Some(if calls.contains(&address) {
                [0x90, 0x90, 0xe8, 1, 2, 3, 4]
            } else {
                [0x90; 7]
            })
        }
    }

    fn space() -> AddressSpace {
        AddressSpace::of("/srv/app", &[(0x1000, 0x9000, Some("/srv/app"))])
    }

    #[test]
    fn the_caller_of_a_frameless_wrapper_is_put_back() {
        // connect (0x1100) <- [do_request skipped] <- main (0x2200); do_request's return
        // address 0x3300 is the first word at the stack pointer.
        let words = [0x3300, 0x7fff_0000, 5, 0, 0, 0, 0, 0];
        let fixed = with_skipped_caller(&[0x1100, 0x2200], &words, &space(), &code(&[0x3300]));
        assert_eq!(fixed, [0x1100, 0x3300, 0x2200]);
    }

    #[test]
    fn deeper_words_on_the_cancellable_path_are_found_too() {
        let words = [0x10, 0x7fff_0000, 0x2a, 0x7fff_0040, 0x4400, 0, 0, 0];
        let fixed = with_skipped_caller(&[0x1100], &words, &space(), &code(&[0x4400]));
        assert_eq!(fixed, [0x1100, 0x4400]);
    }

    #[test]
    fn arm64_calls_are_told_from_other_instructions() {
        let before = |instruction: u32| {
            let mut bytes = [0u8; 7];
            bytes[3..].copy_from_slice(&instruction.to_le_bytes());
            bytes
        };
        // bl #-0x1000, blr x8: calls. ret, b #0x10, br x8, nop: not.
        for call in [0x97ff_fc00, 0xd63f_0100] {
            assert!(ends_with_aarch64_call(&before(call)), "{call:#x}");
        }
        for other in [0xd65f_03c0, 0x1400_0004, 0xd61f_0100, 0xd503_201f] {
            assert!(!ends_with_aarch64_call(&before(other)), "{other:#x}");
        }
    }

    #[test]
    fn a_walk_that_has_the_caller_is_left_alone() {
        let words = [0x2200, 0, 0, 0, 0, 0, 0, 0];
        let fixed = with_skipped_caller(&[0x1100, 0x2200], &words, &space(), &code(&[0x2200]));
        assert_eq!(fixed, [0x1100, 0x2200]);
        // Code pointers not after a call (a function pointer in a saved register) are not
        // return addresses.
        let words = [0x5000, 0, 0, 0, 0, 0, 0, 0];
        let fixed = with_skipped_caller(&[0x1100, 0x2200], &words, &space(), &code(&[]));
        assert_eq!(fixed, [0x1100, 0x2200]);
        // Nor is anything outside executable memory.
        let words = [0xa000, 0, 0, 0, 0, 0, 0, 0];
        let fixed = with_skipped_caller(&[0x1100], &words, &space(), &code(&[0xa000]));
        assert_eq!(fixed, [0x1100]);
    }

    #[test]
    fn call_instructions_are_recognized() {
        let ends = |bytes: [u8; 7]| ends_with_x86_64_call(&bytes);
        assert!(ends([0, 0, 0xe8, 1, 2, 3, 4]), "call rel32");
        assert!(ends([0, 0, 0, 0, 0, 0xff, 0xd0]), "call rax");
        assert!(ends([0, 0, 0, 0, 0x41, 0xff, 0xd3]), "call r11");
        assert!(ends([0, 0xff, 0x15, 1, 2, 3, 4]), "call [rip+disp32]");
        assert!(ends([0, 0, 0, 0, 0xff, 0x50, 0x08]), "call [rax+8]");
        assert!(ends([0, 0, 0, 0xff, 0x54, 0x24, 0x08]), "call [rsp+8]");
        assert!(ends([0, 0xff, 0x90, 1, 2, 3, 4]), "call [rax+disp32]");
        assert!(ends([0, 0, 0, 0, 0, 0xff, 0x10]), "call [rax]");
        assert!(!ends([0x90; 7]));
        assert!(!ends([0, 0, 0, 0, 0, 0xff, 0xe0]), "jmp rax is no call");
    }
}
