//! `taskbus flow`: run workflows (see [`taskbus_taskmaster::flow`]), check them, draw them, start a
//! run by hand, and show how runs stand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Bus, BusUrl, Meta};
use taskbus_taskmaster::clock::SystemClock;
use taskbus_taskmaster::flow::{
    graph, journal, status, Engine, FlowOptions, FlowService, Run, RunInfo, Workflow, WorkflowSet,
};

use super::failure::usage;
use super::Global;

const EXAMPLES: &str = "\
A workflow file (daily.toml); a directory of them works too:
  [[phase]]
  task = \"extract\"
  rule = { cron = \"0 5 * * *\", offset = \"-1d\" }
  template = \"s3://in/{yyyy}/{mm}/{dd}/\"

  [[phase]]
  task = \"transform\"
  depends_on = \"extract\"
  retry = { retries = 3, delay = \"30s\", backoff = \"exponential\" }

  [[phase]]
  task = \"load\"
  depends_on = [\"extract\", \"transform\"]   # starts once both completed in the run
  rule = { require = [\"file\"] }             # only when the parents' meta has `file`
  template = \"{meta:file}?day={yyyy}-{mm}-{dd}\"

flowlord's [[Phase]] files (task=\"topic:job\", dependsOn, rule=\"cron=…&require=…\", retry=3) load as they are.

Examples:
  taskbus flow --workflow flows/ check                 check every file, list phases and triggers
  taskbus flow --workflow daily.toml graph --dot | dot -Tsvg > daily.svg
  taskbus --bus file://./data flow --workflow flows/   run: cron phases fire, completions start children
  taskbus flow --workflow daily.toml start extract --at 2024-01-02
  taskbus flow --workflow flows/ status                recent runs
  taskbus flow --workflow flows/ status 3f2a           one run, phase by phase

The app keeps each run's journal in --state (default DIR/.flow for file://DIR): it can be killed at any
moment and restarted without losing a child or sending one twice. One app per state directory.";

/// Options of `taskbus flow`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The workflow file, or a directory of them (every *.toml below it).
    #[arg(
        long,
        global = true,
        env = "TASKBUS_FLOW_WORKFLOW",
        value_name = "PATH"
    )]
    workflow: Option<PathBuf>,
    /// The state directory: run journals, last cron ticks
    /// [default: DIR/.flow for file://DIR, else ./.taskbus-flow].
    #[arg(long, global = true, env = "TASKBUS_FLOW_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    run: RunArgs,
}

/// What to do instead of running the app.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Check the workflow files and list their phases; exit 2 when one is invalid.
    Check,
    /// Print the workflows as trees, or as Graphviz dot.
    Graph {
        /// Graphviz dot instead of a tree.
        #[arg(long)]
        dot: bool,
        /// Only this workflow (its file name, or path inside the directory).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Show recent runs, or one run phase by phase (to do, in process, completed, failed).
    Status {
        /// A run id, or the start of one.
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How many recent runs to list.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Start a run by hand: send the task of PHASE (usually a root) with new run meta.
    Start {
        /// The phase to start.
        phase: String,
        /// The workflow, when --workflow is a directory with several.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The run's scheduled time (2024-01-02, 2024-01-02T15, RFC 3339, now, today, yesterday).
        #[arg(long, default_value = "now", value_name = "TIME")]
        at: String,
        /// The run id [default: a new UUID].
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// Meta for the task and its templates (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
}

/// Options of the running app.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where workers publish done tasks.
    #[arg(long, default_value = "done", value_name = "TOPIC")]
    done_topic: String,
    /// The app's consumer group on the done topic.
    #[arg(long, default_value = "flow", value_name = "GROUP")]
    group: String,
    /// Where a copy of a task that failed for good goes; "-" for nowhere.
    #[arg(long, default_value = "failed", value_name = "TOPIC")]
    failed_topic: String,
    /// Wait for the disk on every journal write (survives a machine crash, costs a flush per batch).
    #[arg(long)]
    fsync: bool,
    /// How often the workflow files are checked for changes; 0s never.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    reload: Duration,
    /// Journals of runs untouched for this long are deleted.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    keep: Duration,
    /// At most this many done tasks are handled in one batch.
    #[arg(long, default_value_t = 256, value_name = "N")]
    batch: usize,
    /// How late a cron tick may be sent and still count as on time.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace: Duration,
}

/// Runs `taskbus flow`.
pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let Some(path) = args.workflow.clone() else {
        return Err(usage(
            "taskbus flow needs --workflow PATH: a workflow file, or a directory of *.toml workflow files",
        ));
    };
    let set = WorkflowSet::load(&path).map_err(|e| {
        let problems: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
        usage(format!("invalid workflow: {}", problems.join("; ")))
    })?;
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| default_state_dir(&global.bus));
    match args.action {
        Some(Action::Check) => {
            check(&set);
            Ok(())
        }
        Some(Action::Graph { dot, name }) => {
            for w in selected(&set, name.as_deref())? {
                print!("{}", if dot { graph::dot(w) } else { graph::tree(w) });
            }
            Ok(())
        }
        Some(Action::Status { run, json, limit }) => {
            show_status(&set, &state, run.as_deref(), json, limit)
        }
        Some(Action::Start {
            phase,
            name,
            at,
            run,
            meta,
        }) => start(&set, global, &phase, name.as_deref(), &at, run, &meta).await,
        None => serve(set, global, state, args.run).await,
    }
}

async fn serve(
    set: WorkflowSet,
    global: &Global,
    state: PathBuf,
    args: RunArgs,
) -> anyhow::Result<()> {
    for (flag, topic) in [("--done-topic", &args.done_topic), ("--group", &args.group)] {
        taskbus_bus::check_name("topic", topic).map_err(|e| usage(format!("{flag}: {e}")))?;
    }
    let failed_topic = match args.failed_topic.as_str() {
        "-" => None,
        t => {
            taskbus_bus::check_name("topic", t)
                .map_err(|e| usage(format!("--failed-topic: {e}")))?;
            Some(t.to_owned())
        }
    };
    let mut options = FlowOptions::new(&state);
    options.done_topic = args.done_topic;
    options.group = args.group;
    options.failed_topic = failed_topic;
    options.fsync = args.fsync;
    options.reload_every = (!args.reload.is_zero()).then_some(args.reload);
    options.keep = args.keep;
    options.batch = args.batch.max(1);
    options.grace = args.grace;
    let bus = Bus::connect(&global.bus).await?;
    tracing::info!(workflow = %set.path().display(), state = %state.display(), bus = %global.bus, "flow starting");
    let service = FlowService::new(bus.clone(), set, Arc::new(SystemClock), options)
        .with_context(|| format!("cannot use the flow state directory {}", state.display()))?;
    service.run(super::cron::shutdown_on_signals()).await?;
    bus.close().await?;
    Ok(())
}

fn check(set: &WorkflowSet) {
    for warning in set.warnings() {
        println!("warning: {warning}");
    }
    for w in set.workflows() {
        let roots = w.phases().iter().filter(|p| p.is_root()).count();
        println!(
            "{}: {} phases, {roots} started by cron or by hand",
            w.name(),
            w.phases().len()
        );
        for &i in w.order() {
            let p = w.phase(i);
            println!(
                "  {} [{}] {}",
                p.name,
                p.task_name(),
                graph::trigger_text(w, p)
            );
        }
    }
}

fn selected<'a>(
    set: &'a WorkflowSet,
    name: Option<&str>,
) -> anyhow::Result<Vec<&'a Arc<Workflow>>> {
    match name {
        None => Ok(set.workflows().collect()),
        Some(n) => set.get(n).map(|w| vec![w]).ok_or_else(|| {
            let names: Vec<&str> = set.workflows().map(|w| w.name()).collect();
            usage(format!(
                "--name {n:?}: no such workflow; the workflows are {names:?}"
            ))
        }),
    }
}

async fn start(
    set: &WorkflowSet,
    global: &Global,
    phase: &str,
    name: Option<&str>,
    at: &str,
    run: Option<String>,
    meta: &[String],
) -> anyhow::Result<()> {
    let w = match (name, set.workflows().count()) {
        (Some(_), _) | (None, 1) => selected(set, name)?[0].clone(),
        (None, _) => {
            let names: Vec<&str> = set.workflows().map(|w| w.name()).collect();
            return Err(usage(format!(
                "--workflow holds several workflows {names:?}; say which with --name"
            )));
        }
    };
    let index = w.index_of(phase).ok_or_else(|| {
        let names: Vec<&str> = w.phases().iter().map(|p| p.name.as_str()).collect();
        usage(format!(
            "{}: no phase {phase:?}; its phases are {names:?}",
            w.name()
        ))
    })?;
    let p = w.phase(index);
    let scheduled =
        taskbus_taskmaster::backload::config::parse_time(at, p.timezone, chrono::Utc::now())
            .map_err(|e| usage(format!("--at: {e}")))?
            .with_timezone(&chrono::Utc);
    let run = run.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let info = RunInfo {
        run: &run,
        scheduled,
    };
    let mut extra = Meta::new();
    for pair in meta {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| usage(format!("--meta {pair:?}: write KEY=VALUE")))?;
        extra.set(k, v);
    }
    let mut input = w.template_meta(index, &info, &[]);
    input.merge(&extra);
    let mut task = w
        .build_task(index, &info, scheduled + p.offset, &input)
        .map_err(|e| {
            usage(format!(
                "phase {phase}: {e}; give the meta it reads with --meta KEY=VALUE"
            ))
        })?;
    for (k, v) in extra.iter() {
        if task.meta.get(k).is_none() {
            task.meta.set(k, v);
        }
    }
    let bus = Bus::connect(&global.bus).await?;
    bus.send(&p.topic, &task).await?;
    bus.close().await?;
    if !p.is_root() {
        eprintln!("note: {phase} is not a root phase; the run starts from it");
    }
    let line = format!(
        "run {run}: sent {} ({}) to topic {} as task {}, scheduled {}",
        p.name,
        p.task_name(),
        p.topic,
        task.id,
        task.meta.get(keys::SCHEDULED).unwrap_or("")
    );
    // On stdio: stdout carries the task itself.
    if global.bus_is_stdio() {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

fn show_status(
    set: &WorkflowSet,
    state: &Path,
    run: Option<&str>,
    json: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let mut engine = Engine::new(set.workflows().cloned(), None);
    let mut runs: Vec<Run> = Vec::new();
    let mut unknown = 0;
    for path in journal::all_runs(state)? {
        let file = journal::read_run(&path)?;
        match engine.restore(&file.records) {
            Ok((key, _)) => {
                if let Some(r) = engine.run(&key) {
                    runs.push(r.clone());
                }
                engine.evict(&key);
            }
            Err(_) => unknown += 1,
        }
    }
    if unknown > 0 {
        eprintln!("note: {unknown} runs belong to workflows not in --workflow; they are left out");
    }
    match run {
        Some(id) => {
            let matching: Vec<&Run> = runs.iter().filter(|r| r.key.run.starts_with(id)).collect();
            let run = match matching.as_slice() {
                [one] => *one,
                [] => {
                    return Err(usage(format!(
                        "no run {id:?} in {}; `taskbus flow status` lists them",
                        state.display()
                    )))
                }
                many => {
                    let exact: Vec<&&Run> = many.iter().filter(|r| r.key.run == id).collect();
                    match exact.as_slice() {
                        [one] => **one,
                        _ => {
                            let ids: Vec<String> = many.iter().map(|r| r.key.to_string()).collect();
                            return Err(usage(format!(
                                "{id:?} matches several runs: {ids:?}; give more of the id"
                            )));
                        }
                    }
                }
            };
            if json {
                println!("{}", status::to_json(run));
            } else {
                print!("{}", status::render(run));
            }
        }
        None => {
            runs.sort_by_key(|r| std::cmp::Reverse(r.updated));
            runs.truncate(limit);
            if json {
                let all: Vec<serde_json::Value> = runs.iter().map(status::to_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else if runs.is_empty() {
                println!("no runs in {}", state.display());
            } else {
                for r in &runs {
                    println!("{}", status::summary_line(r));
                }
            }
        }
    }
    Ok(())
}

/// `DIR/.flow` for `file://DIR`, else `.taskbus-flow` in the working directory.
fn default_state_dir(bus: &str) -> PathBuf {
    match BusUrl::parse(bus) {
        Ok(url) if url.scheme() == "file" => {
            let dir = url.body().strip_prefix("//").unwrap_or(url.body());
            PathBuf::from(if dir.is_empty() { "." } else { dir }).join(".flow")
        }
        _ => PathBuf::from(".taskbus-flow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_follows_the_file_bus() {
        assert_eq!(
            default_state_dir("file://./data"),
            PathBuf::from("./data/.flow")
        );
        assert_eq!(
            default_state_dir("nats://127.0.0.1:4222"),
            PathBuf::from(".taskbus-flow")
        );
    }
}
