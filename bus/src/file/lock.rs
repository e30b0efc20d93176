//! Advisory whole-file locks (`flock(2)`) between processes.
//!
//! `flock` locks belong to an open file description: two `File`s opened separately on one path
//! exclude each other even inside one process, and a lock goes away when the process dies, however
//! it dies. That last property is what makes crash recovery work without lock-breaking heuristics.
//!
//! (`std::fs::File::lock` does the same but needs Rust 1.89, newer than the workspace's
//! `rust-version`; this is the one place of the crate that calls `libc`.)
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes an exclusive lock without waiting. `Ok(false)` when another holder has it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    try_flock(file, libc::LOCK_EX | libc::LOCK_NB)
}

/// Takes a shared lock without waiting. `Ok(false)` when an exclusive holder has it.
pub(crate) fn try_lock_shared(file: &File) -> io::Result<bool> {
    try_flock(file, libc::LOCK_SH | libc::LOCK_NB)
}

/// Waits for an exclusive lock. Blocks the thread: call it from `spawn_blocking`.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        match try_flock(file, libc::LOCK_EX) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Releases whatever lock this file description holds.
pub(crate) fn unlock(file: &File) -> io::Result<()> {
    try_flock(file, libc::LOCK_UN).map(|_| ())
}

fn try_flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    // SAFETY: `flock` only reads its two integer arguments; the descriptor is owned by `file`,
    // which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}
