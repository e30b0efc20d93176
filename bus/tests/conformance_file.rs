//! The conformance suite on the `file://` bus, with every case, each in a directory of its own.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_trait::async_trait;
use taskbus_bus::conformance::Harness;
use taskbus_bus::{Bus, Capabilities};

/// A fresh bus directory per test; every connection of the harness is a separate `FileBackend`,
/// sharing nothing but the files, as separate processes would.
struct FileHarness {
    dir: tempfile::TempDir,
}

/// The lease the harness configures: short, so crash cases finish quickly.
const LEASE: Duration = Duration::from_millis(1500);

impl FileHarness {
    fn new() -> Self {
        FileHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }
}

#[async_trait]
impl Harness for FileHarness {
    async fn connect(&self) -> Bus {
        let url = format!(
            "file://{}?lease={}ms",
            self.dir.path().display(),
            LEASE.as_millis()
        );
        Bus::connect(&url)
            .await
            .expect("the file bus connects to a temporary directory")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn lease(&self) -> Duration {
        LEASE
    }

    /// The file bus has no broker process: its state is the files, which stay. So the "restart"
    /// changes nothing, and the case checks that sends and receipts carry on across it. What a
    /// restart means here — processes dying mid-stream — is tested with real processes in
    /// `file_processes.rs`.
    async fn restart_broker(&self) -> Result<(), String> {
        Ok(())
    }
}

taskbus_bus::conformance_tests!(FileHarness::new());

mod restart {
    use super::FileHarness;
    taskbus_bus::conformance_tests!(FileHarness::new(); only broker_restart);
}

#[tokio::test]
async fn capabilities_are_what_the_harness_declares() {
    let h = FileHarness::new();
    assert_eq!(h.connect().await.capabilities(), h.capabilities());
}
