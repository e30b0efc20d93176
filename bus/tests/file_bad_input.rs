//! The `file://` bus facing bad input: malformed and truncated lines, a topic file deleted under a
//! consumer, a directory it cannot write, bad names and URLs. Each gets a clear error or a dead
//! letter, and no other task is lost.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use taskbus_bus::{Bus, BusError, ConsumerOptions, DeadLetter, Subscription, Task};

const ROLE: &str = "FILE_TEST_ROLE";

fn url(dir: &Path, query: &str) -> String {
    format!("file://{}?{query}", dir.display())
}

fn line(task: &Task) -> String {
    format!("{}\n", task.to_json())
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the topic file")
        .write_all(bytes)
        .expect("append");
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives tasks until the finite subscription ends, acking each; returns their ids.
async fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(r) = within("the next task", sub.next()).await.expect("next") {
        ids.push(r.task.id.clone());
        r.ack().await.expect("ack");
    }
    ids
}

async fn finite(bus: &Bus, topic: &str, group: &str) -> Subscription {
    bus.subscribe_with(topic, ConsumerOptions::group(group).finite(true))
        .await
        .expect("subscribe")
}

fn dead_letters(dir: &Path) -> Vec<DeadLetter> {
    std::fs::read_to_string(dir.join("deadletter.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| DeadLetter::from_json(l.as_bytes()).expect("a dead letter"))
        .collect()
}

#[tokio::test]
async fn a_malformed_line_is_dead_lettered_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Task::new("t", "a"), Task::new("t", "b"));
    let content = format!(
        "{}this is not json\n{{\"type\":\"t\",\"created\":\"yesterday\"}}\n{}",
        line(&a),
        line(&b)
    );
    append(&dir.path().join("mixed.jsonl"), content.as_bytes());
    let bus = Bus::connect(&url(dir.path(), "")).await.unwrap();
    let mut sub = finite(&bus, "mixed", "g").await;
    assert_eq!(drain(&mut sub).await, vec![a.id.clone(), b.id.clone()]);
    let letters = dead_letters(dir.path());
    let payloads: Vec<_> = letters.iter().map(|l| l.payload.as_str()).collect();
    assert_eq!(
        payloads,
        vec![
            "this is not json",
            "{\"type\":\"t\",\"created\":\"yesterday\"}"
        ]
    );
    assert!(letters
        .iter()
        .all(|l| l.topic == "mixed" && l.group == "g" && !l.reason.is_empty()));
    assert!(
        letters[1].reason.contains("created"),
        "the reason names the field: {}",
        letters[1].reason
    );
    // Acked: a second look by the same group finds nothing.
    let mut again = finite(&bus, "mixed", "g").await;
    assert!(drain(&mut again).await.is_empty());
}

/// A line a producer is still writing is not read as a message: it is delivered once complete.
#[tokio::test]
async fn a_line_being_written_is_not_read_until_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing.jsonl");
    let (first, second) = (Task::new("t", "first"), Task::new("t", "second"));
    let second_line = line(&second);
    let (head, rest) = second_line.split_at(second_line.len() / 2);
    append(&path, format!("{}{head}", line(&first)).as_bytes());
    let bus = Bus::connect(&url(dir.path(), "partial_wait=30s"))
        .await
        .unwrap();
    let mut sub = bus.subscribe("growing", "g").await.unwrap();
    let got = within("the first task", sub.next()).await.unwrap().unwrap();
    assert_eq!(got.task.id, first.id);
    got.ack().await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(600), sub.next()).await;
    assert!(early.is_err(), "half a line was delivered: {early:?}");
    append(&path, rest.as_bytes());
    let got = within("the completed task", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.task.id, second.id);
    got.ack().await.unwrap();
    assert!(dead_letters(dir.path()).is_empty());
}

/// A last line left without its newline by a producer that died does not block the topic: after
/// `partial_wait` it is delivered as it is (here: dead-lettered), and lines sent later arrive whole.
#[tokio::test]
async fn a_truncated_last_line_does_not_block_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.jsonl");
    let first = Task::new("t", "first");
    append(
        &path,
        format!("{}{{\"type\":\"t\",\"info\":\"cut o", line(&first)).as_bytes(),
    );
    let bus = Bus::connect(&url(dir.path(), "partial_wait=200ms"))
        .await
        .unwrap();
    let mut sub = finite(&bus, "cut", "g").await;
    assert_eq!(drain(&mut sub).await, vec![first.id.clone()]);
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].payload, "{\"type\":\"t\",\"info\":\"cut o");

    let later = Task::new("t", "later");
    bus.send("cut", &later).await.unwrap();
    let content = std::fs::read_to_string(&path).unwrap();
    assert!(
        content.ends_with(&format!("cut o\n{}", line(&later))),
        "{content:?}"
    );
    let mut sub = finite(&bus, "cut", "g").await;
    assert_eq!(drain(&mut sub).await, vec![later.id.clone()]);
    // Another group reads the file from the start and sees the fragment as the line it now is.
    let mut other = finite(&bus, "cut", "other").await;
    assert_eq!(drain(&mut other).await, vec![first.id, later.id]);
    assert_eq!(dead_letters(dir.path()).len(), 2);
}

/// A producer appending after a fragment nobody has read yet ends the fragment first, so its own
/// line is not glued to it.
#[tokio::test]
async fn a_producer_after_a_fragment_keeps_its_line_whole() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("frag.jsonl"), b"{\"type\":\"t\",\"inf");
    let bus = Bus::connect(&url(dir.path(), "partial_wait=0s"))
        .await
        .unwrap();
    let task = Task::new("t", "whole");
    bus.send("frag", &task).await.unwrap();
    let mut sub = finite(&bus, "frag", "g").await;
    assert_eq!(drain(&mut sub).await, vec![task.id]);
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload, "{\"type\":\"t\",\"inf");
}

/// A file written by hand without a final newline: its last task is delivered, not lost.
#[tokio::test]
async fn a_last_task_without_newline_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Task::new("t", "a"), Task::new("t", "b"));
    append(
        &dir.path().join("hand.jsonl"),
        format!("{}\r\n\n{}", a.to_json(), b.to_json()).as_bytes(),
    );
    let bus = Bus::connect(&url(dir.path(), "partial_wait=100ms"))
        .await
        .unwrap();
    let mut sub = finite(&bus, "hand", "g").await;
    assert_eq!(drain(&mut sub).await, vec![a.id, b.id]);
    assert!(dead_letters(dir.path()).is_empty());
}

/// The topic file is deleted under a following consumer: the consumer keeps running, and tasks sent
/// afterwards (by this process and by another connection) reach it.
#[tokio::test]
async fn a_topic_file_deleted_under_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::connect(&url(dir.path(), "poll=5ms")).await.unwrap();
    let other = Bus::connect(&url(dir.path(), "")).await.unwrap();
    let mut sub = bus.subscribe("gone", "g").await.unwrap();
    let before = Task::new("t", "before");
    bus.send("gone", &before).await.unwrap();
    let got = within("the task before", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.task.id, before.id);
    got.ack().await.unwrap();

    std::fs::remove_file(dir.path().join("gone.jsonl")).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(
        quiet.is_err(),
        "a deleted file delivered something: {quiet:?}"
    );
    let after: Vec<_> = (0..3)
        .map(|i| Task::new("t", format!("after {i}")))
        .collect();
    bus.send("gone", &after[0]).await.unwrap();
    other.send("gone", &after[1]).await.unwrap();
    bus.send("gone", &after[2]).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let got = within("a task sent after the delete", sub.next())
            .await
            .unwrap()
            .unwrap();
        ids.push(got.task.id.clone());
        got.ack().await.unwrap();
    }
    ids.sort();
    let mut want: Vec<_> = after.iter().map(|t| t.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    let content = std::fs::read_to_string(dir.path().join("gone.jsonl")).unwrap();
    assert_eq!(content.lines().count(), 3, "{content}");
}

/// A directory the process may not write: a clear error at connect that names the path and the
/// fix. Root may write anywhere, so as root the check runs in a child process as user `nobody`.
#[test]
fn a_directory_without_write_permission() {
    if std::env::var(ROLE).as_deref() == Ok("readonly") {
        let dir = std::env::var("DIR").expect("DIR");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(expect_readonly_errors(Path::new(&dir)));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !is_root {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(expect_readonly_errors(&ro));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "a_directory_without_write_permission",
            "--exact",
            "--nocapture",
        ])
        .env(ROLE, "readonly")
        .env("DIR", &ro)
        .output()
        .expect("setpriv (util-linux) runs the check as user nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the check as nobody failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the check did not run:\n{stdout}"
    );
}

async fn expect_readonly_errors(ro: &Path) {
    for target in [ro.to_owned(), ro.join("sub")] {
        let err = Bus::connect(&format!("file://{}", target.display()))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BusError::Io { .. }), "{text}");
        assert!(
            text.contains(&ro.display().to_string()),
            "the error names the path: {text}"
        );
        assert!(text.contains("ermission denied"), "{text}");
        assert!(
            text.contains("writable directory"),
            "the error says what to do: {text}"
        );
    }
}

#[tokio::test]
async fn bad_names_and_urls_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::connect(&url(dir.path(), "")).await.unwrap();
    let task = Task::new("t", "x");
    for bad in ["", ".hidden", "a/b", "../up"] {
        let err = bus.send(bad, &task).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        let err = bus.subscribe(bad, "g").await.err().expect("an error");
        assert!(
            matches!(err, BusError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = bus.subscribe("t", "").await.err().expect("an error");
    assert!(err.to_string().contains("empty"), "{err}");
    // Raw messages that cannot be one line.
    for bad in [&b"two\nlines"[..], b"", b"  "] {
        let err = bus
            .send_raw("t", bad.to_vec())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("topic \"t\""), "{err}");
    }
    // The bus still works.
    bus.send("t", &task).await.unwrap();
    let mut sub = finite(&bus, "t", "g").await;
    assert_eq!(drain(&mut sub).await, vec![task.id]);

    let err = Bus::connect("file://").await.unwrap_err().to_string();
    assert!(err.contains("file://./data"), "{err}");
    let err = Bus::connect(&url(dir.path(), "leese=1s"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean lease"), "{err}");
    let err = Bus::connect(&url(dir.path(), "lease=soon"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("30s"), "{err}");
    let file = dir.path().join("t.jsonl");
    let err = Bus::connect(&format!("file://{}", file.display()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
    let err = Bus::connect("stdio:/x").await.unwrap_err().to_string();
    assert!(err.contains("stdio:"), "{err}");
}

/// The URL forms create the directory where they say.
#[tokio::test]
async fn url_forms_create_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("abs/nested");
    let bus = Bus::connect(&format!("file://{}", abs.display()))
        .await
        .unwrap();
    bus.send("t", &Task::new("t", "x")).await.unwrap();
    assert!(abs.join("t.jsonl").is_file());
    // Relative forms resolve against the working directory, which a test must not change; they
    // are checked in the unit tests of the URL parser.
}

/// `fsync=true`: sends, acks and nacks go through the disk-flushing path and still work.
#[tokio::test]
async fn fsync_mode_works() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::connect(&url(dir.path(), "fsync=true&compact_at=1024"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..60).map(|i| Task::new("t", format!("{i}"))).collect();
    for t in &tasks {
        bus.send("sync", t).await.unwrap();
    }
    let mut sub = finite(&bus, "sync", "g").await;
    let first = within("a task", sub.next()).await.unwrap().unwrap();
    first.nack(None).await.unwrap();
    let ids = drain(&mut sub).await;
    assert_eq!(ids.len(), 60);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        60,
        "each task once after the nack"
    );
}
