//! What the NATS tests share: the broker URL, unique names, a private nats-server fixture, and the
//! conformance harness.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use taskbus_bus::conformance::Harness;
use taskbus_bus::{Bus, Capabilities};

/// The shared broker of the tests: `TASKBUS_TEST_NATS_URL`, else the local nats-server that
/// scripts/brokers/nats.sh starts.
pub fn base_url() -> String {
    std::env::var("TASKBUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The ack wait (lease) the tests configure.
pub const LEASE: Duration = Duration::from_secs(2);

/// Minutes since the Unix epoch.
fn minutes_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

/// The stream prefix of this test process: `tbtest-<minutes since the epoch>-`, so a sweep can tell
/// old test streams from those of tests running now.
pub fn run_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("tbtest-{}-", minutes_now()))
}

/// `base` with the test options: a short lease, and streams and subjects of their own
/// (`tbtest-<minute>-…`, `tbtest.<minute>.…`) whose messages expire after an hour.
pub fn test_url(base: &str, extra: &str) -> String {
    let defaults = [
        ("ack_wait", format!("{}ms", LEASE.as_millis())),
        ("stream_prefix", run_prefix().to_owned()),
        (
            "subject_prefix",
            run_prefix().trim_end_matches('-').replace('-', "."),
        ),
        ("max_age", "1h".to_owned()),
    ];
    let given = |key: &str| extra.split('&').any(|kv| kv.split('=').next() == Some(key));
    let mut options: Vec<String> = defaults
        .iter()
        .filter(|(k, _)| !given(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !extra.is_empty() {
        options.push(extra.to_owned());
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", options.join("&"))
}

/// Connects to `url`, failing the test (never skipping it) with the bus's own message.
pub async fn connect(url: &str) -> Bus {
    match Bus::connect(url).await {
        Ok(bus) => bus,
        Err(e) => panic!(
            "cannot reach the NATS test broker: {e}\n(set TASKBUS_TEST_NATS_URL to use another)"
        ),
    }
}

/// A name no other test or run uses.
pub fn unique(label: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000_000)
            .unwrap_or(0),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain async-nats client of the server `url` names (its first server, with its credentials).
pub async fn raw_client(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let base = url.split('?').next().unwrap_or(url);
    let first = match base.split_once(',') {
        Some((first, _)) => first,
        None => base,
    };
    async_nats::connect(first).await
}

/// Deletes the test streams (`tbtest-<minute>-…`) of runs that started more than two hours ago on
/// `url`, once per process, so the shared broker's store does not grow run after run.
pub async fn sweep_old_test_streams(url: &str) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    if SWEPT.set(()).is_err() {
        return;
    }
    let Ok(client) = raw_client(url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .filter(|n| std::future::ready(n.starts_with("tbtest-")))
        .collect()
        .await;
    let cutoff = minutes_now().saturating_sub(120);
    for name in names {
        let minute = name.split('-').nth(1).and_then(|m| m.parse::<u64>().ok());
        if minute.is_some_and(|m| m < cutoff) {
            let _ = js.delete_stream(&name).await;
        }
    }
}

/// The conformance harness on a nats-server: the shared one, or a private one it can restart.
pub struct NatsHarness {
    url: String,
    private: Option<NatsServer>,
}

impl NatsHarness {
    /// On the shared broker.
    pub fn shared() -> NatsHarness {
        NatsHarness {
            url: test_url(&base_url(), ""),
            private: None,
        }
    }

    /// On a nats-server of its own (JetStream, file storage in a temporary directory), which
    /// `restart_broker` restarts.
    pub fn private() -> NatsHarness {
        let server = NatsServer::start(true);
        NatsHarness {
            url: test_url(&server.url(), ""),
            private: Some(server),
        }
    }
}

#[async_trait]
impl Harness for NatsHarness {
    async fn connect(&self) -> Bus {
        if self.private.is_none() {
            sweep_old_test_streams(&self.url).await;
        }
        connect(&self.url).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn lease(&self) -> Duration {
        LEASE
    }

    async fn restart_broker(&self) -> Result<(), String> {
        let Some(server) = &self.private else {
            return Err("this harness shares its nats-server with other tests".to_owned());
        };
        server.restart();
        Ok(())
    }
}

/// A nats-server of a test's own on a free port, with its store in a temporary directory. Killed
/// when dropped.
pub struct NatsServer {
    child: Mutex<Option<Child>>,
    port: u16,
    jetstream: bool,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts nats-server (with JetStream when `jetstream`) and waits until it listens.
    pub fn start(jetstream: bool) -> NatsServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temporary directory for nats-server");
        let server = NatsServer {
            child: Mutex::new(None),
            port,
            jetstream,
            dir,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Stops the server the way a service manager does (SIGTERM, waiting for it to exit) and
    /// starts it again on the same port and store.
    pub fn restart(&self) {
        self.terminate();
        self.spawn();
    }

    /// Kills the server as a crash would (SIGKILL: nothing flushed on the way out) and starts it
    /// again on the same port and store.
    pub fn crash_and_restart(&self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn(&self) {
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-l")
            .arg(self.log());
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path().join("store"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}); install it with `apt-get install nats-server`"
                )
            });
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "nats-server did not listen on 127.0.0.1:{} within 10s; see {}",
                self.port,
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TASKBUS_NATS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/bin",
    ]) {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("nats-server")
}
