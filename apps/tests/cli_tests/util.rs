//! Driving the real `taskbus` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use taskbus_bus::Task;

/// How long any one command may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(120);

/// What a finished command did.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// The non-empty lines of stdout.
    pub(crate) fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "the command failed: {self:#?}");
        self
    }

    /// Asserts the command failed with `code`, printing exactly one line, `error: …`, on stderr;
    /// returns that line.
    #[track_caller]
    pub(crate) fn one_error(&self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "exit code: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "want one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0].to_owned()
    }

    /// stdout's lines as tasks.
    #[track_caller]
    pub(crate) fn tasks(&self) -> Vec<Task> {
        self.lines()
            .iter()
            .map(|l| Task::from_json(l.as_bytes()).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// The `taskbus` binary, with no configuration from the environment.
pub(crate) fn taskbus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskbus"));
    for var in [
        "TASKBUS_BUS",
        "TASKBUS_CONFIG",
        "TASKBUS_LOG_FORMAT",
        "TASKBUS_LOG",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `cmd` with `stdin` (none: an empty stdin) and waits for it, failing the test if it hangs.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the binary");
    let input = stdin.unwrap_or("").to_owned();
    let mut pipe = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(HANG).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child
        .wait_with_output()
        .expect("cannot wait for the binary");
    let _ = tx.send(());
    let _ = writer.join();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `taskbus ARGS` with an empty stdin.
pub(crate) fn tb(args: &[&str]) -> Output {
    run(taskbus().args(args), None)
}

/// `taskbus ARGS` with `stdin`.
pub(crate) fn tb_in(args: &[&str], stdin: &str) -> Output {
    run(taskbus().args(args), Some(stdin))
}

/// A fresh file bus in a temporary directory.
pub(crate) struct FileBus {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) url: String,
}

impl FileBus {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("file://{}", dir.path().display());
        FileBus { dir, url }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The tasks on `topic`, read by a tail of its own (takes nothing away).
    pub(crate) fn tasks(&self, topic: &str) -> Vec<Task> {
        tb(&["--bus", &self.url, "tail", topic, "--json"])
            .ok()
            .tasks()
    }

    /// A file in the bus directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

/// True when `s` looks like a UUID.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
