//! One process at a time per run folder: `pnn train` holds `<run>/pnn.lock` (its pid, host, start
//! time and command) while it writes there, and removes it when it ends, however it ends short
//! of being killed. A lock whose process is gone (killed, or its machine restarted) is
//! recognised as stale, named, and taken over; a live one refuses the second process.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const LOCK_FILE: &str = "pnn.lock";

/// What a lock file says about its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    pub started: String,
    pub command: Vec<String>,
}

impl Owner {
    fn this() -> Self {
        Self {
            pid: std::process::id(),
            host: host_name(),
            started: chrono::Local::now().to_rfc3339(),
            command: std::env::args().collect(),
        }
    }

    fn describe(&self) -> String {
        format!("pid {} on {}, started {}", self.pid, self.host, self.started)
    }
}

/// The lock of a run folder, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// A stale lock this one replaced, to be reported.
    pub replaced: Option<Owner>,
}

impl RunLock {
    /// Takes `dir`'s lock, or fails naming the live process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let me = Owner::this();
        let text = serde_json::to_string_pretty(&me)? + "\n";
        let mut replaced = None;
        // Twice at most: once more after removing a stale lock.
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(text.as_bytes())
                        .and_then(|_| file.sync_all())
                        .with_context(|| format!("cannot write the lock {}", path.display()))?;
                    return Ok(Self { path, replaced });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = read_owner(&path)?;
                    match liveness(&owner) {
                        Liveness::Gone => {
                            fs::remove_file(&path)
                                .with_context(|| format!("cannot remove the stale lock {}", path.display()))?;
                            replaced = Some(owner);
                        }
                        Liveness::Running => bail!(
                            "{} is in use by another pnn process ({}): wait for it to finish, stop it, or give \
                             another --save",
                            dir.display(),
                            owner.describe()
                        ),
                        Liveness::Unknown => bail!(
                            "{} is locked by a pnn process on another machine ({}): if that process is no longer \
                             running, delete {} and start again",
                            dir.display(),
                            owner.describe(),
                            path.display()
                        ),
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot create the lock {} (is the run folder writable?)",
                            path.display()
                        )
                    });
                }
            }
        }
        bail!(
            "{} was locked again by another process while a stale lock was removed",
            dir.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only our own lock: a process that found this one stale may have replaced it.
        if read_owner(&self.path).is_ok_and(|o| o.pid == std::process::id() && o.host == host_name()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A lock file's owner; a lock that cannot be read (cut short by a crash while it was written)
/// counts as left by a process that is gone.
fn read_owner(path: &Path) -> Result<Owner> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read the lock {}", path.display()))?;
    Ok(serde_json::from_str(&text).unwrap_or(Owner {
        pid: 0,
        host: host_name(),
        started: "unknown (the lock file is damaged)".into(),
        command: Vec::new(),
    }))
}

enum Liveness {
    Running,
    Gone,
    /// On another machine: it cannot be asked.
    Unknown,
}

fn liveness(owner: &Owner) -> Liveness {
    if owner.host != host_name() {
        return Liveness::Unknown;
    }
    if owner.pid == 0 || !process_exists(owner.pid) {
        Liveness::Gone
    } else {
        Liveness::Running
    }
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    // Signal 0 checks that the process exists without signalling it; EPERM means it exists
    // under another user.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

/// This machine's name, as the lock records it.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("in use by another pnn process") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists());
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_stale_lock_is_named_and_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has exited (and been reaped): its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        let stale = Owner {
            pid,
            host: host_name(),
            started: "earlier".into(),
            command: vec!["pnn".into(), "train".into()],
        };
        fs::write(dir.path().join(LOCK_FILE), serde_json::to_string(&stale).unwrap()).unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.replaced, Some(stale));
    }

    #[test]
    fn a_lock_from_another_machine_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let other = Owner {
            pid: 1,
            host: "another-node".into(),
            started: "earlier".into(),
            command: Vec::new(),
        };
        fs::write(dir.path().join(LOCK_FILE), serde_json::to_string(&other).unwrap()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another machine") && e.contains("pnn.lock"), "{e}");
    }
}
