//! `taskbus exec`.

use taskbus_bus::TaskResult;

use crate::util::{tb, tb_in, FileBus};

#[test]
fn over_stdio_each_task_runs_the_command_and_its_done_task_goes_to_stdout() {
    let input = "{\"type\":\"hello\",\"info\":\"Ada\",\"id\":\"1\"}\n{\"type\":\"hello\",\"info\":\"\",\"id\":\"2\"}\n";
    let script =
        r#"test -n "$TASK_INFO" || { echo "no info for {id}" >&2; exit 4; }; echo "hello, {info}""#;
    let out = tb_in(
        &[
            "--bus", "stdio:", "exec", "--type", "hello", "--", "sh", "-c", script,
        ],
        input,
    )
    .ok();
    let done = out.tasks();
    assert_eq!(done.len(), 2, "{out:?}");
    let by_id = |id: &str| done.iter().find(|t| t.id == id).unwrap();
    let ada = by_id("1");
    assert_eq!(
        (ada.result, ada.msg.as_str()),
        (Some(TaskResult::Complete), "hello, Ada")
    );
    assert!(ada.started.is_some() && ada.ended.is_some());
    let empty = by_id("2");
    assert_eq!(empty.result, Some(TaskResult::Error));
    assert_eq!(empty.msg, "exit code 4; stderr: no info for 2");
    assert!(
        out.stderr.contains("[2] no info for 2"),
        "stderr is passed through: {out:?}"
    );
}

#[test]
fn on_a_file_bus_it_drains_the_topic_and_reads_the_task_json_on_stdin() {
    let bus = FileBus::new();
    tb(&[
        "--bus", &bus.url, "send", "--type", "sum", "--info", "x", "--repeat", "3",
    ])
    .ok();
    tb(&[
        "--bus", &bus.url, "send", "--type", "other", "--topic", "sum",
    ])
    .ok();
    // jq-free: the command echoes its stdin's id field through sed.
    let script = r#"sed -n 's/.*"id":"\([^"]*\)".*/got \1/p'"#;
    tb(&[
        "--bus",
        &bus.url,
        "exec",
        "--type",
        "sum",
        "--finite",
        "--max-in-progress",
        "2",
        "--done-topic",
        "finished",
        "--",
        "sh",
        "-c",
        script,
    ])
    .ok();
    let done = bus.tasks("finished");
    assert_eq!(done.len(), 4);
    let complete: Vec<_> = done.iter().filter(|t| t.kind == "sum").collect();
    assert_eq!(complete.len(), 3);
    for t in complete {
        assert_eq!(t.result, Some(TaskResult::Complete));
        assert_eq!(t.msg, format!("got {}", t.id));
    }
    let other = done.iter().find(|t| t.kind == "other").unwrap();
    assert!(other.msg.starts_with("rejected:"), "{}", other.msg);
}

#[test]
fn a_timeout_stops_the_command() {
    let bus = FileBus::new();
    tb(&["--bus", &bus.url, "send", "--type", "slow"]).ok();
    tb(&[
        "--bus",
        &bus.url,
        "exec",
        "--type",
        "slow",
        "--finite",
        "--timeout",
        "200ms",
        "--kill-grace",
        "200ms",
        "--",
        "sleep",
        "30",
    ])
    .ok();
    let done = bus.tasks("done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, Some(TaskResult::Error));
    assert!(done[0].msg.starts_with("timed out"), "{}", done[0].msg);
    assert!(done[0].msg.contains("SIGTERM"), "{}", done[0].msg);
}

#[test]
fn a_command_that_does_not_exist_is_an_error_at_start_up_and_takes_no_task() {
    let bus = FileBus::new();
    tb(&["--bus", &bus.url, "send", "--type", "resize"]).ok();
    let out = tb(&[
        "--bus",
        &bus.url,
        "exec",
        "--type",
        "resize",
        "--finite",
        "--",
        "./no-such-resize.sh",
        "{info}",
    ]);
    let line = out.one_error(2);
    assert!(line.contains("./no-such-resize.sh"), "{line}");
    let out = tb(&[
        "--bus",
        &bus.url,
        "exec",
        "--type",
        "resize",
        "--",
        "no-such-program-xyz",
    ]);
    let line = out.one_error(2);
    assert!(line.contains("no such program on PATH"), "{line}");
    assert!(bus.tasks("done").is_empty());
    let waiting = tb(&["--bus", &bus.url, "tail", "resize", "--group", "workers"]).ok();
    assert_eq!(
        waiting.lines().len(),
        1,
        "the task is still there for a real worker"
    );
}

#[test]
fn type_and_command_are_required_and_typos_in_placeholders_caught() {
    let line = tb(&["exec", "--", "true"]).one_error(2);
    assert!(line.contains("--type"), "{line}");
    let line = tb(&["exec", "--type", "x"]).one_error(2);
    assert!(line.contains("the command is missing"), "{line}");
    let line = tb(&["exec", "--type", "x", "--", "echo", "{inof}"]).one_error(2);
    assert!(line.contains("{inof}"), "{line}");
}

#[test]
fn sigterm_stops_the_commands_and_hands_their_tasks_back() {
    let bus = FileBus::new();
    tb(&["--bus", &bus.url, "send", "--type", "slow"]).ok();
    let pidfile = bus.file("child.pid");
    let mut exec = crate::util::taskbus()
        .args([
            "--bus",
            &bus.url,
            "exec",
            "--type",
            "slow",
            "--worker-kill-time",
            "300ms",
            "--kill-grace",
            "300ms",
            "--",
            "sh",
            "-c",
            r#"sleep 60 & echo $! > "$1"; wait"#,
            "sh",
        ])
        .arg(&pidfile)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
        assert!(waited < 600, "the command never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &exec.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = exec.wait().unwrap();
    assert!(
        status.success(),
        "exec drains and exits 0 on SIGTERM: {status:?}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    assert!(
        matches!(state, None | Some('Z')),
        "the command {child} outlived exec: {stat}"
    );
    assert!(
        bus.tasks("done").is_empty(),
        "a task cut off by a shutdown is not done"
    );
    let back = tb(&["--bus", &bus.url, "tail", "slow", "--group", "workers"]).ok();
    assert_eq!(
        back.lines().len(),
        1,
        "the task was handed back to be redone: {back:?}"
    );
}
