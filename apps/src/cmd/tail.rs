//! `taskbus tail`: print what a topic holds, as compact human lines or as JSON lines.
//!
//! Without `--group`, tail is an observer: it reads in a consumer group of its own, so it sees every
//! task from the start of the topic and takes nothing away from workers. With `--group G` it reads as
//! a member of `G`, acknowledging what it prints: those tasks are taken from the group's other members.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use taskbus_bus::{Bus, Consumer, ConsumerOptions, DeadLetter, Delivery, Subscription, Task};

use super::render::{self, ColorChoice};
use super::settings::{fill_from_file, Dur};
use super::Global;

/// How long tail waits for more before it stops, without `--follow`, on a bus that cannot say where
/// a topic ends.
const IDLE: Duration = Duration::from_secs(2);

/// Options of `taskbus tail`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The topic to read.
    #[arg(default_value = "done")]
    topic: String,
    /// Stop after printing this many tasks.
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<usize>,
    /// Keep waiting for new tasks instead of stopping at the end of the topic.
    #[arg(short, long)]
    follow: bool,
    /// Print each task as one line of JSON, exactly as on the bus, for jq and friends.
    #[arg(long)]
    json: bool,
    /// A TOML config file (see `taskbus config`).
    #[arg(long, env = "TASKBUS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

/// Options of `tail` that a config file's `[tail]` table can also set.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    /// Read as a member of this consumer group, acknowledging what is printed (it is taken from the
    /// group's other members). Default: a new group of tail's own that sees everything and takes
    /// nothing; on NATS, RabbitMQ and Kafka that group stays on the broker, so give --group to reuse
    /// one when you tail often.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
    /// Colour the human lines: auto (when stdout is a terminal and NO_COLOR is unset), always, never.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub(crate) color: Option<ColorChoice>,
    /// Without --follow, on a bus that cannot tell where a topic ends (NATS, AMQP, Kafka): stop after
    /// this long without a new task [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) idle: Option<Dur>,
}

const EXAMPLES: &str = "\
Examples:
  taskbus tail                             the done topic, from the start, then stop
  taskbus tail hello --follow              every hello task, and wait for more (Ctrl-C stops)
  taskbus tail done --json | jq -r .msg    JSON lines for jq
  taskbus tail done -n 20 -f               wait until 20 done tasks were printed
  taskbus tail deadletter                  what could not be handled, and why

Line format: time (ended, else created)  type[:job]  result  duration  id (8 chars)  info  msg";

/// Runs `taskbus tail`.
pub(crate) async fn run(mut args: Args, global: &Global) -> anyhow::Result<()> {
    fill_from_file!(args.options, global.file.tail; group, color, idle);
    let bus = Bus::connect(&global.bus).await?;
    let mut source = Source::open(&bus, &args).await?;
    let mut printer = Printer {
        json: args.json,
        colour: !args.json && args.options.color.unwrap_or_default().enabled(),
    };
    let idle = (!args.follow && !bus.capabilities().end_of_input)
        .then(|| args.options.idle.map_or(IDLE, |d| d.0));
    let mut printed = 0usize;
    let mut acks = tokio::task::JoinSet::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while args.count.map_or(true, |n| printed < n) {
        let next = tokio::select! {
            biased;
            _ = &mut interrupted => break,
            next = source.next(idle) => next?,
        };
        let Some(item) = next else { break };
        match printer.print(&item) {
            Ok(true) => printed += 1,
            Ok(false) => {}
            Err(_) => break, // stdout closed (`| head`): stop quietly
        }
        // Acknowledge without waiting, keeping up to ACKS_IN_FLIGHT acks unconfirmed at once.
        acks.spawn(item.settle());
        if acks.len() >= ACKS_IN_FLIGHT {
            settled(acks.join_next().await)?;
        }
    }
    while let Some(ack) = acks.join_next().await {
        settled(Some(ack))?;
    }
    source.close().await;
    bus.close().await.context("cannot close the bus")?;
    Ok(())
}

/// Acks of printed tasks kept unconfirmed at once.
const ACKS_IN_FLIGHT: usize = 128;

/// The outcome of one ack.
fn settled(
    ack: Option<Result<Result<(), taskbus_bus::BusError>, tokio::task::JoinError>>,
) -> anyhow::Result<()> {
    match ack {
        Some(Ok(Err(e))) => Err(anyhow::Error::new(e).context("cannot acknowledge a printed task")),
        Some(Err(e)) => Err(anyhow::anyhow!("acknowledging a printed task failed: {e}")),
        _ => Ok(()),
    }
}

/// Where tail reads from: a raw consumer (observer, or the dead-letter topic) or a subscription
/// (member of a group, which dead-letters what is not a task as every member does).
enum Source {
    Raw {
        consumer: Box<dyn Consumer>,
        dead_letters: bool,
    },
    Member(Subscription),
}

/// One thing read, to print and then acknowledge.
enum Item {
    Task {
        task: Box<Task>,
        raw: Option<Vec<u8>>,
        delivery: Delivery,
    },
    DeadLetter {
        letter: Box<DeadLetter>,
        raw: Vec<u8>,
        delivery: Delivery,
    },
    NotATask {
        reason: String,
        delivery: Delivery,
    },
}

impl Source {
    async fn open(bus: &Bus, args: &Args) -> anyhow::Result<Source> {
        let finite = !args.follow && bus.capabilities().end_of_input;
        let dead_letters = args.topic == bus.options().dead_letter;
        let group = args.options.group.clone();
        let options = ConsumerOptions::group(group.clone().unwrap_or_else(observer_group))
            .finite(finite)
            .max_in_flight(args.count.unwrap_or(256).clamp(1, 256));
        let source = match group {
            Some(_) if !dead_letters => {
                Source::Member(bus.subscribe_with(&args.topic, options).await?)
            }
            _ => Source::Raw {
                consumer: bus.consumer(&args.topic, &options).await?,
                dead_letters,
            },
        };
        Ok(source)
    }

    /// The next item; `None` at the end (finite input, or `idle` passed without one).
    async fn next(&mut self, idle: Option<Duration>) -> anyhow::Result<Option<Item>> {
        let next = self.next_item();
        match idle {
            Some(idle) => Ok(tokio::time::timeout(idle, next).await.unwrap_or(Ok(None))?),
            None => next.await,
        }
    }

    async fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        match self {
            Source::Member(sub) => Ok(sub.next().await?.map(|received| {
                let (task, delivery) = received.into_parts();
                Item::Task {
                    task: Box::new(task),
                    raw: None,
                    delivery,
                }
            })),
            Source::Raw {
                consumer,
                dead_letters,
            } => {
                let Some(delivery) = consumer.next().await? else {
                    return Ok(None);
                };
                let raw = delivery.payload.to_vec();
                Ok(Some(match (*dead_letters, &raw) {
                    (true, raw) => match DeadLetter::from_json(raw) {
                        Ok(letter) => Item::DeadLetter {
                            letter: Box::new(letter),
                            raw: raw.clone(),
                            delivery,
                        },
                        Err(e) => Item::NotATask {
                            reason: e.to_string(),
                            delivery,
                        },
                    },
                    (false, raw) => match Task::from_json(raw) {
                        Ok(task) => Item::Task {
                            task: Box::new(task),
                            raw: Some(raw.clone()),
                            delivery,
                        },
                        Err(e) => Item::NotATask {
                            reason: e.to_string(),
                            delivery,
                        },
                    },
                }))
            }
        }
    }

    async fn close(&mut self) {
        let closed = match self {
            Source::Member(sub) => sub.close().await,
            Source::Raw { consumer, .. } => consumer.close().await,
        };
        if let Err(e) = closed {
            tracing::debug!(error = %e, "closing the consumer");
        }
    }
}

impl Item {
    async fn settle(self) -> Result<(), taskbus_bus::BusError> {
        match self {
            Item::Task { delivery, .. }
            | Item::DeadLetter { delivery, .. }
            | Item::NotATask { delivery, .. } => delivery.ack().await,
        }
    }
}

/// A consumer group of this tail's own.
fn observer_group() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("tail-{}-{nanos:x}", std::process::id())
}

struct Printer {
    json: bool,
    colour: bool,
}

impl Printer {
    /// Prints `item`; true when it counts as a printed task. Errors only when stdout is closed.
    fn print(&mut self, item: &Item) -> std::io::Result<bool> {
        let mut out = std::io::stdout().lock();
        match item {
            Item::Task { task, raw, .. } => {
                match (self.json, raw) {
                    (true, Some(raw)) => {
                        out.write_all(raw)?;
                        out.write_all(b"\n")?;
                    }
                    (true, None) => writeln!(out, "{}", task.to_json())?,
                    (false, _) => writeln!(out, "{}", render::task_line(task, self.colour))?,
                }
                Ok(true)
            }
            Item::DeadLetter { letter, raw, .. } => {
                if self.json {
                    out.write_all(raw)?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "{}", render::dead_letter_line(letter, self.colour))?;
                }
                Ok(true)
            }
            Item::NotATask { reason, .. } => {
                tracing::warn!(%reason, "skipped a message that is not a task");
                Ok(false)
            }
        }
    }
}
