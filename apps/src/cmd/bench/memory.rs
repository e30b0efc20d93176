//! The memory of a worker process: a no-op worker runs in a child process (`taskbus bench worker`, a
//! hidden subcommand of this binary) on the bus under test, and the parent reads its `VmRSS` and
//! `VmHWM` from /proc while it idles, drains N tasks, and holds K tasks in flight at once.
//!
//! The child's worker holds a task whose info is `hold/K/…` until the parent writes `release` on its
//! stdin, and prints `held K` on its stdout once K such tasks are held. It ends when its stdin closes.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::ProgressBar;
use taskbus_bus::{Bus, ConsumerOptions, Subscription, Task};
use taskbus_worker::{from_fn, Launcher, LauncherOptions, Outcome, Shutdown, TaskContext};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::measure::{rss, Rss};
use super::target::Target;
use super::taskbus_loop::{fill, GROUP};
use super::tasks::KIND;

/// The group that counts done tasks in the parent.
const DONE_GROUP: &str = "memory";
/// How long any one step may take before the measure fails.
const STEP: Duration = Duration::from_secs(300);
/// How long the worker idles before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Options of the hidden `taskbus bench worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// The bus URL.
    #[arg(long)]
    url: String,
    /// The topic of the tasks.
    #[arg(long)]
    topic: String,
    /// The topic of the done tasks.
    #[arg(long)]
    done_topic: String,
    /// The worker's `max_in_progress`.
    #[arg(long)]
    max_in_progress: usize,
}

/// What one memory measure saw.
#[derive(Debug)]
pub(crate) struct Footprint {
    /// `max_in_progress` of the worker that idled and drained.
    pub(crate) load_c: usize,
    /// Connected and subscribed, after one task, nothing to do.
    pub(crate) idle: Rss,
    /// After draining each N in turn (N tasks more each time), with its peak so far.
    pub(crate) drained: Vec<(usize, Rss)>,
    /// `max_in_progress` of the worker that held tasks.
    pub(crate) hold_c: usize,
    /// While holding K tasks in flight at once, for each K.
    pub(crate) held: Vec<(usize, Rss)>,
}

impl Footprint {
    /// Bytes per in-flight task: the growth of resident memory from the small K to the large K,
    /// divided by the difference in tasks.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn bytes_per_in_flight(&self) -> Option<f64> {
        let (small, large) = (self.held.first()?, self.held.last()?);
        let tasks = large.0.checked_sub(small.0).filter(|d| *d > 0)?;
        let kib = large.1.now_kib as f64 - small.1.now_kib as f64;
        Some(kib * 1024.0 / tasks as f64)
    }
}

/// Measures a worker process on `target`: idle and draining each of `sizes` at `load_c`, then
/// holding `steps` tasks in flight.
pub(crate) async fn run(
    target: &Target,
    sizes: &[usize],
    load_c: usize,
    steps: (usize, usize),
    bar: &ProgressBar,
) -> anyhow::Result<Footprint> {
    let bus = target.connect().await?;
    let result = measure(&bus, target, sizes, load_c, steps, bar).await;
    let _ = bus.close().await;
    result
}

async fn measure(
    bus: &Bus,
    target: &Target,
    sizes: &[usize],
    load_c: usize,
    (small, large): (usize, usize),
    bar: &ProgressBar,
) -> anyhow::Result<Footprint> {
    bar.set_length((sizes.iter().sum::<usize>() + small + large) as u64);
    let (worker, mut done) = start(bus, target, load_c).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = worker.rss()?;
    let mut drained = Vec::new();
    for &n in sizes {
        let topic = worker.topic.clone();
        let (sent, counted) = tokio::join!(fill(bus, &topic, n, 0), count_done(&mut done, n, bar));
        sent?;
        counted?;
        drained.push((n, worker.rss()?));
    }
    worker.stop().await?;

    let (mut worker, mut done) = start(bus, target, large).await?;
    let mut held = Vec::new();
    for k in [small, large] {
        let hold: Vec<Task> = (0..k)
            .map(|i| Task::new(KIND, format!("hold/{k}/{i}")))
            .collect();
        bus.send_all(&worker.topic, &hold, 1024).await?;
        worker.wait_for(&format!("held {k}")).await?;
        held.push((k, worker.rss()?));
        worker.release().await?;
        count_done(&mut done, k, bar).await?;
    }
    worker.stop().await?;
    Ok(Footprint {
        load_c,
        idle,
        drained,
        hold_c: large,
        held,
    })
}

/// Starts a worker process with `max_in_progress` `c` on new topics, and waits until it has done a
/// first task (so it is connected and subscribed).
async fn start(
    bus: &Bus,
    target: &Target,
    c: usize,
) -> anyhow::Result<(WorkerProcess, Subscription)> {
    let topic = target.topic("mem", &[GROUP]);
    let done_topic = target.topic("memdone", &[DONE_GROUP]);
    target.declare_group(bus, &topic, GROUP).await?;
    let options = ConsumerOptions::group(DONE_GROUP).max_in_flight(1024);
    let mut done = bus.subscribe_with(&done_topic, options).await?;
    let worker = WorkerProcess::spawn(&target.url, topic, &done_topic, c)?;
    bus.send(&worker.topic, &Task::new(KIND, "warm-up")).await?;
    count_done(&mut done, 1, &ProgressBar::hidden()).await?;
    Ok((worker, done))
}

/// Reads and acks `n` done tasks.
async fn count_done(done: &mut Subscription, n: usize, bar: &ProgressBar) -> anyhow::Result<()> {
    let mut acks = JoinSet::new();
    for got in 0..n {
        let received = timeout(STEP, done.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("only {got} of {n} done tasks came back within {STEP:?}")
            })??
            .context("the done topic ended")?;
        acks.spawn(received.ack());
        while acks.len() > 256 {
            if let Some(acked) = acks.join_next().await {
                acked??;
            }
        }
        bar.inc(1);
    }
    while let Some(acked) = acks.join_next().await {
        acked??;
    }
    Ok(())
}

/// The worker child process.
struct WorkerProcess {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    topic: String,
}

impl WorkerProcess {
    fn spawn(
        url: &str,
        topic: String,
        done_topic: &str,
        c: usize,
    ) -> anyhow::Result<WorkerProcess> {
        let exe = std::env::current_exe()
            .context("cannot find this program to start a worker process")?;
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "bench",
                "worker",
                "--url",
                url,
                "--topic",
                &topic,
                "--done-topic",
                done_topic,
            ])
            .args(["--max-in-progress", &c.to_string()])
            .env("TASKBUS_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} bench worker", exe.display()))?;
        let pid = child.id().context("the worker process ended at once")?;
        let stdout = child
            .stdout
            .take()
            .context("the worker process has no stdout")?;
        Ok(WorkerProcess {
            stdin: child.stdin.take(),
            child,
            pid,
            lines: BufReader::new(stdout).lines(),
            topic,
        })
    }

    fn rss(&self) -> anyhow::Result<Rss> {
        rss(self.pid)
    }

    /// Waits for the line `want` on the worker's stdout.
    async fn wait_for(&mut self, want: &str) -> anyhow::Result<()> {
        loop {
            let line = timeout(STEP, self.lines.next_line()).await.map_err(|_| {
                anyhow::anyhow!("the worker process did not say {want:?} within {STEP:?}")
            })??;
            match line {
                Some(line) if line.trim() == want => return Ok(()),
                Some(_) => {}
                None => {
                    let status = self.child.wait().await?;
                    anyhow::bail!("the worker process ended ({status}) before saying {want:?}");
                }
            }
        }
    }

    async fn release(&mut self) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the worker's stdin is closed")?;
        stdin.write_all(b"release\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Closes its stdin, which shuts it down, and waits for it to exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "the worker process failed: {status}");
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the worker process did not stop within 30s of its stdin closing")
            }
        }
    }
}

/// The held-tasks state of the child: how many are held, and a generation bumped by each release.
#[derive(Debug)]
struct Hold {
    held: AtomicUsize,
    release: watch::Sender<u64>,
}

impl Hold {
    /// Returns at once for a task that is not `hold/K/…`; else counts it, says `held K` when it is the
    /// K-th, and waits for the next release.
    async fn hold(&self, info: &str) {
        let Some(rest) = info.strip_prefix("hold/") else {
            return;
        };
        let target: usize = rest
            .split('/')
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        let mut release = self.release.subscribe();
        let generation = *release.borrow_and_update();
        if self.held.fetch_add(1, Ordering::SeqCst) + 1 == target {
            println!("held {target}");
        }
        let _ = release.wait_for(|g| *g != generation).await;
    }
}

/// Runs the child: the launcher with a worker that completes at once, or holds `hold/…` tasks.
pub(crate) async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.url).await?;
    let hold = Arc::new(Hold {
        held: AtomicUsize::new(0),
        release: watch::channel(0).0,
    });
    let options = LauncherOptions::default()
        .group(GROUP)
        .max_in_progress(args.max_in_progress)
        .done_topic(&args.done_topic);
    let launcher = Launcher::new(bus.clone(), &args.topic, options);
    tokio::spawn(read_commands(Arc::clone(&hold), launcher.shutdown_handle()));
    let work = from_fn(move |task: Task, _ctx: TaskContext| {
        let hold = Arc::clone(&hold);
        async move {
            hold.hold(&task.info).await;
            Outcome::complete("")
        }
    });
    launcher.run(work).await?;
    bus.close().await?;
    Ok(())
}

/// `release` lines on stdin let the held tasks go; the end of stdin shuts the worker down.
async fn read_commands(hold: Arc<Hold>, shutdown: Shutdown) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "release" {
            hold.held.store(0, Ordering::SeqCst);
            hold.release.send_modify(|g| *g += 1);
        }
    }
    shutdown.request();
}
