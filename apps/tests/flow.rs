//! `taskbus flow` as a process on the file bus, with `taskbus exec` workers as real processes: a
//! diamond workflow whose flow app is SIGKILLed twice in the middle of a run and restarted, every
//! phase running exactly once; then check, graph, status and bad files through the binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_taskbus");

struct Setup {
    dir: tempfile::TempDir,
    id: String,
    url: String,
    children: Vec<Child>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let url = format!("file://{}", dir.path().join("bus").display());
        Setup {
            dir,
            id,
            url,
            children: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The diamond a -> (b, c) -> d; every phase's task type is unique to this test.
    fn diamond(&self) -> PathBuf {
        let id = &self.id;
        let text = format!(
            r#"
[[phase]]
name = "a"
task = "a-{id}"
rule = {{ manual = true }}
template = "?day={{yyyy}}-{{mm}}-{{dd}}"

[[phase]]
name = "b"
task = "b-{id}"
depends_on = "a"

[[phase]]
name = "c"
task = "c-{id}"
depends_on = "a"

[[phase]]
name = "d"
task = "d-{id}"
depends_on = ["b", "c"]
template = "{{meta:run}}"
"#
        );
        let path = self.path("diamond.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn taskbus(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--bus").arg(&self.url).args(args);
        cmd
    }

    fn flow_args(&self, workflow: &Path) -> Vec<String> {
        vec![
            "flow".into(),
            "--workflow".into(),
            workflow.display().to_string(),
            "--state".into(),
            self.path("state").display().to_string(),
        ]
    }

    fn spawn(&mut self, mut cmd: Command, log: &str) -> u32 {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path(log))
            .unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn start_flow(&mut self, workflow: &Path) -> u32 {
        let mut cmd = self.taskbus(&[]);
        cmd.args(self.flow_args(workflow)).args([
            "--done-topic",
            &format!("done-{}", self.id),
            "--failed-topic",
            &format!("failed-{}", self.id),
        ]);
        self.spawn(cmd, "flow.log")
    }

    /// A `taskbus exec` worker for `phase` that appends "PHASE RUN" to ran.txt, then takes `secs`.
    fn start_worker(&mut self, phase: &str, secs: f32) {
        let ran = self.path("ran.txt");
        let script = format!(
            "echo {{meta:phase}} {{meta:run}} >> {}; sleep {secs}",
            ran.display()
        );
        let mut cmd = self.taskbus(&[
            "exec",
            "--type",
            &format!("{phase}-{}", self.id),
            "--done-topic",
            &format!("done-{}", self.id),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        cmd.env_remove("TASKBUS_CONFIG");
        self.spawn(cmd, &format!("worker-{phase}.log"));
    }

    fn kill(&mut self, pid: u32) {
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        child.kill().unwrap(); // SIGKILL: no shutdown code runs
        child.wait().unwrap();
    }

    fn ran(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("ran.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn done_lines(&self) -> usize {
        let done = self.path("bus").join(format!("done-{}.jsonl", self.id));
        std::fs::read_to_string(done).map_or(0, |t| t.lines().count())
    }

    fn run_cmd(&self, args: &[&str]) -> Output {
        self.taskbus(args).output().unwrap()
    }

    fn status_json(&self, workflow: &Path, run: &str) -> serde_json::Value {
        let mut args = self.flow_args(workflow);
        args.extend(["status".into(), run.into(), "--json".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_cmd(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_diamond_with_real_workers_survives_the_flow_app_killed_twice_each_phase_running_once() {
    let mut s = Setup::new();
    let workflow = s.diamond();
    for phase in ["a", "b", "c", "d"] {
        s.start_worker(phase, 1.5);
    }
    let flow = s.start_flow(&workflow);

    let mut args = s.flow_args(&workflow);
    args.extend([
        "start".into(),
        "a".into(),
        "--at".into(),
        "2024-01-02".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run_cmd(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let run = stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    assert!(
        stdout.contains("scheduled 2024-01-02T00:00:00Z"),
        "{stdout}"
    );

    // Kill 1: while a runs, before its done task exists.
    wait_for("a to start", 20, || s.ran().len() == 1);
    s.kill(flow);
    wait_for("a's done task", 20, || s.done_lines() == 1);
    let flow = s.start_flow(&workflow);

    // Kill 2: while b and c run (the app sent both, and recorded it or not).
    wait_for("b and c to start", 30, || s.ran().len() == 3);
    s.kill(flow);
    wait_for("b's and c's done tasks", 20, || s.done_lines() == 3);
    let flow = s.start_flow(&workflow);

    wait_for("the run to complete", 30, || {
        s.status_json(&workflow, &run)["state"] == "completed"
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut ran = s.ran();
    ran.sort();
    let expected: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|p| format!("{p} {run}"))
        .collect();
    assert_eq!(ran, expected, "every phase exactly once for the run");

    let status = s.status_json(&workflow, &run);
    let phases = status["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4);
    for p in phases {
        assert_eq!(p["status"], "completed", "{p}");
        assert!(p["started"].is_string() && p["ended"].is_string(), "{p}");
    }
    assert_eq!(status["scheduled"], "2024-01-02T00:00:00Z");
    s.kill(flow);
    let log = std::fs::read_to_string(s.path("flow.log")).unwrap();
    assert!(log.contains("run completed"), "{log}");
}

#[test]
fn check_graph_and_status_through_the_binary() {
    let s = Setup::new();
    let workflow = s.diamond();
    let flow = |extra: &[&str]| {
        let mut args = s.flow_args(&workflow);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.run_cmd(&args)
    };
    let out = flow(&["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("diamond.toml: 4 phases"), "{stdout}");
    assert!(
        stdout.contains("d [d-") && stdout.contains("after b + c"),
        "{stdout}"
    );

    let out = flow(&["graph"]);
    let (tree, _) = text(&out);
    assert!(tree.contains("└─ a  (a-"), "{tree}");
    assert!(tree.contains("d (see above)"), "{tree}");
    let out = flow(&["graph", "--dot"]);
    let (dot, _) = text(&out);
    assert!(
        dot.contains("\"b\" -> \"d\";") && dot.contains("\"c\" -> \"d\";"),
        "{dot}"
    );

    let out = flow(&["status"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.starts_with("no runs"), "{stdout}");
    let out = flow(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn invalid_workflows_are_refused_with_file_line_phase_and_reason() {
    let s = Setup::new();
    let bad = s.path("bad.toml");
    std::fs::write(
        &bad,
        "[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n\n[[phase]]\ntask = \"b\"\ndepends_on = [\"a\", \"c\"]\n\n[[phase]]\ntask = \"c\"\ndepends_on = \"b\"\ntemplate = \"{yyyy}{bogus}\"\n",
    )
    .unwrap();
    let args = s.flow_args(&bad);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("check");
    let out = s.run_cmd(&args);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml:12:12: phase \"c\".template"),
        "{stderr}"
    );
    assert!(stderr.contains("{bogus}"), "{stderr}");

    std::fs::write(
        &bad,
        "[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n\n[[phase]]\ntask = \"b\"\ndepends_on = [\"a\", \"c\"]\n\n[[phase]]\ntask = \"c\"\ndepends_on = \"b\"\n",
    )
    .unwrap();
    let out = s.run_cmd(&args);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("cycle: b -> c -> b") || stderr.contains("cycle: c -> b -> c"),
        "{stderr}"
    );

    let out = s.run_cmd(&["flow", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--workflow"));

    // A flowlord file loads as it is.
    let flowlord = s.path("flowlord.toml");
    std::fs::write(
        &flowlord,
        "[[Phase]]\ntask = \"topic_name\"\ndependsOn = \"\"\nrule = \"cron=0 * * * *&offset=-4h&job=t2\"\nretry = 3\ntemplate = \"?date={yyyy}-{mm}-{dd}\"\n\n[[Phase]]\ntask = \"task1\"\ndependsOn = \"topic_name:t2\"\nrule = \"retry_delay=30s&require={meta:file}\"\nretry = 3\ntemplate = \"{meta:file}?hour={yyyy}-{mm}-{dd}T{hh}\"\n",
    )
    .unwrap();
    let args = s.flow_args(&flowlord);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("check");
    let out = s.run_cmd(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("topic_name:t2 [topic_name:t2] cron 0 * * * *"),
        "{stdout}"
    );
    assert!(
        stdout.contains("task1 [task1] after topic_name:t2"),
        "{stdout}"
    );
}
