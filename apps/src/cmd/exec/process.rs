//! Running one command for one task: in a process group of its own, the task JSON on stdin, stderr
//! passed through (prefixed with the task id) and its tail kept for the done task's `msg`.
//!
//! When the task must stop (timeout, shutdown), the whole group gets SIGTERM, then SIGKILL after the
//! grace time. When the command exits, whatever it left running in its group is killed, so no task
//! leaves processes behind; and if the run is dropped half-way, the group is killed too.

#![allow(unsafe_code)] // `kill(2)` on a process group: see `signal_group`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Program and arguments.
    pub(crate) argv: Vec<String>,
    /// Variables added to the inherited environment.
    pub(crate) env: Vec<(String, String)>,
    /// Written to the command's stdin, which is then closed.
    pub(crate) stdin: Vec<u8>,
    /// The working directory; default: ours.
    pub(crate) workdir: Option<PathBuf>,
    /// Between SIGTERM and SIGKILL when the task must stop.
    pub(crate) kill_grace: Duration,
    /// How many bytes of the end of stdout and stderr to keep.
    pub(crate) tail_bytes: usize,
    /// Prefix for the command's stderr lines passed through to ours.
    pub(crate) label: String,
}

/// How a command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// The end of its stdout.
    pub(crate) stdout: String,
    /// The end of its stderr.
    pub(crate) stderr: String,
    /// True when it was stopped because the task had to stop.
    pub(crate) stopped: bool,
}

/// Runs `spec` until it exits or `stop` fires (then SIGTERM, SIGKILL after the grace).
pub(crate) async fn run(spec: Spec, stop: &CancellationToken) -> std::io::Result<Finished> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::other("the command line is empty"));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    let mut child = command.spawn()?;
    let mut group = Group(child.id().and_then(|id| i32::try_from(id).ok()));
    if let Some(mut stdin) = child.stdin.take() {
        let input = spec.stdin;
        // A command that does not read its stdin is fine: ignore the broken pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(keep_tail(out, spec.tail_bytes, None)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(keep_tail(err, spec.tail_bytes, Some(spec.label))));

    let (status, stopped) = tokio::select! {
        status = child.wait() => (status?, false),
        () = stop.cancelled() => {
            group.signal(libc::SIGTERM);
            let status = match tokio::time::timeout(spec.kill_grace, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    group.signal(libc::SIGKILL);
                    child.wait().await?
                }
            };
            (status, true)
        }
    };
    // Whatever the command left running in its group would hold its pipes open: end it.
    group.signal(libc::SIGKILL);
    let stdout = collect(stdout).await;
    let stderr = collect(stderr).await;
    group.0 = None; // already killed: do not signal a group id that may be reused
    Ok(Finished {
        status,
        stdout,
        stderr,
        stopped,
    })
}

/// The process group of a running command; dropping it kills the group.
struct Group(Option<i32>);

impl Group {
    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Sends `signal` to every process of group `pgid`; a group that is gone already is fine.
fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid <= 1 {
        return; // never signal "every process" (-1) or our own group (0)
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid names the
    // process group, which we created for this command with `process_group(0)`.
    let _ = unsafe { libc::kill(-pgid, signal) };
}

/// Reads `stream` to its end, keeping its last `max` bytes; with a `label`, also passes each line
/// through to our stderr as `[label] line`.
async fn keep_tail(stream: impl AsyncRead + Unpin, max: usize, label: Option<String>) -> String {
    let mut reader = BufReader::new(stream);
    let mut tail: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(label) = &label {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "[{label}] ");
            let _ = err.write_all(&line);
            if !line.ends_with(b"\n") {
                let _ = err.write_all(b"\n");
            }
        }
        tail.extend_from_slice(&line);
        if tail.len() > max.saturating_mul(2).max(4096) {
            let cut = tail.len() - max;
            tail.drain(..cut);
        }
    }
    let start = tail.len().saturating_sub(max);
    String::from_utf8_lossy(&tail[start..]).trim().to_owned()
}

async fn collect(reader: Option<tokio::task::JoinHandle<String>>) -> String {
    match reader {
        Some(handle) => handle.await.unwrap_or_default(),
        None => String::new(),
    }
}

/// How an exit status reads in a message: `exit code 3`, `killed by signal 9 (SIGKILL)`.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        (None, None) => "an unknown exit status".to_owned(),
    }
}
