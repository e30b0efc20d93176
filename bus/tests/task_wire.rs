//! The task wire format: real pcelvng/task lines read and written back, and decode errors that name the
//! field and the bad value.

use chrono::{TimeZone, Utc};
use taskbus_bus::{Task, TaskResult};

/// Reads `line` and writes it back.
fn round_trip(line: &str) -> String {
    let task =
        Task::from_json(line.as_bytes()).unwrap_or_else(|e| panic!("cannot read {line}: {e}"));
    task.to_json()
}

/// The reason `line` does not decode.
fn decode_error(line: &[u8]) -> String {
    match Task::from_json(line) {
        Ok(task) => panic!("{} decoded as {task:?}", String::from_utf8_lossy(line)),
        Err(e) => e.to_string(),
    }
}

// Lines as pcelvng/task writes them: type, job, info, created, id, meta, result, msg, started, ended.
const TODO: &str = r#"{"type":"hello","info":"s3://bucket/path?day=2024-01-02","created":"2024-01-02T15:04:05Z","id":"0b7c3e4e-2bd8-4d09-a1c2-5b7a1d6e9f10"}"#;
const DONE: &str = r#"{"type":"hello","job":"world","info":"s3://bucket/path?day=2024-01-02&hour=15","created":"2024-01-02T15:04:05Z","id":"0b7c3e4e-2bd8-4d09-a1c2-5b7a1d6e9f10","meta":"workflow=f.toml&job=x","result":"complete","msg":"done","started":"2024-01-02T15:04:06Z","ended":"2024-01-02T15:04:07Z"}"#;

#[test]
fn pcelvng_lines_round_trip_byte_for_byte() {
    for line in [TODO, DONE] {
        assert_eq!(round_trip(line), line);
    }
    for result in ["complete", "error", "warn", "alert"] {
        let line = format!(r#"{{"type":"t","result":"{result}","msg":"m"}}"#);
        assert_eq!(round_trip(&line), line);
    }
}

#[test]
fn fields_are_read_in_any_order_and_written_in_pcelvng_order() {
    let shuffled = r#"{"ended":"2024-01-02T15:04:07Z","msg":"done","id":"0b7c3e4e-2bd8-4d09-a1c2-5b7a1d6e9f10","result":"complete","meta":"workflow=f.toml&job=x","started":"2024-01-02T15:04:06Z","info":"s3://bucket/path?day=2024-01-02&hour=15","job":"world","created":"2024-01-02T15:04:05Z","type":"hello"}"#;
    assert_eq!(round_trip(shuffled), DONE);
}

#[test]
fn every_field_is_read() {
    let task = Task::from_json(DONE.as_bytes()).expect("a done task");
    assert_eq!(task.kind, "hello");
    assert_eq!(task.job, "world");
    assert_eq!(task.info, "s3://bucket/path?day=2024-01-02&hour=15");
    assert_eq!(
        task.created,
        Some(Utc.with_ymd_and_hms(2024, 1, 2, 15, 4, 5).unwrap())
    );
    assert_eq!(task.id, "0b7c3e4e-2bd8-4d09-a1c2-5b7a1d6e9f10");
    assert_eq!(task.meta.get("workflow"), Some("f.toml"));
    assert_eq!(task.meta.get("job"), Some("x"));
    assert_eq!(task.result, Some(TaskResult::Complete));
    assert_eq!(task.msg, "done");
    assert_eq!(task.duration(), Some(chrono::Duration::seconds(1)));
    assert_eq!(task.kind_job(), "hello:world");
    assert!(task.extra.is_empty());
}

#[test]
fn empty_and_null_fields_are_left_out() {
    let line = r#"{"type":"x","job":"","info":"","created":"","id":"","meta":"","result":"","msg":"","started":"","ended":""}"#;
    assert_eq!(round_trip(line), r#"{"type":"x"}"#);
    let nulls = r#"{"type":"x","job":null,"info":null,"created":null,"id":null,"meta":null,"result":null,"msg":null,"started":null,"ended":null}"#;
    assert_eq!(round_trip(nulls), r#"{"type":"x"}"#);
}

#[test]
fn zero_times_mean_not_set() {
    // Go writes its zero time.Time as 0001-01-01T00:00:00Z; pcelvng writes "" for an unset time.
    let line = r#"{"type":"x","created":"0001-01-01T00:00:00Z","started":"","ended":"0001-01-01T00:00:00Z"}"#;
    let task = Task::from_json(line.as_bytes()).expect("zero times");
    assert_eq!((task.created, task.started, task.ended), (None, None, None));
    assert_eq!(task.to_json(), r#"{"type":"x"}"#);
}

#[test]
fn fractional_seconds_and_offsets_are_read_and_written_in_utc() {
    let line = r#"{"type":"x","created":"2024-01-02T15:04:05.5+02:00","started":"2024-01-02T15:04:05.123456789-07:00","ended":"2024-01-02T23:59:59.999Z"}"#;
    let task = Task::from_json(line.as_bytes()).expect("times with fractions and offsets");
    assert_eq!(
        task.to_json(),
        r#"{"type":"x","created":"2024-01-02T13:04:05.500Z","started":"2024-01-02T22:04:05.123456789Z","ended":"2024-01-02T23:59:59.999Z"}"#
    );
    // Written back once, the line is stable.
    assert_eq!(round_trip(&task.to_json()), task.to_json());
}

#[test]
fn html_characters_are_not_escaped() {
    let line = r#"{"type":"x","info":"s3://b/p?a=1&b=<2>&c=\"3\"","msg":"<b>done</b> & dusted"}"#;
    let out = round_trip(line);
    assert_eq!(out, line);
    assert!(
        !out.contains("\\u0026") && !out.contains("\\u003c"),
        "{out}"
    );
    // Go's default encoder escapes them; such a line is read and written back plainly.
    let go = r#"{"type":"x","info":"a\u0026b\u003cc\u003e"}"#;
    assert_eq!(round_trip(go), r#"{"type":"x","info":"a&b<c>"}"#);
}

#[test]
fn unicode_and_control_characters_survive() {
    let mut task = Task::with_id("x", "naïve → 東京 🚀\ttab\nnewline", "id-1");
    task.msg = "quote \" backslash \\ bell \u{7}".to_owned();
    let line = task.to_json();
    assert!(!line.contains('\n'), "one line: {line}");
    let back = Task::from_json(line.as_bytes()).expect("unicode");
    assert_eq!(back, task);
}

#[test]
fn meta_is_written_back_as_it_was_read() {
    let line = r#"{"type":"x","meta":"b=2&a=1&path=s3%3A%2F%2Fb%2Fp%3Fx%3D1&sp=a+b&empty=&flag"}"#;
    assert_eq!(round_trip(line), line);
    let task = Task::from_json(line.as_bytes()).expect("meta");
    assert_eq!(task.meta.get("path"), Some("s3://b/p?x=1"));
    assert_eq!(task.meta.get("sp"), Some("a b"));
    assert_eq!(task.meta.get("empty"), Some(""));
    assert_eq!(task.meta.get("flag"), Some(""));
    let mut changed = task.clone();
    changed.meta.set("attempt", 2);
    let back = Task::from_json(changed.to_json().as_bytes()).expect("changed meta");
    assert_eq!(back.meta.get("attempt"), Some("2"));
    assert_eq!(back.meta.get("path"), Some("s3://b/p?x=1"));
    assert_eq!(back.attempt(), 2);
}

#[test]
fn unknown_fields_are_kept_in_their_order_and_written_back() {
    let line = r#"{"type":"x","info":"i","id":"1","zeta":{"nested":[1,2.5,null,"s"]},"alpha":17,"flag":true,"nothing":null,"text":"a&b"}"#;
    assert_eq!(round_trip(line), line);
    let task = Task::from_json(line.as_bytes()).expect("unknown fields");
    let keys: Vec<&str> = task.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["zeta", "alpha", "flag", "nothing", "text"]);
    // A worker that finishes the task keeps them.
    let mut done = task.clone();
    done.start();
    done.end(TaskResult::Warn, "partial");
    let out = done.to_json();
    assert!(out.ends_with(r#","zeta":{"nested":[1,2.5,null,"s"]},"alpha":17,"flag":true,"nothing":null,"text":"a&b"}"#), "{out}");
    assert!(out.contains(r#""result":"warn","msg":"partial""#), "{out}");
}

#[test]
fn unknown_fields_between_known_ones_come_after_them() {
    // A newer producer may put a field anywhere; it is kept, after the fields this version knows.
    let line = r#"{"type":"x","priority":5,"info":"i","trace":"abc"}"#;
    assert_eq!(
        round_trip(line),
        r#"{"type":"x","info":"i","priority":5,"trace":"abc"}"#
    );
}

#[test]
fn lines_far_over_64_kib_round_trip() {
    // pcelvng's io bus reads lines with a 64 KiB bufio.Scanner limit; taskbus has none.
    let info = format!("s3://bucket/{}?day=2024-01-02", "x/".repeat(150_000));
    let line = format!(
        r#"{{"type":"big","info":"{info}","created":"2024-01-02T15:04:05Z","id":"big-1","meta":"blob={}","extra":"{}"}}"#,
        "y".repeat(100_000),
        "z".repeat(70_000)
    );
    assert!(line.len() > 5 * 64 * 1024);
    let out = round_trip(&line);
    assert_eq!(out.len(), line.len());
    assert!(
        out == line,
        "a {} byte line changed on the way back",
        line.len()
    );
}

#[test]
fn trailing_newline_and_surrounding_whitespace_are_fine() {
    assert_eq!(round_trip(&format!("{TODO}\n")), TODO);
    assert_eq!(round_trip(&format!("  {TODO}\r\n")), TODO);
}

#[test]
fn a_new_task_round_trips_through_start_and_end() {
    let mut task = Task::new("hello", "s3://b/p?day=2024-01-02")
        .job("j")
        .meta("run", "r1");
    let line = task.to_json();
    assert!(
        line.starts_with(
            r#"{"type":"hello","job":"j","info":"s3://b/p?day=2024-01-02","created":""#
        ),
        "{line}"
    );
    assert_eq!(Task::from_json(line.as_bytes()).expect("new task"), task);
    task.start();
    task.end(TaskResult::Error, "boom: <disk> & <net>");
    let done = task.to_json();
    assert_eq!(Task::from_json(done.as_bytes()).expect("done task"), task);
    let order: Vec<usize> = [
        "\"type\"",
        "\"job\"",
        "\"info\"",
        "\"created\"",
        "\"id\"",
        "\"meta\"",
        "\"result\"",
        "\"msg\"",
        "\"started\"",
        "\"ended\"",
    ]
    .iter()
    .map(|k| {
        done.find(k)
            .unwrap_or_else(|| panic!("{k} missing from {done}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "fields out of order: {done}"
    );
}

#[test]
fn a_bad_time_names_the_field_and_the_value() {
    for (field, value) in [
        ("created", "2024-13-45T00:00:00Z"),
        ("started", "yesterday"),
        ("ended", "2024-01-02 15:04:05"),
    ] {
        let line = format!(r#"{{"type":"x","{field}":"{value}"}}"#);
        let err = decode_error(line.as_bytes());
        assert!(err.contains(&format!("`{field}`")), "{err}");
        assert!(err.contains(value), "{err}");
        assert!(
            err.contains("2024-01-02T15:04:05Z"),
            "says how to write it: {err}"
        );
    }
}

#[test]
fn an_unknown_result_names_the_value_and_the_choices() {
    let err = decode_error(br#"{"type":"x","result":"done"}"#);
    assert!(err.contains("`result`"), "{err}");
    assert!(err.contains("\"done\""), "{err}");
    assert!(err.contains("complete, error, warn, alert"), "{err}");
}

#[test]
fn a_missing_or_empty_type_is_an_error() {
    for line in [
        &br#"{"info":"i"}"#[..],
        br#"{"type":"","info":"i"}"#,
        br#"{"type":null}"#,
        b"{}",
    ] {
        let err = decode_error(line);
        assert!(err.contains("`type`"), "{err}");
    }
}

#[test]
fn non_json_is_an_error_quoting_the_input() {
    for line in [
        &b"hello world"[..],
        b"{\"type\":\"x\"",
        b"",
        b"\xff\xfe",
        b"[1,2]",
        b"\"just a string\"",
        b"{\"type\":\"x\"} trailing",
    ] {
        let err = decode_error(line);
        assert!(err.starts_with("invalid task: "), "{err}");
    }
    let err = decode_error(b"hello world");
    assert!(err.contains("(in hello world)"), "quotes the input: {err}");
}

#[test]
fn a_field_of_the_wrong_type_names_the_field_and_the_value() {
    for (field, value) in [
        ("type", "7"),
        ("info", "{\"a\":1}"),
        ("id", "12345"),
        ("meta", "[\"a\"]"),
        ("msg", "true"),
        ("created", "1704207845"),
    ] {
        let line = format!(r#"{{"type":"x","{field}":{value}}}"#).replacen(
            r#""type":"x","type":"#,
            r#""type":"#,
            1,
        );
        let err = decode_error(line.as_bytes());
        assert!(err.contains(&format!("`{field}`")), "{line}: {err}");
        assert!(err.contains(value), "{line}: {err}");
    }
}

#[test]
fn errors_on_huge_lines_quote_only_the_start() {
    let huge = "9".repeat(200_000);
    for line in [
        format!(r#"{{"type":"x","created":"{huge}"}}"#),
        format!(r#"{{"type":"x","result":"{huge}"}}"#),
        format!(r#"{{"type":"x","info":[{huge}]}}"#),
    ] {
        let err = decode_error(line.as_bytes());
        assert!(
            err.len() < 1_000,
            "an error of {} bytes: {}…",
            err.len(),
            &err[..300]
        );
        assert!(err.contains(&format!("({} bytes)", line.len())), "{err}");
        assert!(err.contains("99999"), "shows the start of the value: {err}");
    }
}
