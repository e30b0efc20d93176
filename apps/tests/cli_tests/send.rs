//! `taskbus send`.

use crate::util::{is_uuid, tb, tb_in, FileBus};

#[test]
fn a_task_from_flags_is_sent_and_its_id_printed() {
    let bus = FileBus::new();
    let out = tb(&[
        "--bus",
        &bus.url,
        "send",
        "--type",
        "hello",
        "--info",
        "s3://b/a?x=1&y=<2>",
        "--job",
        "j",
        "--meta",
        "day=2024-01-02",
        "--meta",
        "k=v",
    ])
    .ok();
    let ids = out.lines();
    assert_eq!(ids.len(), 1, "{out:?}");
    assert!(is_uuid(ids[0]), "{out:?}");
    let tasks = bus.tasks("hello");
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(
        (t.id.as_str(), t.kind.as_str(), t.job.as_str()),
        (ids[0], "hello", "j")
    );
    assert_eq!(t.info, "s3://b/a?x=1&y=<2>");
    assert_eq!(t.meta.get("day"), Some("2024-01-02"));
    assert_eq!(t.meta.get("k"), Some("v"));
    assert!(t.created.is_some());
}

#[test]
fn repeat_sends_distinct_tasks_and_topic_overrides_the_type() {
    let bus = FileBus::new();
    let out = tb(&[
        "--bus", &bus.url, "send", "--type", "hello", "--repeat", "3", "--topic", "other",
    ])
    .ok();
    let mut ids = out.lines();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(bus.tasks("other").len(), 3);
    assert!(bus.tasks("hello").is_empty());
}

#[test]
fn ndjson_on_stdin_goes_to_each_type_and_gets_ids_where_missing() {
    let bus = FileBus::new();
    let input = concat!(
        r#"{"type":"a","info":"1","id":"id-1","meta":"x=1"}"#,
        "\n",
        "\n",
        r#"{"type":"b","info":"2"}"#,
        "\r\n",
        r#"{"type":"a","info":"3","future_field":{"kept":true}}"#,
        "\n",
    );
    let out = tb_in(&["--bus", &bus.url, "send", "--meta", "src=cli"], input).ok();
    let ids = out.lines();
    assert_eq!(ids.len(), 3, "{out:?}");
    assert_eq!(ids[0], "id-1");
    assert!(is_uuid(ids[1]) && is_uuid(ids[2]));
    let a = bus.tasks("a");
    assert_eq!(
        a.iter().map(|t| t.info.as_str()).collect::<Vec<_>>(),
        ["1", "3"]
    );
    assert_eq!(a[0].meta.to_string(), "x=1&src=cli");
    assert_eq!(a[1].extra.get("future_field").unwrap()["kept"], true);
    assert_eq!(a[1].id, ids[2]);
    let b = bus.tasks("b");
    assert_eq!((b.len(), b[0].id.as_str()), (1, ids[1]));
}

#[test]
fn a_bad_line_in_a_file_sends_nothing_and_names_the_line() {
    let bus = FileBus::new();
    let file = bus.file("tasks.jsonl");
    std::fs::write(
        &file,
        "{\"type\":\"a\"}\n{\"type\":\"a\"}\n{not json\n{\"type\":\"a\"}\n",
    )
    .unwrap();
    let out = tb(&["--bus", &bus.url, "send", file.to_str().unwrap()]);
    let line = out.one_error(1);
    assert!(line.contains("line 3 of"), "{line}");
    assert!(line.contains("nothing was sent"), "{line}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        bus.tasks("a").is_empty(),
        "nothing may be published half-way"
    );
}

#[test]
fn a_bad_line_on_stdin_says_what_was_already_sent() {
    let bus = FileBus::new();
    let input = "{\"type\":\"a\",\"id\":\"one\"}\n{\"type\":\"a\",\"id\":\"two\"}\nnot json\n{\"type\":\"a\",\"id\":\"three\"}\n";
    let out = tb_in(&["--bus", &bus.url, "send"], input);
    let line = out.one_error(1);
    assert!(line.contains("line 3 of stdin is not a task"), "{line}");
    assert!(line.contains("the 2 task(s) before it were sent"), "{line}");
    assert_eq!(out.lines(), ["one", "two"]);
    let sent: Vec<String> = bus.tasks("a").into_iter().map(|t| t.id).collect();
    assert_eq!(sent, ["one", "two"]);
}

#[test]
fn a_line_without_a_type_is_not_a_task() {
    let bus = FileBus::new();
    let out = tb_in(
        &["--bus", &bus.url, "send", "--topic", "t"],
        "{\"info\":\"x\"}\n",
    );
    let line = out.one_error(1);
    assert!(line.contains("line 1 of stdin is not a task"), "{line}");
    assert!(line.contains("type"), "{line}");
    assert!(bus.tasks("t").is_empty());
}

#[test]
fn a_type_that_cannot_be_a_topic_is_named_before_anything_is_sent() {
    let bus = FileBus::new();
    let input = "{\"type\":\"ok\"}\n{\"type\":\"no/slash\"}\n";
    let file = bus.file("tasks.jsonl");
    std::fs::write(&file, input).unwrap();
    let line = tb(&["--bus", &bus.url, "send", file.to_str().unwrap()]).one_error(1);
    assert!(
        line.contains("line 2") && line.contains("no/slash"),
        "{line}"
    );
    assert!(line.contains("nothing was sent"), "{line}");
    assert!(bus.tasks("ok").is_empty());
}

#[test]
fn on_the_stdio_bus_tasks_go_to_stdout_and_ids_to_stderr() {
    let out = tb(&[
        "--bus", "stdio:", "send", "--type", "hello", "--info", "world",
    ])
    .ok();
    let tasks = out.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].info, "world");
    assert!(out.stderr.contains(&tasks[0].id), "{out:?}");
}

#[test]
fn flags_for_a_task_and_a_file_do_not_mix() {
    let out = tb(&["send", "--type", "a", "tasks.jsonl"]);
    let line = out.one_error(2);
    assert!(line.contains("cannot be used with"), "{line}");
}
