//! The `task_file` iterator program: every process's open files in one read (see
//! [`crate::snapshot::OpenFiles`] for what is made of them). Host-wide and in cgroups, where a
//! snapshot concerns most processes of the host, this replaces a `readlink` per descriptor.

use std::{
    fs::File,
    io::{self, Read},
};

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

/// Starts a run of the loaded iterator over every open file of every process.
pub(super) fn open(ebpf: &mut Ebpf) -> Result<OpenFilesRun, OpenFilesError> {
    let program = program(ebpf)?;
    let link = program.attach()?;
    let file = program.take_link(link)?.into_file()?;
    Ok(OpenFilesRun { file })
}

/// A run of the `task_file` iterator, opened and not yet read: the kernel walks every
/// process's files as it is read, which may take seconds on a large host and may happen on
/// another thread than the one that holds the program.
#[derive(Debug)]
pub struct OpenFilesRun {
    file: File,
}

impl OpenFilesRun {
    /// Its [`OpenFile`](probe_common::OpenFile) records, back to back; `None` where they could
    /// not be read (the snapshot reads `/proc` then).
    pub fn read(mut self) -> Option<Vec<u8>> {
        let started = std::time::Instant::now();
        let mut records = Vec::new();
        if let Err(error) = self.file.read_to_end(&mut records) {
            log::debug!(
                "open files read from /proc: {}",
                super::chain(&OpenFilesError::Read(error))
            );
            return None;
        }
        log::debug!(
            "{} bytes of open files read from the kernel's task_file iterator in {:?}",
            records.len(),
            started.elapsed()
        );
        Some(records)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Iter, OpenFilesError> {
    let program = ebpf
        .program_mut(names::OPEN_FILES_PROGRAM)
        .ok_or(OpenFilesError::Missing)?;
    Ok(program.try_into()?)
}
