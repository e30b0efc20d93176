//! A workflow of 10,000 phases: it loads and validates, draws, and a run of it completes on the
//! in-process bus with each phase run once. Times and the process's peak memory are printed (run
//! with `--nocapture` to see them); nothing asserts on time.
//!
//! The shape: a root fans out to 99 phases; then 99 layers of 100 phases, each phase waiting for two
//! phases of the layer before it (fan-in everywhere).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskbus_bus::{Bus, ConsumerOptions, TaskResult};
use taskbus_taskmaster::clock::SystemClock;
use taskbus_taskmaster::flow::{
    graph, journal, Engine, FlowOptions, FlowService, RunInfo, RunOutcome, WorkflowSet,
};
use tokio_util::sync::CancellationToken;

const WIDTH: usize = 100;
const LAYERS: usize = 100;

fn big_workflow() -> String {
    let mut s = String::with_capacity(2_000_000);
    s.push_str("[[phase]]\nname = \"p0_0\"\ntask = \"work\"\nrule = { manual = true }\ntemplate = \"{meta:run}/{meta:phase}\"\n");
    for k in 1..WIDTH {
        let _ = write!(
            s,
            "[[phase]]\nname = \"p0_{k}\"\ntask = \"work\"\ndepends_on = \"p0_0\"\ntemplate = \"{{meta:phase}}\"\n"
        );
    }
    for l in 1..LAYERS {
        for k in 0..WIDTH {
            let (a, b) = (k, (k + 1) % WIDTH);
            let _ = write!(
                s,
                "[[phase]]\nname = \"p{l}_{k}\"\ntask = \"work\"\ndepends_on = [\"p{p}_{a}\", \"p{p}_{b}\"]\ntemplate = \"{{meta:phase}} after {{meta:p{p}_{a}.phase}}\"\n",
                p = l - 1
            );
        }
    }
    s
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_phases_load_validate_and_run_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("big.toml");
    let text = big_workflow();
    std::fs::write(&wf, &text).unwrap();

    let t = Instant::now();
    let set = WorkflowSet::load(&wf).unwrap();
    let load = t.elapsed();
    let rss_loaded = rss_kib("VmRSS:");
    let w = set.get("big.toml").unwrap().clone();
    assert_eq!(w.phases().len(), WIDTH * LAYERS);
    let t = Instant::now();
    let tree = graph::tree(&w);
    let dot = graph::dot(&w);
    let draw = t.elapsed();
    assert_eq!(
        dot.matches(" -> ").count(),
        (WIDTH - 1) + (LAYERS - 1) * WIDTH * 2
    );
    assert!(tree.lines().count() >= WIDTH * LAYERS);

    let url = format!("mem:flow-scale-{}", uuid::Uuid::new_v4().simple());
    let bus = Bus::connect(&url).await.unwrap();
    let ran: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let worker = {
        let (bus, ran) = (bus.clone(), ran.clone());
        tokio::spawn(async move {
            let options = ConsumerOptions::group("workers").max_in_flight(512);
            let mut sub = bus.subscribe_with("work", options).await.unwrap();
            while let Ok(Some(r)) = sub.next().await {
                let phase = r.task.meta.get("phase").unwrap().to_owned();
                *ran.lock().unwrap().entry(phase).or_default() += 1;
                let mut done = r.task.clone();
                done.start();
                done.end(TaskResult::Complete, "ok");
                bus.send("done", &done).await.unwrap();
                r.ack().await.unwrap();
            }
        })
    };
    let mut options = FlowOptions::new(dir.path().join("state"));
    options.reload_every = None;
    let service = FlowService::new(bus.clone(), set, Arc::new(SystemClock), options).unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(service.run(stop.clone()));

    let t = Instant::now();
    let scheduled = "2024-01-02T00:00:00Z".parse().unwrap();
    let info = RunInfo {
        run: "big-run",
        scheduled,
    };
    let root = w
        .build_task(0, &info, scheduled, &w.template_meta(0, &info, &[]))
        .unwrap();
    bus.send("work", &root).await.unwrap();
    while ran.lock().unwrap().len() < WIDTH * LAYERS {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the run did not complete in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
    worker.abort();

    let counts = ran.lock().unwrap().clone();
    assert_eq!(counts.len(), WIDTH * LAYERS);
    assert!(counts.values().all(|n| *n == 1), "every phase once");

    let t = Instant::now();
    let paths = journal::all_runs(&dir.path().join("state")).unwrap();
    assert_eq!(paths.len(), 1);
    let file = journal::read_run(&paths[0]).unwrap();
    let mut engine = Engine::new([w.clone()], None);
    let (key, problems) = engine.restore(&file.records).unwrap();
    assert!(problems.is_empty());
    let restore = t.elapsed();
    assert_eq!(engine.run(&key).unwrap().outcome(), RunOutcome::Completed);
    let journal_bytes = std::fs::metadata(&paths[0]).unwrap().len();

    println!(
        "10,000 phases: file {} KiB, load+validate {load:?}, tree+dot {draw:?}, run {run_time:?} \
         ({} journal records, {} KiB), journal replay {restore:?}; RSS of the test process after load {} KiB, \
         peak {} KiB",
        text.len() / 1024,
        file.records.len(),
        journal_bytes / 1024,
        rss_loaded.map_or_else(|| "?".to_owned(), |k| k.to_string()),
        rss_kib("VmHWM:").map_or_else(|| "?".to_owned(), |k| k.to_string()),
    );
}
