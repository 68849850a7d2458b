//! cgroup v2 directories of the tests' own, under wherever the unified hierarchy is mounted.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The cgroup v2 mount point (found in mountinfo: on hybrid hosts it is not /sys/fs/cgroup).
pub fn hierarchy() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (fields, filesystem) = line.split_once(" - ")?;
            (filesystem.split_whitespace().next()? == "cgroup2")
                .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".into())
}

/// A cgroup made for a test (nested directories created as needed), emptied and removed on
/// drop.
pub struct TestCgroup {
    root: PathBuf,
    /// The directories created, outermost first.
    created: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `relative` (e.g. `a/b/c`) below the hierarchy's root.
    pub fn create(relative: &str) -> Result<TestCgroup, String> {
        let root = hierarchy()?;
        let mut created = Vec::new();
        let mut path = root.clone();
        for part in relative.split('/') {
            path.push(part);
            if !path.exists() {
                fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                created.push(path.clone());
            }
        }
        Ok(TestCgroup { root, created })
    }

    /// The innermost directory.
    pub fn path(&self) -> &Path {
        self.created.last().map_or(&self.root, PathBuf::as_path)
    }

    /// The innermost directory as /proc/PID/cgroup shows it (`/a/b/c`).
    pub fn relative(&self) -> String {
        format!(
            "/{}",
            self.path()
                .strip_prefix(&self.root)
                .unwrap_or(self.path())
                .display()
        )
    }

    /// Moves process `pid` into the innermost directory.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        fs::write(self.path().join("cgroup.procs"), pid.to_string()).map_err(|e| e.to_string())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}
