//! `taskbus exec`: a generic worker that runs a command for every task, so any language can be a
//! worker language. It is a [`Launcher`] (at-least-once, bounded concurrency, graceful shutdown) whose
//! worker runs a process:
//!
//! - the command line is a template over the task's fields ([`template`]), the fields are also
//!   environment variables, and the task JSON is on stdin;
//! - exit code 0 → `complete`, with the last line of stdout as `msg`; any other exit → `error`, with
//!   the exit code and the end of stderr as `msg`;
//! - a timeout or a shutdown stops the whole process group ([`process`]).

mod process;
mod template;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use taskbus_bus::{Bus, Task};
use taskbus_worker::{
    async_trait, Launcher, LauncherOptions, OnShutdown, OtherTypes, Outcome, TaskContext, Worker,
};

use super::failure::usage;
use super::settings::{fill_from_file, missing, Dur};
use super::Global;
use template::Template;

/// Bytes of the end of stderr (or stdout) kept for the done task's `msg`, unless `--msg-bytes`.
const MSG_BYTES: usize = 2000;
/// Between SIGTERM and SIGKILL, unless `--kill-grace`.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Options of `taskbus exec`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The command to run for each task, after `--`; placeholders are replaced by the task's fields:
    /// {type} {job} {info} {id} {created} {meta} {meta:KEY} {attempt}.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// A TOML config file (see `taskbus config`).
    #[arg(long, env = "TASKBUS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

/// What happens to tasks of other types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OtherTypesArg {
    /// Answer with an `error` done task saying it was rejected (no retry).
    Reject,
    /// Leave it for another member of the group (nack after --ignore-delay).
    Ignore,
}

/// What happens to tasks cut off by a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnShutdownArg {
    /// redeliver on a bus that outlives the process, fail on stdio: and mem:.
    Auto,
    /// Hand the task back to the bus to be redone.
    Redeliver,
    /// Publish an `error` done task ("interrupted at shutdown").
    Fail,
}

/// Options of `exec` that a config file's `[exec]` table can also set. Each is also an environment
/// variable `TASKBUS_EXEC_<NAME>`.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    /// The type of task to run. Tasks of other types on the topic are rejected or ignored.
    #[arg(long = "type", value_name = "TYPE", env = "TASKBUS_EXEC_TYPE")]
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    /// The command, in a config file (on the command line it comes after `--`).
    #[arg(skip)]
    pub(crate) command: Option<Vec<String>>,
    /// The topic to read [default: the type].
    #[arg(long, value_name = "TOPIC", env = "TASKBUS_EXEC_TOPIC")]
    pub(crate) topic: Option<String>,
    /// The consumer group: workers of one group share the topic's tasks [default: workers].
    #[arg(long, value_name = "GROUP", env = "TASKBUS_EXEC_GROUP")]
    pub(crate) group: Option<String>,
    /// Where done tasks go [default: done].
    #[arg(long, value_name = "TOPIC", env = "TASKBUS_EXEC_DONE_TOPIC")]
    pub(crate) done_topic: Option<String>,
    /// How many commands run at once [default: 1].
    #[arg(long, value_name = "N", env = "TASKBUS_EXEC_MAX_IN_PROGRESS")]
    pub(crate) max_in_progress: Option<usize>,
    /// Run exactly N tasks, then exit [default: no limit].
    #[arg(long, value_name = "N", env = "TASKBUS_EXEC_LIFETIME_WORKERS")]
    pub(crate) lifetime_workers: Option<u64>,
    /// Stop a command after this long (SIGTERM to its process group, then SIGKILL); a task's own
    /// `timeout` meta key wins [default: none].
    #[arg(long, value_name = "DURATION", env = "TASKBUS_EXEC_TIMEOUT")]
    pub(crate) timeout: Option<Dur>,
    /// Between SIGTERM and SIGKILL when a command must stop [default: 2s].
    #[arg(long, value_name = "DURATION", env = "TASKBUS_EXEC_KILL_GRACE")]
    pub(crate) kill_grace: Option<Dur>,
    /// At shutdown (SIGINT/SIGTERM), how long running commands may take to finish [default: 10s].
    #[arg(long, value_name = "DURATION", env = "TASKBUS_EXEC_WORKER_KILL_TIME")]
    pub(crate) worker_kill_time: Option<Dur>,
    /// What happens to commands still running after --worker-kill-time: auto, redeliver or fail
    /// [default: auto].
    #[arg(
        long,
        value_enum,
        value_name = "WHAT",
        env = "TASKBUS_EXEC_ON_SHUTDOWN"
    )]
    pub(crate) on_shutdown: Option<OnShutdownArg>,
    /// What happens to tasks of another type: reject or ignore [default: reject].
    #[arg(
        long,
        value_enum,
        value_name = "WHAT",
        env = "TASKBUS_EXEC_OTHER_TYPES"
    )]
    pub(crate) other_types: Option<OtherTypesArg>,
    /// The nack delay of an ignored task [default: 1s].
    #[arg(long, value_name = "DURATION", env = "TASKBUS_EXEC_IGNORE_DELAY")]
    pub(crate) ignore_delay: Option<Dur>,
    /// How often a running task's lease is extended; 0s never [default: 10s].
    #[arg(long, value_name = "DURATION", env = "TASKBUS_EXEC_HEARTBEAT")]
    pub(crate) heartbeat: Option<Dur>,
    /// The nack delay of a task whose done task could not be published [default: 1s].
    #[arg(
        long,
        value_name = "DURATION",
        env = "TASKBUS_EXEC_PUBLISH_RETRY_DELAY"
    )]
    pub(crate) publish_retry_delay: Option<Dur>,
    /// Exit when the topic is drained instead of waiting for more (always so on stdio:).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL",
        env = "TASKBUS_EXEC_FINITE")]
    pub(crate) finite: Option<bool>,
    /// Serve /healthz, /stats and /metrics on this address, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR", env = "TASKBUS_EXEC_HTTP")]
    pub(crate) http: Option<SocketAddr>,
    /// The working directory of the commands [default: the current one].
    #[arg(long, value_name = "DIR", env = "TASKBUS_EXEC_WORKDIR")]
    pub(crate) workdir: Option<PathBuf>,
    /// How many bytes of the end of stderr (or stdout) go into the done task's msg [default: 2000].
    #[arg(long, value_name = "N", env = "TASKBUS_EXEC_MSG_BYTES")]
    pub(crate) msg_bytes: Option<usize>,
}

const EXAMPLES: &str = "\
Examples:
  taskbus exec --type resize -- ./resize.sh {info}
  taskbus exec --type hello --max-in-progress 4 -- sh -c 'echo \"hello $TASK_INFO\"'
  taskbus exec --type load --timeout 5m -- python3 load.py --day {meta:day}
  taskbus exec --bus stdio: --type hello -- echo hi {info} < tasks.jsonl > done.jsonl
  taskbus exec --config worker.toml                      type, command and options from [exec]

Each task runs the command once, in a process group of its own, with:
  placeholders   {type} {job} {info} {id} {created} {meta} {meta:KEY} {attempt} in its arguments
  environment    TASK_TYPE TASK_JOB TASK_INFO TASK_ID TASK_CREATED TASK_META TASK_ATTEMPT TASK_META_<KEY>
  stdin          the task as one line of JSON
Exit code 0 -> result complete, msg = the last line of stdout. Any other exit -> result error,
msg = the exit code and the end of stderr. stderr is also passed through, each line prefixed with
the task id. A timeout or a shutdown sends SIGTERM to the whole process group, then SIGKILL after
--kill-grace; anything a command leaves running in its group when it exits is killed.
Tasks are acknowledged only after their done task is stored: a killed worker loses nothing.";

/// Runs `taskbus exec`.
pub(crate) async fn run(mut args: Args, global: &Global) -> anyhow::Result<()> {
    let file = &global.file.exec;
    fill_from_file!(args.options, file; kind, topic, group, done_topic, max_in_progress,
        lifetime_workers, timeout, kill_grace, worker_kill_time, on_shutdown, other_types,
        ignore_delay, heartbeat, publish_retry_delay, finite, http, workdir, msg_bytes);
    if args.command.is_empty() {
        args.command = file.command.clone().unwrap_or_default();
    }
    let o = &args.options;
    let kind = o
        .kind
        .clone()
        .ok_or_else(|| missing("the task type", "--type TYPE", "exec", "type"))?;
    let template = Template::new(args.command.clone()).ok_or_else(|| {
        usage("the command is missing: give it after `--`, as in `taskbus exec --type resize -- ./resize.sh {info}`, or set command = [...] under [exec] in the --config file")
    })?;
    check_template(&template, o.workdir.as_deref())?;

    let worker = CommandWorker {
        template,
        workdir: o.workdir.clone(),
        kill_grace: o.kill_grace.map_or(KILL_GRACE, |d| d.0),
        msg_bytes: o.msg_bytes.unwrap_or(MSG_BYTES).max(1),
    };
    let topic = o.topic.clone().unwrap_or_else(|| kind.clone());
    let options = launcher_options(o, &kind, worker.kill_grace);
    let bus = Bus::connect(&global.bus).await?;
    tracing::info!(command = %worker.template.display(), "running a command per task");
    let report = Launcher::new(bus.clone(), topic, options)
        .run(worker)
        .await?;
    tracing::debug!(%report, "exec finished");
    bus.close().await.context("cannot close the bus")?;
    Ok(())
}

/// The Launcher's options from ours.
fn launcher_options(o: &Options, kind: &str, kill_grace: Duration) -> LauncherOptions {
    let mut options = LauncherOptions::default()
        .task_type(kind)
        // The command gets kill_grace between SIGTERM and SIGKILL, and then time to report.
        .cancel_grace(kill_grace + Duration::from_secs(1));
    if let Some(group) = &o.group {
        options = options.group(group.clone());
    }
    if let Some(topic) = &o.done_topic {
        options = options.done_topic(topic.clone());
    }
    if let Some(n) = o.max_in_progress {
        options = options.max_in_progress(n);
    }
    if let Some(n) = o.lifetime_workers {
        options = options.lifetime_workers(n);
    }
    if let Some(d) = o.timeout {
        options = options.timeout(d.0);
    }
    if let Some(d) = o.worker_kill_time {
        options = options.worker_kill_time(d.0);
    }
    if let Some(what) = o.on_shutdown {
        options = options.on_shutdown(match what {
            OnShutdownArg::Auto => OnShutdown::Auto,
            OnShutdownArg::Redeliver => OnShutdown::Redeliver,
            OnShutdownArg::Fail => OnShutdown::Fail,
        });
    }
    if let Some(what) = o.other_types {
        options = options.other_types(match what {
            OtherTypesArg::Reject => OtherTypes::Reject,
            OtherTypesArg::Ignore => OtherTypes::Ignore,
        });
    }
    if let Some(d) = o.ignore_delay {
        options = options.ignore_delay(d.0);
    }
    if let Some(d) = o.heartbeat {
        options = options.heartbeat(Some(d.0));
    }
    if let Some(d) = o.publish_retry_delay {
        options = options.publish_retry_delay(d.0);
    }
    if let Some(finite) = o.finite {
        options = options.finite(finite);
    }
    if let Some(addr) = o.http {
        options = options.http_addr(addr);
    }
    options
}

/// Fails at start-up, not at the first task, when the program does not exist or cannot be run.
fn check_template(template: &Template, workdir: Option<&Path>) -> anyhow::Result<()> {
    let unknown = template.unknown_placeholders();
    if !unknown.is_empty() {
        return Err(usage(format!(
            "the command uses {}, which taskbus does not know; the placeholders are {}",
            unknown.join(", "),
            template::PLACEHOLDERS
        )));
    }
    if let Some(dir) = workdir.filter(|d| !d.is_dir()) {
        return Err(usage(format!(
            "the working directory {} does not exist; fix --workdir",
            dir.display()
        )));
    }
    match template.fixed_program() {
        Some(program) => find_program(program, workdir).map(drop),
        None => Ok(()),
    }
}

/// Where `program` is: a path (relative to `workdir`), or a name found on `PATH`.
fn find_program(program: &str, workdir: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match workdir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        return match path.metadata() {
            Err(e) => Err(usage(format!(
                "cannot run the command {program:?}: {} ({e}); check the path{}",
                path.display(),
                workdir.map_or(String::new(), |d| format!(" (relative to --workdir {})", d.display()))
            ))),
            Ok(_) if !executable(&path) => Err(usage(format!(
                "cannot run the command {program:?}: it is not an executable file; make it one with \
                 `chmod +x {program}`"
            ))),
            Ok(_) => Ok(path),
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            usage(format!(
                "cannot run the command {program:?}: no such program on PATH; install it, or give \
                 its path (such as ./{program})"
            ))
        })
}

/// The worker: one process per task.
struct CommandWorker {
    template: Template,
    workdir: Option<PathBuf>,
    kill_grace: Duration,
    msg_bytes: usize,
}

#[async_trait]
impl Worker for CommandWorker {
    async fn run(&self, task: &Task, ctx: &TaskContext) -> Outcome {
        let spec = process::Spec {
            argv: self.template.render(task),
            env: template::environment(task),
            stdin: [task.to_json_bytes(), b"\n".to_vec()].concat(),
            workdir: self.workdir.clone(),
            kill_grace: self.kill_grace,
            tail_bytes: self.msg_bytes,
            label: task.id.chars().take(8).collect(),
        };
        let program = spec.argv.first().cloned().unwrap_or_default();
        match process::run(spec, ctx.cancellation_token()).await {
            Ok(finished) => outcome(&finished),
            Err(e) => Outcome::error(format!("cannot run {program:?}: {e}")).no_retry(),
        }
    }
}

/// The outcome of a finished command.
fn outcome(finished: &process::Finished) -> Outcome {
    let status = process::describe(finished.status);
    if finished.status.success() && !finished.stopped {
        let last = finished.stdout.lines().rev().find(|l| !l.trim().is_empty());
        return Outcome::complete(last.map_or("exit code 0", str::trim));
    }
    let stopped = if finished.stopped { "stopped, " } else { "" };
    match finished.stderr.is_empty() {
        true => Outcome::error(format!("{stopped}{status}; no stderr")),
        false => Outcome::error(format!("{stopped}{status}; stderr: {}", finished.stderr)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use taskbus_bus::TaskResult;
    use taskbus_worker::testing;

    fn worker(argv: &[&str]) -> CommandWorker {
        CommandWorker {
            template: Template::new(argv.iter().map(|s| (*s).to_owned()).collect()).unwrap(),
            workdir: None,
            kill_grace: Duration::from_millis(500),
            msg_bytes: MSG_BYTES,
        }
    }

    async fn run_one(worker: CommandWorker, task: Task, timeout: Option<Duration>) -> Task {
        let mut options = LauncherOptions::default().cancel_grace(Duration::from_secs(2));
        if let Some(t) = timeout {
            options = options.timeout(t);
        }
        let run = testing::run_with(options, worker, [task]).await.unwrap();
        run.done.into_iter().next().expect("a done task")
    }

    #[tokio::test]
    async fn exit_zero_completes_with_the_last_stdout_line_and_sees_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdin.json");
        let script = "cat > \"$1\"; echo \"first\"; echo \"$TASK_INFO/$TASK_META_SIZE {id}\"";
        let task = Task::new("resize", "a.png").meta("size", 64);
        let id = task.id.clone();
        let done = run_one(
            worker(&["sh", "-c", script, "sh", out.to_str().unwrap()]),
            task.clone(),
            None,
        )
        .await;
        assert_eq!(done.result, Some(TaskResult::Complete), "{}", done.msg);
        assert_eq!(done.msg, format!("a.png/64 {id}"));
        let stdin = Task::from_json(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            (&stdin.id, &stdin.info, &stdin.meta),
            (&task.id, &task.info, &task.meta)
        );
        assert!(
            stdin.started.is_some(),
            "the command sees the task as started"
        );
    }

    #[tokio::test]
    async fn other_exit_codes_are_errors_with_the_end_of_stderr() {
        let script =
            "echo 'a long line of noise that is cut away' >&2; echo 'the real reason' >&2; exit 3";
        let short = CommandWorker {
            msg_bytes: 40,
            ..worker(&["sh", "-c", script])
        };
        let done = run_one(short, Task::new("x", "i"), None).await;
        assert_eq!(done.result, Some(TaskResult::Error));
        assert!(
            done.msg.starts_with("exit code 3; stderr: "),
            "{}",
            done.msg
        );
        assert!(done.msg.ends_with("the real reason"), "{}", done.msg);
        assert!(
            !done.msg.contains("a long line"),
            "msg_bytes=40 keeps the end only: {}",
            done.msg
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A grandchild that ignores nothing and would outlive a kill of the shell alone.
        let script = "sleep 60 & echo $! > \"$1\"; wait";
        let done = run_one(
            worker(&["sh", "-c", script, "sh", pidfile.to_str().unwrap()]),
            Task::new("slow", ""),
            Some(Duration::from_millis(300)),
        )
        .await;
        assert_eq!(done.result, Some(TaskResult::Error));
        assert!(done.msg.starts_with("timed out"), "{}", done.msg);
        assert!(
            done.msg.contains("stopped, killed by signal"),
            "{}",
            done.msg
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "the grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn what_a_command_leaves_running_is_killed_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = "sleep 60 > /dev/null 2>&1 & echo $! > \"$1\"; echo started";
        let done = run_one(
            worker(&["sh", "-c", script, "sh", pidfile.to_str().unwrap()]),
            Task::new("bg", ""),
            None,
        )
        .await;
        assert_eq!(done.result, Some(TaskResult::Complete), "{}", done.msg);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !alive(pid),
            "the background process {pid} outlived its task"
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_run_is_an_error_that_is_not_retried() {
        let done = run_one(
            worker(&["{info}"]),
            Task::new("x", "/no/such/program"),
            None,
        )
        .await;
        assert_eq!(done.result, Some(TaskResult::Error));
        assert!(done.msg.contains("/no/such/program"), "{}", done.msg);
        assert_eq!(done.meta.get("no_retry"), Some("true"));
    }

    #[test]
    fn missing_programs_are_found_at_start_up() {
        let err = find_program("no-such-program-taskbus", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such program on PATH"), "{err}");
        let err = find_program("./no-such-script.sh", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("check the path"), "{err}");
        assert!(find_program("sh", None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain.sh"), "echo").unwrap();
        let err = find_program("./plain.sh", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod +x"), "{err}");
    }

    /// True while process `pid` exists (and is not a zombie we could not reap: it is not our child).
    fn alive(pid: i32) -> bool {
        // Give the kernel a moment to deliver the signal.
        for _ in 0..50 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = status.rsplit(") ").next().and_then(|s| s.chars().next());
            if !matches!(state, Some(s) if s != 'Z') {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}
