//! The state directory's lock: one flow app per directory. An `flock(2)` goes away when its process
//! dies, however it dies, so a killed app never leaves a stale lock behind.
//!
//! (`std::fs::File::try_lock` does the same but needs Rust 1.89, newer than the workspace's
//! `rust-version`.)
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes an exclusive lock of `file` without waiting; `Ok(false)` when another process holds it.
pub(super) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: `flock` only reads its two integer arguments; the descriptor is owned by `file`,
        // which outlives the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(false),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}
