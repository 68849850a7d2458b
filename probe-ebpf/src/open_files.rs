//! The `task_file` iterator program: reading the iterator's file runs it once for every open
//! file of every process, and it writes one [`OpenFile`] for each. Userspace learns from one read
//! which process holds which socket (and how many files each has open) instead of reading every
//! `/proc/PID/fd` link, a system call per descriptor: on a host holding a million sockets, that
//! was seconds of probe's start.

use aya_ebpf::{
    bindings::{file, seq_file},
    cty::c_void,
    helpers::{bpf_probe_read_kernel, bpf_seq_write, bpf_sock_from_file},
};
use probe_common::{FileLayout, OpenFile};

use crate::count_failure;

/// Field offsets for this program, set by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
static FILE_LAYOUT: aya_ebpf::Global<FileLayout> = aya_ebpf::Global::new(FileLayout {
    task_tgid: 0,
    file_inode: 0,
    inode_number: 0,
});

/// The kernel's `struct bpf_iter__task_file`, the program's context.
#[repr(C)]
struct TaskFileContext {
    meta: *const IterMeta,
    /// `struct task_struct *`; null on the last call, after the last file.
    task: *const u8,
    fd: u32,
    _padding: u32,
    /// `struct file *`; null on the last call.
    file: *mut file,
}

/// The start of the kernel's `struct bpf_iter_meta`.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn open_files(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes its `struct bpf_iter__task_file`, which `TaskFileContext` spells
    // out field for field; the verifier checks every access against the kernel's BTF.
    let ctx = unsafe { &*(ctx as *const TaskFileContext) };
    count_failure(write_open_file(ctx));
    0
}

#[inline(always)]
fn write_open_file(ctx: &TaskFileContext) -> Result<(), i64> {
    if ctx.task.is_null() || ctx.file.is_null() {
        return Ok(());
    }
    let layout = FILE_LAYOUT.load();
    let read = |address: u64, offset: u32| -> Result<u64, i64> {
        let at = address.wrapping_add(u64::from(offset)) as *const u64;
        // SAFETY: bpf_probe_read_kernel copies out of kernel memory and fails cleanly on a bad
        // address; the offsets come from the running kernel's BTF.
        unsafe { bpf_probe_read_kernel(at) }.map_err(i64::from)
    };
    let tgid_at = (ctx.task as u64).wrapping_add(u64::from(layout.task_tgid)) as *const u32;
    // SAFETY: as for `read`.
    let tgid = unsafe { bpf_probe_read_kernel(tgid_at) }.map_err(i64::from)?;
    // SAFETY: the file is the iterator's current one, not null (checked above); the helper
    // gives null for anything but a socket.
    let socket = unsafe { bpf_sock_from_file(ctx.file) };
    let socket_inode = if socket.is_null() {
        0
    } else {
        let inode = read(ctx.file as u64, layout.file_inode)?;
        read(inode, layout.inode_number)?
    };
    let record = OpenFile {
        tgid,
        fd: ctx.fd,
        socket_inode,
    };
    // When the read's buffer is full the write fails, and the kernel shows this same file
    // again at the start of the next buffer: nothing to do or count.
    // SAFETY: meta is never null in an iterator program, and its seq_file is the one being
    // read; the record is on this program's stack for the length given.
    unsafe {
        bpf_seq_write(
            (*ctx.meta).seq,
            core::ptr::addr_of!(record) as *const c_void,
            core::mem::size_of::<OpenFile>() as u32,
        )
    };
    Ok(())
}
