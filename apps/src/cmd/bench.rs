//! `taskbus bench`: throughput, latency and memory of taskbus on every bus, against the same loop
//! written on each broker's raw client, in the same run. See docs/bench.md.
//!
//! For each bus: the throughput points (a no-op worker through the real Launcher, then the raw loop,
//! on N pre-filled tasks at C in flight), the send → done latency, and the memory of a worker process.
//! Every name a run makes carries its run id (`tbbench-<minute>-<pid>`) and is deleted at the end.

mod latency;
mod measure;
mod memory;
mod plan;
mod progress;
#[cfg(feature = "amqp")]
mod raw_amqp;
mod raw_file;
#[cfg(feature = "kafka")]
mod raw_kafka;
#[cfg(feature = "nats")]
mod raw_nats;
mod report;
mod target;
mod taskbus_loop;
mod tasks;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::ProgressBar;

use super::failure::usage;
use super::Global;
use measure::{load_average, median, per_task_us, quantile, rate, Measured};
use plan::{BusKind, Count, Limit, Part, Plan, Point};
use progress::Progress;
use report::{Client, Failure, Host, Latency, Memory, PerInFlight, Phase, Report, Throughput};
use target::{Brokers, Target};

const EXAMPLES: &str = "\
Examples:
  taskbus bench                                      every bus this binary has, full sizes
  taskbus bench --buses file,nats --skip growth      two buses, the throughput matrix only
  taskbus bench --limit nats=1M                      let NATS go to a million tasks too
  taskbus bench --tasks 2k --growth 2k --latency-tasks 50 --memory-in-flight 100   a quick look

Start the brokers first, as the tests do: for b in scripts/brokers/*.sh; do bash \"$b\"; done
The --bus option is not used: --buses chooses, and each bus is measured on names of its own.";

/// Options of `taskbus bench`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES, args_override_self = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    child: Option<Child>,
    /// The buses to measure, comma-separated: mem, file, nats, amqp, kafka [default: every bus
    /// this binary was built with].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "BUS,…")]
    buses: Vec<BusKind>,
    /// Tasks in flight (C) of the throughput matrix.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64,256",
        value_name = "C,…"
    )]
    concurrency: Vec<usize>,
    /// Tasks (N) per point of the throughput matrix.
    #[arg(long, default_value = "10k", value_name = "N")]
    tasks: Count,
    /// At most this many tasks per slot in the matrix (N = min(--tasks, C × this)), so C=1 stays short.
    #[arg(long, default_value = "2k", value_name = "N")]
    per_slot: Count,
    /// Task counts (N) of the cost-growth points, also drained by the worker process whose memory is
    /// measured.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10k,100k,1M",
        value_name = "N,…"
    )]
    growth: Vec<Count>,
    /// Tasks in flight (C) of the cost-growth points and of the memory measure under load.
    #[arg(long, default_value_t = 64, value_name = "C")]
    growth_concurrency: usize,
    /// The largest N on a bus, as BUS=N [default: 1M on mem and file, 100k on brokers, so a full run
    /// takes under 15 minutes on two busy cores].
    #[arg(long = "limit", value_delimiter = ',', value_name = "BUS=N,…")]
    limits: Vec<Limit>,
    /// Repetitions of each throughput point; the median is reported.
    #[arg(long, default_value_t = 1, value_name = "RUNS")]
    runs: usize,
    /// Tasks per second sent by the latency measure, one at a time.
    #[arg(long, default_value_t = 100.0, value_name = "PER_SEC")]
    latency_rate: f64,
    /// Tasks timed by the latency measure.
    #[arg(long, default_value = "500", value_name = "N")]
    latency_tasks: Count,
    /// The worker's max_in_progress in the latency measure.
    #[arg(long, default_value_t = 16, value_name = "C")]
    latency_concurrency: usize,
    /// Tasks a worker process holds in flight at once to measure bytes per in-flight task (it also
    /// holds a tenth of this, and the difference counts).
    #[arg(long, default_value = "1000", value_name = "N")]
    memory_in_flight: Count,
    /// Parts to leave out, comma-separated: throughput, growth, raw, latency, memory.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART,…")]
    skip: Vec<Part>,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "taskbus-bench.json", value_name = "FILE")]
    json: PathBuf,
    /// Where to write the report as markdown (it is printed on stdout too).
    #[arg(long, default_value = "taskbus-bench.md", value_name = "FILE")]
    markdown: PathBuf,
    /// The NATS server (JetStream enabled).
    #[arg(
        long,
        env = "TASKBUS_TEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    nats_url: String,
    /// The RabbitMQ server.
    #[arg(
        long,
        env = "TASKBUS_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_name = "URL"
    )]
    amqp_url: String,
    /// The Kafka broker.
    #[arg(
        long,
        env = "TASKBUS_TEST_KAFKA_URL",
        default_value = "kafka://127.0.0.1:9092",
        value_name = "URL"
    )]
    kafka_url: String,
    /// The directory the file bus of a run is made in (a subdirectory, deleted at the end)
    /// [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Child {
    /// A worker process for the memory measure (started by the bench itself).
    #[command(hide = true)]
    Worker(memory::WorkerArgs),
}

impl Args {
    fn plan(&self) -> anyhow::Result<Plan> {
        let mut buses: Vec<BusKind> = if self.buses.is_empty() {
            BusKind::ALL.into_iter().filter(|b| b.built()).collect()
        } else {
            self.buses.clone()
        };
        buses.sort_unstable();
        buses.dedup();
        if let Some(bus) = buses.iter().find(|b| !b.built()) {
            return Err(usage(format!(
                "this taskbus was built without {bus} support: rebuild with --features {}",
                bus.feature().unwrap_or_default()
            )));
        }
        if self.concurrency.contains(&0) || self.growth_concurrency == 0 {
            return Err(usage(
                "--concurrency and --growth-concurrency must be at least 1",
            ));
        }
        if self.runs == 0 {
            return Err(usage("--runs must be at least 1"));
        }
        if self.latency_rate.is_nan() || self.latency_rate <= 0.0 {
            return Err(usage("--latency-rate must be above 0, such as 100"));
        }
        Ok(Plan {
            buses,
            concurrency: self.concurrency.clone(),
            tasks: self.tasks.0,
            per_slot: self.per_slot.0,
            growth: self.growth.iter().map(|c| c.0).collect(),
            growth_concurrency: self.growth_concurrency,
            limits: self.limits.iter().map(|l| (l.bus, l.n)).collect(),
            runs: self.runs,
            latency_rate: self.latency_rate,
            latency_tasks: self.latency_tasks.0,
            latency_concurrency: self.latency_concurrency.max(1),
            memory_in_flight: self.memory_in_flight.0,
            skip: self.skip.clone(),
        })
    }

    fn brokers(&self) -> Brokers {
        Brokers {
            nats: self.nats_url.clone(),
            amqp: self.amqp_url.clone(),
            kafka: self.kafka_url.clone(),
            dir: self.dir.clone().unwrap_or_else(std::env::temp_dir),
        }
    }
}

/// Runs `taskbus bench`.
pub(crate) async fn run(args: Args, _global: &Global) -> anyhow::Result<()> {
    if let Some(Child::Worker(worker)) = args.child {
        return memory::worker(worker).await;
    }
    let plan = args.plan()?;
    let brokers = args.brokers();
    let run_id = target::run_id();
    let started = Instant::now();
    let mut report = Report {
        taskbus_version: env!("CARGO_PKG_VERSION"),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        seconds: 0.0,
        host: Host {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            load_at_start: load_average(),
            load_at_end: [0.0; 3],
        },
        plan: plan.clone(),
        throughput: Vec::new(),
        latency: Vec::new(),
        memory: Vec::new(),
        memory_per_in_flight: Vec::new(),
        failures: Vec::new(),
    };
    let progress = Progress::new(plan.buses.iter().map(|b| steps(&plan, *b)).sum());
    progress.note(&format!("taskbus bench {run_id}: {}", names(&plan.buses)));
    let mut interrupted = false;
    for &bus in &plan.buses {
        let target = Target::new(bus, &brokers, &run_id);
        tokio::select! {
            () = measure_bus(&target, &plan, &progress, &mut report) => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
        if let Err(e) = target.cleanup().await {
            progress.note(&format!("{bus}: cannot clean up after the run: {e:#}"));
        }
        if interrupted {
            break;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.host.load_at_end = load_average();
    write(&report, &args)?;
    anyhow::ensure!(
        !interrupted,
        "interrupted; the report so far is in {}",
        args.json.display()
    );
    anyhow::ensure!(
        report.failures.is_empty(),
        "{} measures failed (see Failures in {})",
        report.failures.len(),
        args.markdown.display()
    );
    Ok(())
}

/// How many progress steps a bus takes.
fn steps(plan: &Plan, bus: BusKind) -> usize {
    let clients = if bus.has_raw() && plan.does(Part::Raw) {
        2
    } else {
        1
    };
    plan.throughput_points(bus).len() * clients * plan.runs
        + usize::from(plan.does(Part::Latency))
        + usize::from(plan.does(Part::Memory) && bus.shared_between_processes())
}

fn names(buses: &[BusKind]) -> String {
    buses
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every measure of one bus; failures are recorded and the run goes on.
async fn measure_bus(target: &Target, plan: &Plan, progress: &Progress, report: &mut Report) {
    let bus = target.kind;
    match target.connect().await {
        Ok(connected) => {
            let _ = connected.close().await;
        }
        Err(e) => {
            progress.note(&format!("{bus}: skipped: {e:#}"));
            for _ in 0..steps(plan, bus) {
                progress.start("", 0).finish_and_clear();
            }
            report.failures.push(failure(bus, "connect", &e));
            return;
        }
    }
    for point in plan.throughput_points(bus) {
        throughput(target, plan, point, Client::Taskbus, progress, report).await;
        if bus.has_raw() && plan.does(Part::Raw) {
            throughput(target, plan, point, Client::Raw, progress, report).await;
        }
    }
    if plan.does(Part::Latency) {
        latency(target, plan, progress, report).await;
    }
    if plan.does(Part::Memory) && bus.shared_between_processes() {
        memory(target, plan, progress, report).await;
    }
}

/// Measures one throughput point of one client, `plan.runs` times.
async fn throughput(
    target: &Target,
    plan: &Plan,
    point: Point,
    client: Client,
    progress: &Progress,
    report: &mut Report,
) {
    let name = match client {
        Client::Taskbus => "taskbus",
        Client::Raw => "raw",
    };
    let load = load_average()[0];
    let (mut runs, mut fills, mut duplicates) = (Vec::new(), Vec::new(), 0);
    let (mut client_cpu, mut broker_cpu) = (Vec::new(), Vec::new());
    for run in 1..=plan.runs {
        let again = if plan.runs > 1 {
            format!(" run {run}")
        } else {
            String::new()
        };
        let what = format!("{} {point} {name}{again}", target.kind);
        let bar = progress.start(&what, point.n as u64);
        let measured = match client {
            Client::Taskbus => taskbus_loop::run(target, point, &bar).await,
            Client::Raw => raw_loop(target, point, &bar).await,
        };
        match measured {
            Ok(m) => {
                runs.push(rate(point.n, m.drain));
                fills.push(rate(point.n, m.fill));
                duplicates += m.duplicates;
                client_cpu.push(per_task_us(m.cpu.client, point.n));
                broker_cpu.extend(m.cpu.broker.map(|b| per_task_us(b, point.n)));
                progress.finish(
                    &bar,
                    &format!(
                        "{what}: {} tasks/s (fill {} tasks/s)",
                        report::thousands(rate(point.n, m.drain)),
                        report::thousands(rate(point.n, m.fill))
                    ),
                );
            }
            Err(e) => {
                progress.finish(&bar, &format!("{what}: failed: {e:#}"));
                report
                    .failures
                    .push(failure(target.kind, &format!("{name} {point}"), &e));
                return;
            }
        }
    }
    report.throughput.push(Throughput {
        bus: target.kind,
        n: point.n,
        c: point.c,
        client,
        tasks_per_sec: median(&runs),
        runs,
        fill_tasks_per_sec: median(&fills),
        duplicates,
        client_cpu_us: median(&client_cpu),
        broker_cpu_us: (!broker_cpu.is_empty()).then(|| median(&broker_cpu)),
        load,
    });
}

/// The raw-client loop of the target's bus.
async fn raw_loop(target: &Target, point: Point, bar: &ProgressBar) -> anyhow::Result<Measured> {
    match target.kind {
        BusKind::File => raw_file::run(target, point, bar).await,
        #[cfg(feature = "nats")]
        BusKind::Nats => raw_nats::run(target, point, bar).await,
        #[cfg(feature = "amqp")]
        BusKind::Amqp => raw_amqp::run(target, point, bar).await,
        #[cfg(feature = "kafka")]
        BusKind::Kafka => raw_kafka::run(target, point, bar).await,
        other => anyhow::bail!("there is no raw client loop for the {other} bus"),
    }
}

async fn latency(target: &Target, plan: &Plan, progress: &Progress, report: &mut Report) {
    let (n, c) = (plan.latency_tasks, plan.latency_concurrency);
    let what = format!(
        "{} latency N={} C={c} at {}/s",
        target.kind,
        plan::short(n),
        plan.latency_rate
    );
    let load = load_average()[0];
    let bar = progress.start(&what, n as u64);
    match latency::run(target, plan.latency_rate, n, c, &bar).await {
        Ok(l) => {
            let ms = |q: f64| quantile(&l.sorted, q).as_secs_f64() * 1000.0;
            let row = Latency {
                bus: target.kind,
                n,
                c,
                rate: plan.latency_rate,
                achieved_rate: l.achieved_rate,
                p50_ms: ms(0.5),
                p90_ms: ms(0.9),
                p99_ms: ms(0.99),
                max_ms: ms(1.0),
                load,
            };
            progress.finish(
                &bar,
                &format!(
                    "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    row.p50_ms, row.p99_ms, row.max_ms
                ),
            );
            report.latency.push(row);
        }
        Err(e) => {
            progress.finish(&bar, &format!("{what}: failed: {e:#}"));
            report.failures.push(failure(target.kind, "latency", &e));
        }
    }
}

async fn memory(target: &Target, plan: &Plan, progress: &Progress, report: &mut Report) {
    let sizes = if plan.does(Part::Growth) {
        plan.growth_sizes(target.kind)
    } else {
        vec![plan.tasks.min(plan.limit(target.kind))]
    };
    let what = format!("{} memory of a worker process", target.kind);
    let bar = progress.start(&what, 0);
    let c = plan.growth_concurrency;
    match memory::run(target, &sizes, c, plan.memory_steps(), &bar).await {
        Ok(f) => {
            let bus = target.kind;
            let row = |phase, n, c, rss: measure::Rss| Memory {
                bus,
                phase,
                n,
                c,
                rss_kib: rss.now_kib,
                peak_kib: rss.peak_kib,
            };
            report.memory.push(row(Phase::Idle, 1, f.load_c, f.idle));
            for (n, rss) in &f.drained {
                report.memory.push(row(Phase::Drained, *n, f.load_c, *rss));
            }
            for (n, rss) in &f.held {
                report.memory.push(row(Phase::InFlight, *n, f.hold_c, *rss));
            }
            let per = f.bytes_per_in_flight();
            if let (Some(bytes), Some(from), Some(to)) = (per, f.held.first(), f.held.last()) {
                report.memory_per_in_flight.push(PerInFlight {
                    bus,
                    c: f.hold_c,
                    from_n: from.0,
                    to_n: to.0,
                    bytes,
                });
            }
            let idle_mib = f.idle.now_kib / 1024;
            let peak_mib = f.drained.last().map_or(0, |(_, r)| r.peak_kib / 1024);
            let per = per.map_or("–".to_owned(), report::thousands);
            progress.finish(
                &bar,
                &format!("{what}: idle {idle_mib} MiB, peak {peak_mib} MiB, {per} bytes per in-flight task"),
            );
        }
        Err(e) => {
            progress.finish(&bar, &format!("{what}: failed: {e:#}"));
            report.failures.push(failure(target.kind, "memory", &e));
        }
    }
}

fn failure(bus: BusKind, what: &str, e: &anyhow::Error) -> Failure {
    Failure {
        bus,
        what: what.to_owned(),
        error: format!("{e:#}"),
    }
}

/// Writes the JSON and markdown files and prints the markdown.
fn write(report: &Report, args: &Args) -> anyhow::Result<()> {
    let markdown = report.markdown();
    println!("{markdown}");
    let json = serde_json::to_string_pretty(report).context("cannot encode the report")?;
    for (path, text) in [(&args.json, json), (&args.markdown, markdown)] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the directory {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "the report is in {} and {}",
        args.markdown.display(),
        args.json.display()
    );
    Ok(())
}
