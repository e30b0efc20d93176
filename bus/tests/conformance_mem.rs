//! The conformance suite on the `mem:` bus, the reference backend.

use std::time::Duration;

use async_trait::async_trait;
use taskbus_bus::conformance::Harness;
use taskbus_bus::{Bus, Capabilities};

/// A `mem:` broker of its own per test, so tests run in parallel without sharing state.
struct MemHarness {
    url: String,
}

impl MemHarness {
    fn new() -> Self {
        MemHarness {
            url: format!("mem:conformance-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

#[async_trait]
impl Harness for MemHarness {
    async fn connect(&self) -> Bus {
        Bus::connect(&self.url).await.expect("mem: always connects")
    }

    fn capabilities(&self) -> Capabilities {
        // Everything but surviving the process.
        let mut caps = Capabilities::ALL;
        caps.persistent = false;
        caps
    }

    fn lease(&self) -> Duration {
        // mem hands a dropped delivery back at once; this only paces in_progress_keeps_lease.
        Duration::from_millis(400)
    }
}

taskbus_bus::conformance_tests!(MemHarness::new());
