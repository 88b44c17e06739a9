//! Inputs by path, confined to one data directory.
//!
//! A job names files by `path`; the coordinator reads them only inside its data directory
//! (`--data-dir`). Paths resolve beneath it with every symlink followed inside it (cap-std's
//! `Dir`, which refuses a step outside before taking it), only regular files are opened — a
//! FIFO would block the reader, `/dev/zero` never ends — and reads are bounded while they
//! happen, not only by the size a file claims. Errors name the job's own reference and never
//! say whether something outside the directory exists.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::Dir;

/// Why a path input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0:?} is outside the data directory (or not readable)")]
    Outside(String),
    #[error("{0:?}: no such file in the data directory")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotRegular(String),
    #[error("{reference:?} is over the {max}-byte limit")]
    TooLarge { reference: String, max: u64 },
    #[error("{reference:?}: {message}")]
    Io { reference: String, message: String },
}

/// The directory inputs by path are read from.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    dir: Dir,
}

impl DataDir {
    /// Opens `root` (canonicalized) as the data directory.
    pub fn open(root: &Path) -> std::io::Result<DataDir> {
        let root = root.canonicalize()?;
        let dir = Dir::open_ambient_dir(&root, cap_std::ambient_authority())?;
        Ok(DataDir { root, dir })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `reference` relative to the root: absolute paths must lie under it; `..` may not climb
    /// out of it. Decided without touching the file system.
    fn relative(&self, reference: &str) -> Result<PathBuf, PathError> {
        let outside = || PathError::Outside(reference.to_string());
        let path = Path::new(reference);
        let path = match path.strip_prefix(&self.root) {
            Ok(inside) => inside,
            Err(_) if path.is_absolute() => return Err(outside()),
            Err(_) => path,
        };
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    parts.pop().ok_or_else(outside)?;
                }
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        if parts.is_empty() {
            return Err(PathError::NotRegular(reference.to_string()));
        }
        Ok(parts.iter().collect())
    }

    /// Opens a regular file beneath the root.
    pub fn open_file(&self, reference: &str) -> Result<std::fs::File, PathError> {
        let relative = self.relative(reference)?;
        let error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => PathError::NotFound(reference.to_string()),
            std::io::ErrorKind::PermissionDenied => PathError::Outside(reference.to_string()),
            _ => PathError::Io {
                reference: reference.to_string(),
                message: e.to_string(),
            },
        };
        // Checked before opening: opening a FIFO for reading blocks until a writer comes.
        if !self.dir.metadata(&relative).map_err(error)?.is_file() {
            return Err(PathError::NotRegular(reference.to_string()));
        }
        let file = self.dir.open(&relative).map_err(error)?.into_std();
        // A file swapped for something else in between is caught here.
        let regular = file.metadata().map(|m| m.is_file()).map_err(error)?;
        if !regular {
            return Err(PathError::NotRegular(reference.to_string()));
        }
        Ok(file)
    }

    /// Reads a regular file beneath the root, refusing it once more than `max` bytes came.
    pub fn read(&self, reference: &str, max: u64) -> Result<Vec<u8>, PathError> {
        let file = self.open_file(reference)?;
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| PathError::Io {
                reference: reference.to_string(),
                message: e.to_string(),
            })?;
        if bytes.len() as u64 > max {
            return Err(PathError::TooLarge {
                reference: reference.to_string(),
                max,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inputs_are_read_only_beneath_the_root() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.npy"), b"inside").unwrap();
        std::fs::write(base.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(base.path().join("absent"), root.join("dangling-out")).unwrap();
        std::os::unix::fs::symlink("sub/a.npy", root.join("in")).unwrap();
        let data = DataDir::open(&root).unwrap();
        let read = |r: &str| data.read(r, 100);
        assert_eq!(read("sub/a.npy").unwrap(), b"inside");
        assert_eq!(read("./sub/../sub/a.npy").unwrap(), b"inside");
        assert_eq!(read("in").unwrap(), b"inside");
        let absolute = data.root().join("sub/a.npy");
        assert_eq!(read(absolute.to_str().unwrap()).unwrap(), b"inside");
        // Escapes, whether or not their target exists, get the same answer.
        for r in [
            "../secret",
            "../absent",
            "sub/../../secret",
            "out",
            "dangling-out",
            "/etc/passwd",
            "/nonexistent/x.npy",
        ] {
            assert!(
                matches!(read(r), Err(PathError::Outside(_))),
                "{r}: {:?}",
                read(r)
            );
        }
        assert!(matches!(read("sub/none.npy"), Err(PathError::NotFound(_))));
        assert!(matches!(read("sub"), Err(PathError::NotRegular(_))));
        assert!(matches!(read("."), Err(PathError::NotRegular(_))));
        assert!(matches!(
            data.read("sub/a.npy", 3),
            Err(PathError::TooLarge { max: 3, .. })
        ));
        // Devices and FIFOs are refused without being read (a FIFO would block).
        let fifo = root.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(read("fifo"), Err(PathError::NotRegular(_))));
        let slash = DataDir::open(Path::new("/")).unwrap();
        assert!(matches!(
            slash.read("/dev/zero", 100),
            Err(PathError::NotRegular(_))
        ));
    }
}
