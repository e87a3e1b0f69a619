//! A test's own folder for the files it writes (configs, keys, tokens, child process logs).

use std::path::{Path, PathBuf};

/// A fresh folder under the system's temporary folder, removed with everything in it when
/// dropped, unless the test is failing: then it stays, for the logs in it, and its path is
/// printed beside the failure.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A new folder whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique_name(prefix));
        std::fs::create_dir_all(&path).expect("temporary folder");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in the folder (the file need not exist).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `content` to `name` in the folder and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.file(name);
        std::fs::write(&path, content).expect("file in the temporary folder");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("files of the failing test kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_and_its_files_go_when_it_is_dropped() {
        let scratch = ScratchDir::new("scratch-test");
        let file = scratch.write("a.toml", "x = 1\n");
        let folder = scratch.path().to_owned();
        assert_eq!(std::fs::read_to_string(&file).expect("written"), "x = 1\n");
        drop(scratch);
        assert!(!folder.exists());
    }

    #[test]
    fn a_failing_test_keeps_its_files() {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = std::sync::Arc::clone(&kept);
        let outcome = std::thread::spawn(move || {
            let scratch = ScratchDir::new("scratch-test");
            *seen.lock().expect("lock") = Some(scratch.write("worker.log", "why it failed"));
            panic!("the test fails");
        })
        .join();
        assert!(outcome.is_err());
        let file = kept.lock().expect("lock").take().expect("written");
        assert_eq!(
            std::fs::read_to_string(&file).expect("kept"),
            "why it failed"
        );
        std::fs::remove_dir_all(file.parent().expect("folder")).expect("clean up");
    }
}
