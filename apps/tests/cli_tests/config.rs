//! `taskbus config` and `--config` files.

use crate::util::{run, taskbus, tb, tb_in, FileBus};

#[test]
fn the_sample_is_a_valid_config_file() {
    let out = tb(&["config"]).ok();
    assert!(out.stdout.contains("[exec]") && out.stdout.contains("max_in_progress"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskbus.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = tb(&["config", "--check", file.to_str().unwrap()]).ok();
    assert!(check.stdout.starts_with("ok"), "{check:?}");
}

#[test]
fn a_config_file_sets_the_bus_and_options_and_flags_and_env_win() {
    let bus = FileBus::new();
    let other = FileBus::new();
    let file = bus.file("taskbus.toml");
    let text = format!(
        "bus = \"{}\"\n\n[exec]\ntype = \"hello\"\ncommand = [\"echo\", \"did {{info}}\"]\nfinite = true\n",
        bus.url
    );
    std::fs::write(&file, text).unwrap();
    let config = file.to_str().unwrap();
    tb(&[
        "send", "--config", config, "--type", "hello", "--info", "one",
    ])
    .ok();
    assert_eq!(bus.tasks("hello").len(), 1, "the bus comes from the file");
    tb(&[
        "--bus", &other.url, "send", "--config", config, "--type", "hello",
    ])
    .ok();
    assert_eq!(other.tasks("hello").len(), 1, "--bus wins over the file");

    // The environment wins over the file: this worker reads an empty topic and ends.
    let mut env_type = taskbus();
    env_type
        .env("TASKBUS_EXEC_TYPE", "nothing")
        .args(["exec", "--config", config]);
    run(&mut env_type, None).ok();
    assert!(bus.tasks("done").is_empty());

    tb(&["exec", "--config", config]).ok();
    let done = bus.tasks("done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].msg, "did one");
}

#[test]
fn a_typo_in_a_config_file_is_an_error_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[exec]\ntype = \"x\"\nmax_inprogress = 4\n").unwrap();
    let path = file.to_str().unwrap();
    for args in [
        vec!["exec", "--config", path, "--", "true"],
        vec!["send", "--config", path, "--type", "x"],
        vec!["tail", "--config", path],
        vec!["config", "--check", path],
    ] {
        let line = tb(&args).one_error(2);
        assert!(line.contains("max_inprogress"), "{line}");
        assert!(line.contains("line 3"), "{line}");
        assert!(line.contains("bad.toml"), "{line}");
    }
    let line = tb_in(&["send", "--config", "/no/such/file.toml"], "").one_error(2);
    assert!(line.contains("/no/such/file.toml"), "{line}");
}
