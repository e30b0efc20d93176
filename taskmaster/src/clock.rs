//! The clock every engine reads: the system clock in production, a [`ManualClock`] in tests, so a test
//! of a cron schedule or a retry delay never sleeps through real minutes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// What time it is, and a way to wait for a time.
#[async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Returns once [`Clock::now`] has reached `t` (at once when it already has).
    async fn sleep_until(&self, t: DateTime<Utc>);
}

/// The wall clock. Sleeps re-read it at least every 30 s, so a clock stepped forward (NTP, a laptop
/// waking up) is noticed promptly.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        loop {
            let left = t - Utc::now();
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_secs(30))).await;
        }
    }
}

/// A clock that moves only when told: [`ManualClock::set`] and [`ManualClock::advance`] wake every
/// sleeper whose time has come.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Sets the time (it may go backwards, as a real clock can).
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        self.now.send_modify(|t| *t += step);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        let mut rx = self.now.subscribe();
        loop {
            if *rx.borrow_and_update() >= t {
                return;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as any clone of the clock; without one, time stands still.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let t0 = DateTime::parse_from_rfc3339("2024-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(t0);
        let c = clock.clone();
        let sleeper =
            tokio::spawn(async move { c.sleep_until(t0 + chrono::Duration::minutes(5)).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(60));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(240));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), t0 + chrono::Duration::minutes(5));
    }
}
