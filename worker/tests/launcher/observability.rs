//! Stats, the status port (`/healthz`, `/stats`, `/metrics`) and tracing spans.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskbus_bus::Task;
use taskbus_worker::{from_fn, from_info, Launcher, LauncherOptions, Outcome, State, TaskContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{on_every_bus, tasks, within};

/// GETs `path` from `addr` and returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the status port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

on_every_bus! {
    async fn the_status_port_serves_health_stats_and_metrics(fx) {
        let inputs = tasks("observed", 3);
        fx.send("observed", &inputs).await;
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let worker = from_fn(move |task: Task, ctx: TaskContext| {
            let gate = gate.clone();
            async move {
                if task.info == "0" {
                    ctx.progress("25%");
                    gate.notified().await;
                    return Outcome::warn("slow one");
                }
                Outcome::complete("quick")
            }
        });
        let options = LauncherOptions::default().max_in_progress(3).handle_signals(false);
        let mut launcher = Launcher::new(fx.bus.clone(), "observed", options);
        let addr = launcher.bind_http("127.0.0.1:0".parse().expect("an address")).await.expect("bound");
        let (stats, shutdown) = (launcher.stats(), launcher.shutdown_handle());
        let run = tokio::spawn(launcher.run(worker));
        within(30, async {
            while stats.snapshot().done.complete < 2 || stats.snapshot().running < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;

        let (status, body) = get(addr, "/healthz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok running\n"));

        let (status, body) = get(addr, "/stats").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON stats");
        assert_eq!(json["consumed"], 3);
        assert_eq!(json["running"], 1);
        assert_eq!(json["done"]["complete"], 2);
        assert_eq!(json["running_tasks"][0]["id"], inputs[0].id.as_str());
        assert_eq!(json["running_tasks"][0]["type"], "observed");
        assert_eq!(json["running_tasks"][0]["progress"], "25%");
        assert_eq!(json["task_time"]["count"], 2);

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("# TYPE taskbus_worker_tasks_done_total counter\n"), "{body}");
        assert!(body.contains("taskbus_worker_tasks_done_total{result=\"complete\"} 2\n"), "{body}");
        assert!(body.contains("taskbus_worker_tasks_consumed_total 3\n"), "{body}");
        assert!(body.contains("taskbus_worker_tasks_running 1\n"), "{body}");
        assert!(body.contains("taskbus_worker_task_duration_seconds_count 2\n"), "{body}");
        assert!(body.contains("taskbus_worker_task_duration_seconds{quantile=\"0.99\"} "), "{body}");

        let (status, _) = get(addr, "/nope").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        shutdown.request();
        within(30, async {
            while stats.state() != State::Draining {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let (_, body) = get(addr, "/healthz").await;
        assert_eq!(body, "ok draining\n");
        release.notify_one();
        let report = within(30, run).await.expect("joined").expect("ran");
        assert_eq!(stats.state(), State::Stopped);
        assert_eq!((report.stats.done.complete, report.stats.done.warn), (2, 1));
        assert_eq!(report.stats.running, 0);
        assert!(report.stats.running_tasks.is_empty());
        assert!(report.stats.task_time.max_ms >= report.stats.task_time.p99_ms);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 3);
    }
}

/// A `Write` that appends to a shared buffer, for capturing logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn log_lines_inside_a_task_carry_its_id_and_type() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let task = Task::new("traced", "x");
    let worker = from_info(|info: String| async move {
        tracing::info!("working on {info}");
        Outcome::error("traced failure")
    });
    let done = runtime
        .block_on(taskbus_worker::testing::run(worker, [task.clone()]))
        .expect("ran");
    assert_eq!(done.len(), 1);
    let logs =
        String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("UTF-8 logs");
    let line = logs
        .lines()
        .find(|l| l.contains("working on x"))
        .unwrap_or_else(|| panic!("no worker log line in:\n{logs}"));
    assert!(
        line.contains(&format!("task{{id={} type=traced", task.id)),
        "{line}"
    );
}
