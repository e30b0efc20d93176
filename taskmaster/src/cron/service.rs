//! The bus loop of `taskbus cron`: wake at the next tick, claim it in the ledger, send its task, mark it
//! sent, sleep again. All decisions are made by [`Cron`]; this file only does the I/O.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbus_bus::Bus;
use tokio_util::sync::CancellationToken;

use super::ledger::{Claim, TickLedger, DEFAULT_LEASE};
use super::{Cron, Fire, Rule, Skipped};
use crate::clock::Clock;
use crate::TaskmasterError;

/// How often old ledger entries are pruned.
const PRUNE_EVERY: chrono::Duration = chrono::Duration::minutes(10);

/// `taskbus cron` as a library: rules, a bus, a ledger shared by the replicas, and a clock.
#[derive(Debug)]
pub struct CronService {
    bus: Bus,
    cron: Cron,
    ledger: Arc<dyn TickLedger>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    /// Ticks another replica claimed and has not marked sent yet: rule, tick, when to look again.
    busy: Vec<(usize, DateTime<Utc>, DateTime<Utc>)>,
    last_prune: Option<DateTime<Utc>>,
}

impl CronService {
    /// A service sending the ticks of `rules` to `bus`, agreeing with other replicas through `ledger`.
    pub fn new(
        bus: Bus,
        rules: Vec<Rule>,
        ledger: Arc<dyn TickLedger>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let cron = Cron::new(rules, clock.now());
        CronService {
            bus,
            cron,
            ledger,
            clock,
            lease: DEFAULT_LEASE,
            busy: Vec::new(),
            last_prune: None,
        }
    }

    /// How long another replica's claim is trusted before this one checks the tick again (builder style).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How late a tick may be and still count as on time (builder style).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.cron = self.cron.grace(grace);
        self
    }

    /// Resumes each rule from its last sent tick, then sends ticks as they come until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TaskmasterError> {
        self.resume().await?;
        loop {
            let now = self.clock.now();
            let due = self.cron.due(now);
            for skipped in &due.skipped {
                self.log_skipped(skipped);
            }
            for fire in due.fires {
                if !self.fire(fire, &shutdown).await? {
                    return Ok(());
                }
            }
            self.recheck_busy(now, &shutdown).await?;
            self.prune(now).await?;
            let busy_at = self.busy.iter().map(|(_, _, at)| *at).min();
            let wake = match (self.cron.next_wakeup(), busy_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now + chrono::Duration::days(1)),
            };
            tokio::select! {
                () = self.clock.sleep_until(wake) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    async fn resume(&mut self) -> Result<(), TaskmasterError> {
        for index in 0..self.cron.rules().len() {
            let rule = &self.cron.rules()[index];
            match self.ledger.last_sent(&rule.name).await? {
                Some(last) => {
                    tracing::info!(rule = %rule.name, last_sent = %last, catch_up = ?rule.catch_up,
                        "resuming after the last tick sent");
                    self.cron.resume(index, last);
                }
                None => tracing::info!(rule = %rule.name, schedule = %rule.schedule,
                    "no tick of this rule was sent before; starting from now"),
            }
        }
        Ok(())
    }

    fn log_skipped(&self, s: &Skipped) {
        let rule = &self.cron.rules()[s.rule];
        tracing::warn!(rule = %rule.name, first = %s.first, last = %s.last,
            count = s.count.map_or_else(|| "many".to_owned(), |c| c.to_string()),
            reason = s.reason, "missed ticks skipped");
    }

    /// Claims and sends one tick. `Ok(false)` when shutdown came while the bus was failing.
    async fn fire(
        &mut self,
        fire: Fire,
        shutdown: &CancellationToken,
    ) -> Result<bool, TaskmasterError> {
        let rule = &self.cron.rules()[fire.rule];
        let task = match rule.task(fire.tick) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(rule = %rule.name, tick = %fire.tick, error = %e, "cannot render the task; tick skipped");
                return Ok(true);
            }
        };
        match self.ledger.claim(&rule.name, fire.tick).await? {
            Claim::Done => {
                tracing::debug!(rule = %rule.name, tick = %fire.tick, "tick already sent by another replica");
                return Ok(true);
            }
            Claim::Busy => {
                tracing::debug!(rule = %rule.name, tick = %fire.tick, "tick claimed by another replica");
                let again =
                    self.clock.now() + chrono::Duration::from_std(self.lease).unwrap_or_default();
                self.busy.push((fire.rule, fire.tick, again));
                return Ok(true);
            }
            Claim::Won => {}
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.bus.send(&rule.topic, &task).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(rule = %rule.name, tick = %fire.tick, error = %e, retry_in = ?backoff,
                        "cannot send the tick's task; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => {
                            self.ledger.release(&rule.name, fire.tick).await?;
                            return Ok(false);
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.ledger.mark_sent(&rule.name, fire.tick).await?;
        tracing::info!(rule = %rule.name, tick = %fire.tick, topic = %rule.topic, id = %task.id,
            info = %task.info, catch_up = fire.catch_up, "tick sent");
        Ok(true)
    }

    async fn recheck_busy(
        &mut self,
        now: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<(), TaskmasterError> {
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.busy.drain(..).partition(|(_, _, at)| *at <= now);
        self.busy = waiting;
        for (rule, tick, _) in ready {
            if !self
                .fire(
                    Fire {
                        rule,
                        tick,
                        catch_up: true,
                    },
                    shutdown,
                )
                .await?
            {
                break;
            }
        }
        Ok(())
    }

    async fn prune(&mut self, now: DateTime<Utc>) -> Result<(), TaskmasterError> {
        if self.last_prune.is_some_and(|t| now - t < PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(now);
        let margin =
            chrono::Duration::from_std(self.lease).unwrap_or_default() + chrono::Duration::hours(1);
        for rule in self.cron.rules() {
            let window =
                chrono::Duration::from_std(rule.catch_up_window).unwrap_or(chrono::Duration::MAX);
            if let Some(before) = now
                .checked_sub_signed(window)
                .and_then(|t| t.checked_sub_signed(margin))
            {
                self.ledger.prune(&rule.name, before).await?;
            }
        }
        Ok(())
    }
}
