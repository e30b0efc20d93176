//! `taskbus tail`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::util::{taskbus, tb, tb_in, FileBus};

fn send_three(bus: &FileBus) -> Vec<String> {
    let input = "{\"type\":\"hello\",\"info\":\"a\"}\n{\"type\":\"hello\",\"info\":\"b\",\"result\":\"error\",\"msg\":\"boom\"}\n{\"type\":\"hello\",\"info\":\"c\"}\n";
    let out = tb_in(&["--bus", &bus.url, "send"], input).ok();
    out.lines().into_iter().map(str::to_owned).collect()
}

#[test]
fn human_lines_show_each_task_compactly_without_colour_when_piped() {
    let bus = FileBus::new();
    let ids = send_three(&bus);
    let out = tb(&["--bus", &bus.url, "tail", "hello"]).ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert!(
        lines[0].contains("hello") && lines[0].contains(&ids[0][..8]),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("error") && lines[1].ends_with("b  boom"),
        "{}",
        lines[1]
    );
    assert!(!out.stdout.contains('\x1b'), "no colour in a pipe");
    let coloured = tb(&["--bus", &bus.url, "tail", "hello", "--color", "always"]).ok();
    assert!(coloured.stdout.contains("\x1b[31merror"), "{coloured:?}");
}

#[test]
fn json_lines_are_the_tasks_and_count_stops_early() {
    let bus = FileBus::new();
    let ids = send_three(&bus);
    let out = tb(&["--bus", &bus.url, "tail", "hello", "--json", "--count", "2"]).ok();
    let got: Vec<String> = out.tasks().into_iter().map(|t| t.id).collect();
    assert_eq!(got, ids[..2]);
}

#[test]
fn an_observer_takes_nothing_and_a_member_takes_its_share() {
    let bus = FileBus::new();
    send_three(&bus);
    for _ in 0..2 {
        assert_eq!(bus.tasks("hello").len(), 3, "each observer sees everything");
    }
    let member = tb(&[
        "--bus", &bus.url, "tail", "hello", "--group", "workers", "--count", "2",
    ])
    .ok();
    assert_eq!(member.lines().len(), 2);
    let rest = tb(&["--bus", &bus.url, "tail", "hello", "--group", "workers"]).ok();
    assert_eq!(
        rest.lines().len(),
        1,
        "the group acked what it printed: {rest:?}"
    );
}

#[test]
fn follow_waits_for_new_tasks() {
    let bus = FileBus::new();
    let mut child = taskbus()
        .args([
            "--bus", &bus.url, "tail", "late", "--follow", "--count", "2", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tb(&["--bus", &bus.url, "send", "--type", "late", "--info", "one"]).ok();
    assert!(lines.next().unwrap().unwrap().contains("\"info\":\"one\""));
    tb(&["--bus", &bus.url, "send", "--type", "late", "--info", "two"]).ok();
    assert!(lines.next().unwrap().unwrap().contains("\"info\":\"two\""));
    assert!(
        child.wait().unwrap().success(),
        "tail ends after --count tasks"
    );
}

#[test]
fn dead_letters_are_shown_with_their_reason() {
    let bus = FileBus::new();
    send_three(&bus);
    let topic = bus.file("hello.jsonl");
    let mut text = std::fs::read_to_string(&topic).unwrap();
    text.push_str("{broken\n");
    std::fs::write(&topic, text).unwrap();
    // A member of a group moves what is not a task to the dead-letter topic, like every consumer.
    let member = tb(&["--bus", &bus.url, "tail", "hello", "--group", "g"]).ok();
    assert_eq!(member.lines().len(), 3);
    let out = tb(&["--bus", &bus.url, "tail", "deadletter"]).ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].contains("dead letter from hello/g"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("{broken"), "{}", lines[0]);
}

#[test]
fn an_empty_topic_ends_at_once() {
    let bus = FileBus::new();
    let out = tb(&["--bus", &bus.url, "tail", "nothing-here"]).ok();
    assert!(out.stdout.is_empty());
}
