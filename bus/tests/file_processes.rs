//! Real OS processes on one `file://` directory: producers append while consumers of one group share
//! the topic. The test binary runs itself again with `FILE_TEST_ROLE` set to play a producer or a
//! consumer.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use taskbus_bus::{Bus, ConsumerOptions, Task};

const ROLE: &str = "FILE_TEST_ROLE";

/// Runs the child role when this process was started as one; then exits.
fn play_role_if_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match role.as_str() {
        "produce" => runtime.block_on(produce()),
        "consume" => runtime.block_on(consume()),
        "produce-big" => runtime.block_on(produce_big()),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is set for a child process"))
}

fn env_n(key: &str) -> u64 {
    env(key).parse().expect("a number")
}

/// Sends COUNT tasks with ids PREFIX-0 … to TOPIC, pausing a little every 50 so the consumers run
/// while it appends.
async fn produce() {
    let bus = Bus::connect(&env("BUS")).await.expect("connect");
    let (topic, prefix) = (env("TOPIC"), env("PREFIX"));
    for i in 0..env_n("COUNT") {
        let task = Task::with_id("proc", format!("n={i}"), format!("{prefix}-{i}"));
        bus.send(&topic, &task).await.expect("send");
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

/// Consumes TOPIC in GROUP forever: for each task, appends its id to OUT, waits DELAY_MS, acks.
async fn consume() {
    let bus = Bus::connect(&env("BUS")).await.expect("connect");
    let options = ConsumerOptions::group(env("GROUP"))
        .max_in_flight(usize::try_from(env_n("MAX_IN_FLIGHT")).expect("small"));
    let mut sub = bus
        .subscribe_with(&env("TOPIC"), options)
        .await
        .expect("subscribe");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env("OUT"))
        .expect("output file");
    let delay = Duration::from_millis(env_n("DELAY_MS"));
    while let Some(received) = sub.next().await.expect("next") {
        out.write_all(format!("{}\n", received.task.id).as_bytes())
            .expect("write the output");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        received.ack().await.expect("ack");
    }
}

/// Sends 1 MiB tasks to TOPIC until killed, appending each id to SENT once `send` returned. The
/// lines are built by hand (no serializer), so a good part of the time goes into writing them and
/// a kill may cut one (the cut itself is tested deterministically in `file_bad_input.rs`).
async fn produce_big() {
    let bus = Bus::connect(&env("BUS")).await.expect("connect");
    let topic = env("TOPIC");
    let mut sent = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env("SENT"))
        .expect("the sent file");
    let filler = "x".repeat(1 << 20);
    for i in 0.. {
        let id = format!("big-{i}");
        let line = format!("{{\"type\":\"big\",\"id\":\"{id}\",\"info\":\"{filler}\"}}");
        bus.send_raw(&topic, line).await.expect("send");
        sent.write_all(format!("{id}\n").as_bytes())
            .expect("write the sent file");
    }
}

/// Starts this test binary again as `role`, running only `test`.
fn spawn(test: &str, role: &str, vars: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(std::process::Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start a child process")
}

/// Ids in each consumer's output, as `consumer -> ids in order`.
fn outputs(paths: &[PathBuf]) -> Vec<Vec<String>> {
    paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn distinct(outs: &[Vec<String>]) -> HashSet<String> {
    outs.iter().flatten().cloned().collect()
}

struct Run {
    dir: tempfile::TempDir,
    test: &'static str,
    consumers: Vec<Child>,
    outs: Vec<PathBuf>,
    producers: Vec<Child>,
    expected: HashSet<String>,
}

impl Run {
    /// Starts `consumers` consumer processes and `producers` producer processes of `per_producer`
    /// tasks each on one topic.
    fn start(
        test: &'static str,
        query: &str,
        consumers: usize,
        producers: usize,
        per_producer: u64,
        delay_ms: u64,
    ) -> Run {
        let dir = tempfile::tempdir().expect("a directory");
        let bus = format!("file://{}?{query}", dir.path().display());
        let common = |extra: Vec<(&'static str, String)>| {
            let mut vars = vec![("BUS", bus.clone()), ("TOPIC", "work".to_owned())];
            vars.extend(extra);
            vars
        };
        let mut outs = Vec::new();
        let consumers = (0..consumers)
            .map(|c| {
                let out = dir.path().join(format!("consumer-{c}.out"));
                outs.push(out.clone());
                spawn(
                    test,
                    "consume",
                    &common(vec![
                        ("GROUP", "workers".to_owned()),
                        ("OUT", out.display().to_string()),
                        ("DELAY_MS", delay_ms.to_string()),
                        ("MAX_IN_FLIGHT", "8".to_owned()),
                    ]),
                )
            })
            .collect();
        let mut expected = HashSet::new();
        let producers = (0..producers)
            .map(|p| {
                let prefix = format!("p{p}");
                expected.extend((0..per_producer).map(|i| format!("{prefix}-{i}")));
                spawn(
                    test,
                    "produce",
                    &common(vec![
                        ("PREFIX", prefix),
                        ("COUNT", per_producer.to_string()),
                    ]),
                )
            })
            .collect();
        Run {
            dir,
            test,
            consumers,
            outs,
            producers,
            expected,
        }
    }

    /// Waits until every expected id is in some consumer's output.
    fn wait_for_all(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            let seen = distinct(&outputs(&self.outs));
            if self.expected.is_subset(&seen) {
                return;
            }
            if start.elapsed() > limit {
                self.kill_consumers();
                let missing: Vec<_> = self.expected.difference(&seen).take(10).collect();
                panic!(
                    "{}: {} of {} tasks were never processed within {limit:?}, e.g. {missing:?} (dir {})",
                    self.test,
                    self.expected.difference(&seen).count(),
                    self.expected.len(),
                    self.dir.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_producers(&mut self) {
        for p in &mut self.producers {
            let status = p.wait().expect("wait for a producer");
            assert!(
                status.success(),
                "{}: a producer process failed: {status}",
                self.test
            );
        }
    }

    fn kill_consumers(&mut self) {
        for c in &mut self.consumers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every id with how many times it was processed, where more than once.
    fn duplicates(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::<String, usize>::new();
        for id in outputs(&self.outs).into_iter().flatten() {
            *counts.entry(id).or_default() += 1;
        }
        counts.retain(|_, n| *n > 1);
        counts
    }

    fn per_consumer(&self) -> Vec<usize> {
        outputs(&self.outs).iter().map(Vec::len).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill_consumers();
        for p in &mut self.producers {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn unexpected(run: &Run) -> Vec<String> {
    distinct(&outputs(&run.outs))
        .difference(&run.expected)
        .cloned()
        .collect()
}

/// Three consumer processes of one group share what two producer processes append: every task is
/// processed, and none twice. A small `compact_at` makes the group journal be compacted many times
/// while the processes run.
#[test]
fn processes_share_a_topic_without_duplicates() {
    play_role_if_child();
    let mut run = Run::start(
        "processes_share_a_topic_without_duplicates",
        "lease=60s&compact_at=65536",
        3,
        2,
        2000,
        0,
    );
    run.wait_for_producers();
    run.wait_for_all(Duration::from_secs(180));
    // Give a late duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    run.kill_consumers();
    let dups = run.duplicates();
    eprintln!(
        "processes_share_a_topic_without_duplicates: {} tasks, per consumer {:?}, {} duplicates",
        run.expected.len(),
        run.per_consumer(),
        dups.len()
    );
    assert!(
        unexpected(&run).is_empty(),
        "ids nobody sent: {:?}",
        unexpected(&run)
    );
    assert!(dups.is_empty(), "tasks processed more than once: {dups:?}");
    let shared = run.per_consumer().iter().filter(|n| **n > 0).count();
    assert!(
        shared >= 2,
        "the consumers did not share the topic: {:?}",
        run.per_consumer()
    );
    let journal = run.dir.path().join(".groups/work/workers/journal");
    let len = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
    assert!(
        len < 4 * 65536,
        "the journal was not compacted: {len} bytes"
    );
}

/// A consumer process killed with SIGKILL mid-stream loses nothing: the tasks it held come back to
/// the others after the lease. Duplicates are only tasks the killed one was working on.
#[test]
fn a_consumer_killed_mid_stream_loses_nothing() {
    play_role_if_child();
    let mut run = Run::start(
        "a_consumer_killed_mid_stream_loses_nothing",
        "lease=1s",
        3,
        2,
        1500,
        2,
    );
    let victim_out = run.outs[0].clone();
    let start = Instant::now();
    while line_count(&victim_out) < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first consumer processed nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run.consumers[0].kill().expect("SIGKILL the first consumer");
    let _ = run.consumers[0].wait();
    let processed_by_victim = line_count(&victim_out);
    run.wait_for_producers();
    run.wait_for_all(Duration::from_secs(180));
    std::thread::sleep(Duration::from_millis(500));
    run.kill_consumers();
    let dups = run.duplicates();
    let victim: HashSet<String> = outputs(&[victim_out]).remove(0).into_iter().collect();
    eprintln!(
        "a_consumer_killed_mid_stream_loses_nothing: {} tasks, killed after {processed_by_victim}, \
         per consumer {:?}, {} duplicates (in flight at the kill): {dups:?}",
        run.expected.len(),
        run.per_consumer(),
        dups.len()
    );
    assert!(
        unexpected(&run).is_empty(),
        "ids nobody sent: {:?}",
        unexpected(&run)
    );
    for id in dups.keys() {
        assert!(
            victim.contains(id),
            "{id} was processed twice, but not by the killed consumer"
        );
    }
    // The killed consumer worked on one task at a time and held at most 8.
    assert!(
        dups.len() <= 8,
        "more duplicates than the killed consumer could hold: {dups:?}"
    );
    assert!(
        dups.values().all(|n| *n == 2),
        "a task processed more than twice: {dups:?}"
    );
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// A producer process killed with SIGKILL while it writes large lines: every task it was told was
/// sent arrives, a line cut off mid-write (if the kill hit one) is dead-lettered instead of blocking
/// the topic, and tasks sent afterwards by another process are not glued to it.
#[test]
fn a_producer_killed_mid_write_loses_no_confirmed_task() {
    play_role_if_child();
    let dir = tempfile::tempdir().expect("a directory");
    let bus_url = format!("file://{}?partial_wait=100ms", dir.path().display());
    let sent_path = dir.path().join("sent.out");
    let mut producer = spawn(
        "a_producer_killed_mid_write_loses_no_confirmed_task",
        "produce-big",
        &[
            ("BUS", bus_url.clone()),
            ("TOPIC", "big".to_owned()),
            ("SENT", sent_path.display().to_string()),
        ],
    );
    let start = Instant::now();
    while line_count(&sent_path) < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the producer sent nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Land the kill at a varying point of the next send.
    std::thread::sleep(Duration::from_micros(
        u64::from(std::process::id() % 20) * 500,
    ));
    producer.kill().expect("SIGKILL the producer");
    let _ = producer.wait();
    let confirmed: HashSet<String> = outputs(&[sent_path]).remove(0).into_iter().collect();

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (received, letters, after) = runtime.block_on(async {
        let bus = Bus::connect(&bus_url).await.expect("connect");
        let after: Vec<_> = (0..3)
            .map(|i| Task::new("small", format!("after {i}")))
            .collect();
        for t in &after {
            bus.send("big", t).await.expect("send after the kill");
        }
        let mut sub = bus
            .subscribe_with("big", ConsumerOptions::group("g").finite(true))
            .await
            .expect("subscribe");
        let mut received = Vec::new();
        while let Some(r) = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("the topic is not blocked")
            .expect("next")
        {
            received.push(r.task.id.clone());
            r.ack().await.expect("ack");
        }
        let letters =
            std::fs::read_to_string(dir.path().join("deadletter.jsonl")).unwrap_or_default();
        (received, letters, after)
    });
    let got: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(
        got.len(),
        received.len(),
        "a task arrived twice: {received:?}"
    );
    let missing: Vec<_> = confirmed.difference(&got).collect();
    assert!(missing.is_empty(), "confirmed sends were lost: {missing:?}");
    for t in &after {
        assert!(
            got.contains(&t.id),
            "a task sent after the kill was lost or glued: {}",
            t.id
        );
    }
    // At most the one send in flight at the kill may have arrived without being confirmed.
    let unconfirmed = got.len() - confirmed.len() - after.len();
    assert!(
        unconfirmed <= 1,
        "{unconfirmed} tasks arrived that were never sent"
    );
    let letters: Vec<_> = letters.lines().collect();
    assert!(
        letters.len() <= 1,
        "more than one cut-off line: {}",
        letters.len()
    );
    for l in &letters {
        let letter = taskbus_bus::DeadLetter::from_json(l.as_bytes()).expect("a dead letter");
        assert!(
            letter.payload.starts_with("{\"type\":\"big\""),
            "{}",
            &letter.payload[..80]
        );
    }
    eprintln!(
        "a_producer_killed_mid_write_loses_no_confirmed_task: {} confirmed, {unconfirmed} sent \
         unconfirmed, {} cut-off line(s) dead-lettered",
        confirmed.len(),
        letters.len()
    );
}
