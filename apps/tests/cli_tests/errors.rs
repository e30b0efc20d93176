//! Bad input: one clear line on stderr and a non-zero exit code.

use crate::util::tb;

#[test]
fn unknown_subcommands_and_flags_are_one_line_with_exit_code_2() {
    let line = tb(&["frobnicate"]).one_error(2);
    assert!(
        line.contains("'frobnicate'") && line.contains("taskbus --help"),
        "{line}"
    );
    let line = tb(&["send", "--tpye", "x"]).one_error(2);
    assert!(
        line.contains("'--tpye'") && line.contains("taskbus send --help"),
        "{line}"
    );
    let line = tb(&["tail", "--count", "many"]).one_error(2);
    assert!(line.contains("many"), "{line}");
    let line = tb(&["--log-format", "xml", "tail"]).one_error(2);
    assert!(line.contains("xml"), "{line}");
}

#[test]
fn bad_bus_urls_say_how_to_write_them() {
    let line = tb(&["--bus", "wat://x", "send", "--type", "a"]).one_error(2);
    assert!(
        line.contains("unknown scheme") && line.contains("nats://HOST:PORT"),
        "{line}"
    );
    let line = tb(&["--bus", "no-scheme", "tail"]).one_error(2);
    assert!(line.contains("no scheme"), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?max_deliverie=3", dir.path().display());
    let line = tb(&["--bus", &url, "tail"]).one_error(2);
    assert!(line.contains("did you mean max_deliveries"), "{line}");
    let line = tb(&[
        "--bus",
        "mem:",
        "send",
        "--type",
        "a",
        "--topic",
        "bad/topic",
    ])
    .one_error(2);
    assert!(line.contains("bad/topic"), "{line}");
}

#[test]
fn an_unreachable_broker_is_one_clear_line() {
    let out = tb(&["--bus", "nats://127.0.0.1:1", "send", "--type", "a"]);
    assert!(out.stdout.is_empty(), "{out:?}");
    if cfg!(feature = "nats") {
        let line = out.one_error(1);
        assert!(
            line.contains("cannot connect to nats://127.0.0.1:1"),
            "{line}"
        );
        assert!(line.contains("nats-server"), "says what to do: {line}");
    } else {
        let line = out.one_error(2);
        assert!(line.contains("--features nats"), "{line}");
    }
}

#[test]
fn help_teaches_with_examples() {
    let top = tb(&["--help"]).ok();
    assert!(
        top.stdout.contains("Examples:") && top.stdout.contains("Exit codes"),
        "{top:?}"
    );
    for sub in ["send", "tail", "exec", "config"] {
        let out = tb(&[sub, "--help"]).ok();
        assert!(
            out.stdout.contains("Examples:"),
            "taskbus {sub} --help: {out:?}"
        );
        assert!(
            out.stdout.contains("--bus"),
            "taskbus {sub} --help: {out:?}"
        );
    }
    let short = tb(&["-h"]).ok();
    assert!(short.stdout.contains("send") && !short.stdout.contains("Examples:"));
    assert!(tb(&["--version"]).ok().stdout.starts_with("taskbus "));
    let bare = tb(&[]);
    assert_eq!(
        bare.code,
        Some(2),
        "no subcommand: usage on stderr, exit 2: {bare:?}"
    );
}
