//! The `task_file` iterator program: every process's open files in one read (see
//! [`crate::snapshot::OpenFiles`] for what is made of them). Host-wide and in cgroups, where a
//! snapshot concerns most processes of the host, this replaces a `readlink` per descriptor.

use std::io::{self, Read};

use aya::{
    Btf, BtfError, Ebpf,
    programs::{Iter, ProgramError, links::LinkError},
};
use probe_common::names;

/// Why the iterator could not be loaded or read (the snapshots then read `/proc` instead).
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("the kernel object has no `{}` program", names::OPEN_FILES_PROGRAM)]
    Missing,
    #[error("cannot read the kernel's BTF for the task_file iterator")]
    Btf(#[from] BtfError),
    #[error("the kernel refused the task_file iterator")]
    Program(#[from] ProgramError),
    #[error("cannot open the task_file iterator")]
    Link(#[from] LinkError),
    #[error("cannot read the task_file iterator")]
    Read(#[from] io::Error),
}

/// Loads the iterator program into the kernel.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), OpenFilesError> {
    let btf = Btf::from_sys_fs()?;
    program(ebpf)?.load("task_file", &btf)?;
    Ok(())
}

/// Runs the loaded iterator over every open file of every process: its
/// [`OpenFile`](probe_common::OpenFile) records, back to back.
pub(super) fn read(ebpf: &mut Ebpf) -> Result<Vec<u8>, OpenFilesError> {
    let program = program(ebpf)?;
    let link = program.attach()?;
    let mut file = program.take_link(link)?.into_file()?;
    let mut records = Vec::new();
    file.read_to_end(&mut records)?;
    Ok(records)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Iter, OpenFilesError> {
    let program = ebpf
        .program_mut(names::OPEN_FILES_PROGRAM)
        .ok_or(OpenFilesError::Missing)?;
    Ok(program.try_into()?)
}
