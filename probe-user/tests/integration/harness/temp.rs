//! Files and directories of one test run, removed when dropped.

use std::path::PathBuf;

/// A path in the temporary directory, named for this test run, removed (file or directory)
/// when dropped.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("probe-test-{}-{name}", std::process::id())))
    }

    /// The same, created as an empty directory.
    pub fn directory(name: &str) -> Result<TempPath, String> {
        let path = TempPath::new(name);
        let _ = std::fs::remove_dir_all(&path.0);
        std::fs::create_dir_all(&path.0)
            .map_err(|e| format!("cannot create {}: {e}", path.0.display()))?;
        Ok(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
