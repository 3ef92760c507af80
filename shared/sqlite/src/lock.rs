//! One process per data file: an advisory lock on `<data file>.lock`, holding the owner's pid.
//!
//! The lock is the kernel's (`flock`): it goes away with the process, however it ends, so a crash
//! never leaves a stale lock behind; the pid inside is only there to name the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct DataLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{data} is in use by another Ops-Core process (pid {pid}, lock file {lock}); stop it first")]
    Held { data: String, pid: String, lock: String },
    #[error("cannot lock {lock}: {source}")]
    Io {
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

impl DataLock {
    pub fn acquire(data: &Path) -> Result<DataLock, LockError> {
        let mut name = data.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let io = |source| LockError::Io {
            lock: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    data: data.display().to_string(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid.into() },
                    lock: path.display().to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataLock { _file: file, path })
    }
}
