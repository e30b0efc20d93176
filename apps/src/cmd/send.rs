//! `taskbus send`: publish tasks made from flags, or many from newline-delimited JSON.
//!
//! Ids are printed one per line as the bus confirms the tasks (on stderr when the bus is `stdio:`,
//! whose stdout carries the tasks). A file is checked whole before anything is sent; stdin is sent in
//! batches as it arrives, and a bad line stops it with a message saying what was already sent.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use taskbus_bus::{check_name, Bus, Task};

use super::failure::usage;
use super::settings::{fill_from_file, key_value};
use super::Global;

/// Most tasks read before sending them together.
const BATCH: usize = 1000;
/// Publishes kept unconfirmed at once, unless `--in-flight` says otherwise.
const IN_FLIGHT: usize = 64;

/// Options of `taskbus send`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The type of a task made from flags (its topic too, unless --topic).
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// The task's info: what to work on, by convention a URI (path?key=value).
    #[arg(long, requires = "kind")]
    info: Option<String>,
    /// The task's job, a sub-kind of its type.
    #[arg(long, requires = "kind")]
    job: Option<String>,
    /// A meta key for every task sent, KEY=VALUE; repeat for more. Overrides the tasks' own keys.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    meta: Vec<(String, String)>,
    /// Send this many tasks from the flags, each with its own id.
    #[arg(long, requires = "kind", default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// A file of tasks, one JSON object per line; `-` or nothing reads stdin.
    #[arg(value_name = "FILE", conflicts_with = "kind")]
    file: Option<PathBuf>,
    /// A TOML config file (see `taskbus config`).
    #[arg(long, env = "TASKBUS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

/// Options of `send` that a config file's `[send]` table can also set.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    /// The topic to send to. Default: each task's type.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: Option<String>,
    /// How many publishes to keep unconfirmed at once [default: 64].
    #[arg(long, value_name = "N")]
    pub(crate) in_flight: Option<usize>,
}

const EXAMPLES: &str = "\
Examples:
  taskbus send --type hello --info world                 one task; prints its id
  taskbus send --type resize --info s3://b/a.png --meta size=64 --repeat 3
  taskbus send tasks.jsonl                               every line of a file (checked first)
  some-taskmaster | taskbus send                         NDJSON from stdin, sent as it arrives
  taskbus send --bus nats://127.0.0.1:4222 --topic hello < tasks.jsonl

Lines without an id get a new one; lines without `created` get the time now. Blank lines are skipped.
A line that is not a task stops the command: from a file nothing is sent; from stdin the tasks before
that line were sent (their ids are printed) and nothing from it on.";

/// Runs `taskbus send`.
pub(crate) async fn run(mut args: Args, global: &Global) -> anyhow::Result<()> {
    fill_from_file!(args.options, global.file.send; topic, in_flight);
    if let Some(topic) = args.options.topic.as_deref().or(args.kind.as_deref()) {
        check_name("topic", topic).map_err(|e| usage(format!("{e} (from --topic or --type)")))?;
    }
    let bus = Bus::connect(&global.bus).await?;
    let mut sender = Sender {
        bus: bus.clone(),
        topic: args.options.topic.clone(),
        meta: args.meta.clone(),
        in_flight: args.options.in_flight.unwrap_or(IN_FLIGHT).max(1),
        out: IdPrinter::new(global.bus_is_stdio()),
        sent: 0,
    };
    let result = match args.kind.take() {
        Some(kind) => sender.send_from_flags(&kind, &args).await,
        None => match args.file.as_deref() {
            Some(path) if path.as_os_str() != "-" => sender.send_file(path).await,
            _ => sender.send_stdin().await,
        },
    };
    bus.close()
        .await
        .context("cannot close the bus after sending")?;
    result
}

/// Publishes tasks and prints their ids.
struct Sender {
    bus: Bus,
    topic: Option<String>,
    meta: Vec<(String, String)>,
    in_flight: usize,
    out: IdPrinter,
    /// Tasks confirmed so far.
    sent: usize,
}

/// One task read from a line.
struct Line {
    number: usize,
    topic: String,
    task: Task,
}

impl Sender {
    async fn send_from_flags(&mut self, kind: &str, args: &Args) -> anyhow::Result<()> {
        let tasks: Vec<Line> = (0..args.repeat)
            .map(|_| {
                let info = args.info.clone().unwrap_or_default();
                let mut task = Task::new(kind, info).job(args.job.clone().unwrap_or_default());
                self.apply_meta(&mut task);
                let topic = self.topic.clone().unwrap_or_else(|| kind.to_owned());
                Line {
                    number: 0,
                    topic,
                    task,
                }
            })
            .collect();
        self.send_batch(&tasks).await
    }

    /// Checks every line of the file, then sends them all.
    async fn send_file(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let name = path.display().to_string();
        let open = || async {
            tokio::fs::File::open(path)
                .await
                .map(|file| Lines::new(file, name.clone()))
                .with_context(|| format!("cannot read {name}"))
        };
        let mut reader = open().await?;
        let mut batch = Vec::new();
        loop {
            let more = self.read_batch(&mut reader, &mut batch).await;
            let more =
                more.map_err(|e| anyhow::anyhow!("{e:#}; nothing was sent: fix it and run again"))?;
            batch.clear();
            if !more {
                break;
            }
        }
        let mut reader = open().await?;
        while self.read_batch(&mut reader, &mut batch).await? {
            self.send_batch(&batch).await?;
            batch.clear();
        }
        self.send_batch(&batch).await
    }

    /// Sends stdin in batches as it arrives; a bad line stops after sending the lines before it.
    async fn send_stdin(&mut self) -> anyhow::Result<()> {
        if std::io::stdin().is_terminal() {
            return Err(usage(
                "nothing to send: give --type TYPE (with --info), a FILE of JSON tasks, or pipe \
                 tasks into stdin (see `taskbus send --help`)",
            ));
        }
        let mut reader = Lines::new(tokio::io::stdin(), "stdin");
        let mut batch = Vec::new();
        loop {
            let more = self.read_batch(&mut reader, &mut batch).await;
            if let Err(e) = more {
                self.send_batch(&batch).await?;
                let sent = self.sent;
                return Err(anyhow::anyhow!(
                    "{e:#}; the {sent} task(s) before it were sent (their ids are printed) and \
                     nothing from that line on"
                ));
            }
            self.send_batch(&batch).await?;
            batch.clear();
            if more.is_ok_and(|more| !more) {
                if self.sent == 0 {
                    tracing::warn!("stdin held no tasks; nothing was sent");
                }
                return Ok(());
            }
        }
    }

    /// Reads up to [`BATCH`] tasks, stopping early when no more input is buffered; false at the end.
    async fn read_batch<R: AsyncRead + Unpin>(
        &self,
        reader: &mut Lines<R>,
        batch: &mut Vec<Line>,
    ) -> anyhow::Result<bool> {
        loop {
            let Some((number, line)) = reader.next().await? else {
                return Ok(false);
            };
            if let Some(task) = self.decode(number, &line, &reader.name)? {
                batch.push(task);
            }
            if batch.len() >= BATCH || (!batch.is_empty() && !reader.has_buffered_line()) {
                return Ok(true);
            }
        }
    }

    fn decode(&self, number: usize, line: &[u8], name: &str) -> anyhow::Result<Option<Line>> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let mut task = Task::from_json(line).map_err(|e| {
            anyhow::anyhow!("line {number} of {name} is not a task: {}", e.reason())
        })?;
        if task.id.is_empty() {
            task.id = uuid::Uuid::new_v4().to_string();
        }
        if task.created.is_none() {
            task.created = Some(taskbus_bus::task::time::now());
        }
        self.apply_meta(&mut task);
        let topic = self.topic.clone().unwrap_or_else(|| task.kind.clone());
        check_name("topic", &topic).map_err(|e| {
            anyhow::anyhow!("line {number} of {name}: {e}; or send it with --topic TOPIC")
        })?;
        Ok(Some(Line {
            number,
            topic,
            task,
        }))
    }

    fn apply_meta(&self, task: &mut Task) {
        for (k, v) in &self.meta {
            task.meta.set(k.clone(), v);
        }
    }

    /// Sends `batch` (grouped by topic) and prints its ids once all are confirmed.
    async fn send_batch(&mut self, batch: &[Line]) -> anyhow::Result<()> {
        let mut topics: Vec<&str> = Vec::new();
        for line in batch {
            if !topics.contains(&line.topic.as_str()) {
                topics.push(&line.topic);
            }
        }
        for topic in topics {
            let tasks = batch.iter().filter(|l| l.topic == topic).map(|l| &l.task);
            if let Err(e) = self.bus.send_all(topic, tasks, self.in_flight).await {
                return Err(self.partial_failure(batch, e));
            }
        }
        for line in batch {
            self.out.print(&line.task.id);
        }
        self.sent += batch.len();
        Ok(())
    }

    /// Says exactly which tasks are confirmed, which may or may not have been sent, and which not.
    fn partial_failure(&self, batch: &[Line], error: taskbus_bus::BusError) -> anyhow::Error {
        let (first, last) = (
            batch.first().map_or(0, |l| l.number),
            batch.last().map_or(0, |l| l.number),
        );
        let unsure = if first == 0 {
            format!(
                "the {} task(s) of this command may or may not have been sent",
                batch.len()
            )
        } else {
            format!(
                "lines {first}-{last} may or may not have been sent (sending them again is safe on \
                 buses that de-duplicate by id) and nothing after line {last} was sent"
            )
        };
        anyhow::Error::new(error).context(format!(
            "sending stopped: {} task(s) are confirmed sent (ids printed); {unsure}",
            self.sent
        ))
    }
}

/// Numbered lines of a reader, of any length.
struct Lines<R> {
    reader: BufReader<R>,
    name: String,
    number: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R, name: impl Into<String>) -> Self {
        Lines {
            reader: BufReader::new(reader),
            name: name.into(),
            number: 0,
        }
    }

    /// The next line and its number (from 1), without its line ending; `None` at the end.
    async fn next(&mut self) -> anyhow::Result<Option<(usize, Vec<u8>)>> {
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .await
            .with_context(|| format!("cannot read line {} of {}", self.number + 1, self.name))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(Some((self.number, line)))
    }

    /// True when a whole line is already read ahead, so taking it will not wait.
    fn has_buffered_line(&self) -> bool {
        self.reader.buffer().contains(&b'\n')
    }
}

/// Prints ids to stdout, or to stderr when stdout carries the bus; a closed pipe stops the printing,
/// not the sending.
struct IdPrinter {
    to_stderr: bool,
    broken: bool,
}

impl IdPrinter {
    fn new(to_stderr: bool) -> Self {
        IdPrinter {
            to_stderr,
            broken: false,
        }
    }

    fn print(&mut self, id: &str) {
        if self.broken {
            return;
        }
        let written = if self.to_stderr {
            writeln!(std::io::stderr(), "{id}")
        } else {
            writeln!(std::io::stdout(), "{id}")
        };
        self.broken = written.is_err();
    }
}
