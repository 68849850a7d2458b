//! Where the report is written, safely: never through a symlink someone planted, never left
//! half-written or empty by an abnormal end. The page is written to an unnamed file in the same
//! directory (`O_TMPFILE`), which vanishes if probe dies, and renamed into place once complete;
//! it is 0644 whatever the umask. A path that names a device (`/dev/null`) is written directly.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use nix::{fcntl::AtFlags, unistd::linkat};

/// Why the report cannot be written where asked.
#[derive(Debug, thiserror::Error)]
pub enum ReportFileError {
    #[error(
        "{0} is a symlink: probe does not write through symlinks (whoever owns it chooses what \
         gets overwritten); give the real path"
    )]
    Symlink(PathBuf),
    #[error("{} is a directory: give a file name, e.g. {}/report.html", .0.display(), .0.display())]
    Directory(PathBuf),
    #[error("cannot write the report in {}: check the directory exists and is writable", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("cannot write the report {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

/// The report's destination, opened at start so that a bad path fails before tracing.
pub struct ReportFile {
    path: PathBuf,
    target: Target,
}

enum Target {
    /// An unnamed file in the destination's directory, linked and renamed into place at the end.
    Unnamed(File),
    /// A named temporary file (where `O_TMPFILE` is not supported), renamed into place at the
    /// end and removed if probe stops before.
    Named { file: File, temporary: PathBuf },
    /// A device or pipe (`/dev/null`, `/dev/stdout`): written as it is.
    Special(File),
}

/// The report's mode, whatever the umask: readable by whoever handles the incident.
const MODE: u32 = 0o644;

impl ReportFile {
    /// Opens the destination `path` for a report written later by [`ReportFile::commit`].
    pub fn create(path: &Path) -> Result<ReportFile, ReportFileError> {
        let open_error = |error| ReportFileError::Open {
            path: path.to_path_buf(),
            error,
        };
        let target = match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ReportFileError::Symlink(path.to_path_buf()));
            }
            Ok(meta) if meta.is_dir() => {
                return Err(ReportFileError::Directory(path.to_path_buf()));
            }
            Ok(meta) if is_special(&meta.file_type()) => Target::Special(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(open_error)?,
            ),
            _ => Self::temporary(path).map_err(open_error)?,
        };
        Ok(ReportFile {
            path: path.to_path_buf(),
            target,
        })
    }

    fn temporary(path: &Path) -> io::Result<Target> {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let unnamed = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .mode(MODE)
            .open(directory);
        match unnamed {
            Ok(file) => {
                file.set_permissions(Permissions::from_mode(MODE))?;
                Ok(Target::Unnamed(file))
            }
            // Filesystems without O_TMPFILE say so in one of these ways.
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let temporary = temporary_name(path);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(MODE)
                    .open(&temporary)?;
                file.set_permissions(Permissions::from_mode(MODE))?;
                Ok(Target::Named { file, temporary })
            }
            Err(error) => Err(error),
        }
    }

    /// Writes `page` and puts it in place.
    pub fn commit(mut self, page: &[u8]) -> Result<(), ReportFileError> {
        let write_error = |error| ReportFileError::Write {
            path: self.path.clone(),
            error,
        };
        match &mut self.target {
            Target::Special(file) => file.write_all(page).map_err(write_error),
            Target::Unnamed(file) => {
                file.write_all(page)
                    .and_then(|()| file.sync_all())
                    .map_err(write_error)?;
                // Linked under a temporary name first: linkat cannot replace an existing file,
                // rename can (and replaces a symlink planted meanwhile, never its target).
                let temporary = temporary_name(&self.path);
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                linkat(
                    None,
                    Path::new(&proc_path),
                    None,
                    temporary.as_path(),
                    AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|errno| write_error(io::Error::from(errno)))?;
                fs::rename(&temporary, &self.path).map_err(|error| {
                    let _ = fs::remove_file(&temporary);
                    write_error(error)
                })
            }
            Target::Named { file, temporary } => {
                file.write_all(page)
                    .and_then(|()| file.sync_all())
                    .map_err(write_error)?;
                let renamed = fs::rename(&*temporary, &self.path);
                if renamed.is_ok() {
                    // Committed: nothing to remove on drop.
                    temporary.clear();
                }
                renamed.map_err(write_error)
            }
        }
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        if let Target::Named { temporary, .. } = &self.target
            && !temporary.as_os_str().is_empty()
        {
            let _ = fs::remove_file(temporary);
        }
    }
}

fn is_special(kind: &fs::FileType) -> bool {
    kind.is_char_device() || kind.is_block_device() || kind.is_fifo() || kind.is_socket()
}

/// A name beside `path` that no one else uses: hidden, with probe's pid.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.probe-{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("probe-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_page_appears_only_when_complete_and_0644() {
        let dir = directory("complete");
        let path = dir.join("r.html");
        let file = ReportFile::create(&path).unwrap();
        assert!(
            !path.exists(),
            "nothing is visible before the page is complete"
        );
        file.commit(b"<html></html>").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"<html></html>");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no leftovers");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_and_directories_are_refused_and_devices_written_as_they_are() {
        let dir = directory("refused");
        let target = dir.join("target");
        fs::write(&target, "keep").unwrap();
        let link = dir.join("r.html");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            ReportFile::create(&link),
            Err(ReportFileError::Symlink(_))
        ));
        assert!(matches!(
            ReportFile::create(&dir),
            Err(ReportFileError::Directory(_))
        ));
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        ReportFile::create(Path::new("/dev/null"))
            .unwrap()
            .commit(b"x")
            .unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_an_error_at_once() {
        let error = ReportFile::create(Path::new("/nonexistent-dir/r.html"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("writable"), "{error}");
    }
}
