//! What one consumer holds: deliveries handed out and not yet settled, how long they stay, and
//! nacks still waiting out their delay. Shared by the consumer and the ackers of its deliveries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long after a delayed nack's delay a finite consumer still counts it as coming back: the
/// server redelivers it on its own timer, a little after the delay.
const DELAYED_NACK_MARGIN: Duration = Duration::from_millis(500);

/// Deliveries settled within this (on a moving average) let a consumer fetch ahead.
const FAST_HOLD: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub(super) struct Flow {
    held: AtomicUsize,
    delayed: Arc<AtomicUsize>,
    /// How long deliveries stay between hand-out and settling, in microseconds: a moving average
    /// over the last few, 0 until the first is settled.
    hold_us: AtomicU64,
    /// Woken whenever a delivery is settled.
    pub(super) freed: Notify,
}

impl Flow {
    /// Deliveries handed out and not yet settled.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// This consumer's nacks with a delay that have not come back yet.
    pub(super) fn delayed(&self) -> usize {
        self.delayed.load(Ordering::Acquire)
    }

    /// True when deliveries are settled quickly (under [`FAST_HOLD`] on average), so messages
    /// fetched ahead wait only briefly for a free slot.
    pub(super) fn is_fast(&self) -> bool {
        let us = self.hold_us.load(Ordering::Acquire);
        us > 0 && u128::from(us) < FAST_HOLD.as_micros()
    }

    /// A delivery was handed out.
    pub(super) fn take(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    /// A delivery handed out `held_for` ago was settled (acked, nacked or dropped).
    pub(super) fn release(&self, held_for: Duration) {
        // Never below zero, even if accounting were off.
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        let sample = u64::try_from(held_for.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .hold_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |avg| {
                Some(if avg == 0 {
                    sample
                } else {
                    avg - avg / 8 + sample / 8
                })
            });
        self.freed.notify_one();
    }

    /// A delivery was nacked with `delay`: it counts as coming back until a little after.
    pub(super) fn nacked_with_delay(&self, delay: Duration) {
        self.delayed.fetch_add(1, Ordering::AcqRel);
        let delayed = Arc::clone(&self.delayed);
        tokio::spawn(async move {
            tokio::time::sleep(delay + DELAYED_NACK_MARGIN).await;
            delayed.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_once_deliveries_settle_quickly_on_average() {
        let flow = Flow::default();
        assert!(!flow.is_fast(), "unknown until something is settled");
        flow.take();
        flow.release(Duration::from_millis(5));
        assert!(flow.is_fast());
        assert_eq!(flow.held(), 0);
        for _ in 0..30 {
            flow.take();
            flow.release(Duration::from_secs(2));
        }
        assert!(!flow.is_fast(), "slow work turns fetching ahead off");
        flow.release(Duration::ZERO);
        assert_eq!(flow.held(), 0, "never below zero");
    }
}
