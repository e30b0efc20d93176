//! The conformance suite: one set of cases that every backend runs against its real broker.
//!
//! A backend's test file gives a [`Harness`] and expands [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! use taskbus_bus::conformance::Harness;
//! taskbus_bus::conformance_tests!(MyHarness::new());                       // every case but the restart
//! taskbus_bus::conformance_tests!(MyHarness::new(); only broker_restart);  // in a test binary of its own
//! ```
//!
//! Each case makes topics and groups with unique names, so cases run in parallel and a persistent
//! broker's old state never gets in the way. Every case checks the exact set of task ids received
//! with a [`Ledger`]: nothing missing, and duplicates counted and reported (and failed where the
//! contract rules them out). A case that needs a capability the backend does not declare prints
//! `SKIPPED <case>: needs <capability>` and passes. Every wait is bounded by a limit derived from
//! [`Harness::lease`], so a broken backend fails with a message instead of hanging. The list of
//! cases and what each needs is in [`cases`].
//!
//! A harness for the in-process bus, as `bus/tests/conformance_mem.rs` has it:
//!
//! ```
//! use std::time::Duration;
//! use taskbus_bus::conformance::Harness;
//! use taskbus_bus::{Bus, Capabilities};
//!
//! struct MemHarness(String);
//!
//! #[async_trait::async_trait]
//! impl Harness for MemHarness {
//!     async fn connect(&self) -> Bus {
//!         Bus::connect(&self.0).await.expect("mem: always connects")
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         let mut caps = Capabilities::ALL;
//!         caps.persistent = false;
//!         caps
//!     }
//!     fn lease(&self) -> Duration {
//!         Duration::from_millis(400)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let harness = MemHarness("mem:doc-conformance".to_owned());
//! taskbus_bus::conformance::cases::nack_redelivers(&harness).await;
//! # });
//! ```

use std::time::Duration;

use async_trait::async_trait;

use crate::{Bus, Capabilities};

pub mod cases;
mod ledger;
mod support;

pub use ledger::{Ledger, LedgerReport};

/// What a backend's tests give the suite.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A new connection to the broker under test, as another process would open it. Every connection
    /// of one harness reaches the same broker (for `mem:`, the same broker name).
    async fn connect(&self) -> Bus;

    /// What the backend declares it can do; the suite skips exactly the rest.
    fn capabilities(&self) -> Capabilities;

    /// How long a crashed consumer's deliveries stay leased before they come back (the ack wait the
    /// harness configured). The suite waits a few times this, no longer.
    fn lease(&self) -> Duration;

    /// How long a case keeps listening once everything it expects has arrived, to catch duplicates and
    /// messages on the wrong topic. A quarter of a second unless the harness says otherwise.
    fn settle(&self) -> Duration {
        Duration::from_millis(250)
    }

    /// Stops the broker and starts it again. `Err` says why it cannot, and the restart case is
    /// skipped with that reason.
    async fn restart_broker(&self) -> Result<(), String> {
        Err("this harness cannot restart its broker".to_owned())
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `taskbus_bus::conformance::cases::<case>(&harness)`.
///
/// - `conformance_tests!(harness)` — every case except `broker_restart`;
/// - `conformance_tests!(harness; only case, case…)` — just those (run `broker_restart` in a test
///   binary of its own, so no other case runs while the broker is down).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!($harness; only
            publish_before_subscribe,
            sender_close_loses_nothing,
            ordered_delivery,
            concurrent_publishers_and_subscribers,
            many_topics,
            topic_isolation,
            nack_redelivers,
            nack_with_delay,
            each_group_gets_all,
            group_members_share,
            close_and_reopen_loses_nothing,
            crash_without_close_redelivers,
            in_progress_keeps_lease,
            redelivery_limit_dead_letters,
            undecodable_dead_letters,
            large_payloads,
            finite_consumer_ends
        );
    };
    ($harness:expr; only $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::cases::$case(&harness).await;
            }
        )+
    };
}
