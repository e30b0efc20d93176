//! A consumer of one topic in one group, and the acker of its deliveries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::group::{Claimed, Group, Op, Outlook, Settle};
use super::now_ms;
use crate::{Acker, BusError, Consumer, Delivery};

/// At most this many lines are claimed at once.
const MAX_BATCH: usize = 256;

/// What a consumer and its deliveries share.
#[derive(Default)]
struct Shared {
    /// Claimed, not yet handed out.
    queue: Arc<Mutex<VecDeque<Claimed>>>,
    /// Handed out, not yet settled.
    outstanding: AtomicUsize,
}

pub(crate) struct FileConsumer {
    group: Arc<Group>,
    appended: Arc<Notify>,
    shared: Arc<Shared>,
    finite: bool,
    max_in_flight: usize,
    poll: Duration,
    closed: CancellationToken,
}

impl FileConsumer {
    pub(crate) fn new(
        group: Arc<Group>,
        appended: Arc<Notify>,
        finite: bool,
        max_in_flight: usize,
        poll: Duration,
    ) -> FileConsumer {
        FileConsumer {
            group,
            appended,
            shared: Arc::default(),
            finite,
            max_in_flight: max_in_flight.max(1),
            poll,
            closed: CancellationToken::new(),
        }
    }

    /// The next claimed line that is still safely leased to us.
    fn pop(&self) -> Option<Claimed> {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let claimed = queue.pop_front()?;
        // Lines that waited here for half their lease go back, so a line is never handed out with
        // its lease about to run out (another consumer would get it too).
        let lease = Duration::from_millis(self.group.lease_ms());
        if claimed.at.elapsed() > lease / 2 {
            self.release(std::iter::once(claimed).chain(queue.drain(..)));
            return None;
        }
        Some(claimed)
    }

    fn release(&self, lines: impl Iterator<Item = Claimed>) {
        for c in lines {
            self.group.settle_later(Settle {
                file: c.file,
                off: c.off,
                count: c.count,
                op: Op::Release,
            });
        }
    }

    fn deliver(&self, c: Claimed) -> Delivery {
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        let acker = FileAcker {
            group: Arc::clone(&self.group),
            shared: Arc::clone(&self.shared),
            file: c.file,
            off: c.off,
            count: c.count,
            settled: false,
        };
        Delivery::new(self.group.topic(), c.payload, c.count, Box::new(acker))
    }

    /// Waits until something may have changed: an append or nack in this process, a change to the
    /// files by another process (looked for every `poll` at most), a due time, or close.
    async fn wait(&self, outlook: &Outlook) {
        let mut step = Duration::from_millis(1);
        loop {
            let appended = self.appended.notified();
            let ready = self.group.ready.notified();
            let until_due = outlook
                .wake_at
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let sleep = until_due.map_or(step, |d| d.min(step));
            tokio::select! {
                () = appended => return,
                () = ready => return,
                () = self.closed.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
            }
            if outlook.wake_at.is_some_and(|at| now_ms() >= at) || self.group.changed_since(outlook)
            {
                return;
            }
            step = (step * 2).min(self.poll);
        }
    }
}

#[async_trait]
impl Consumer for FileConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.closed.is_cancelled() {
                return Ok(None);
            }
            if let Some(claimed) = self.pop() {
                return Ok(Some(self.deliver(claimed)));
            }
            let outstanding = self.shared.outstanding.load(Ordering::Relaxed);
            // Fill the free slots, but take at least a quarter of max_in_flight at a time, so a
            // consumer kept full does not pay one lock per line.
            let want = self
                .max_in_flight
                .saturating_sub(outstanding)
                .max(self.max_in_flight / 4)
                .clamp(1, MAX_BATCH);
            let outlook = self
                .group
                .claim(want, Arc::clone(&self.shared.queue))
                .await?;
            if outlook.claimed > 0 {
                continue;
            }
            if self.finite && outlook.exhausted {
                return Ok(None);
            }
            self.wait(&outlook).await;
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed.cancel();
        let unhanded: Vec<_> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        self.release(unhanded.into_iter());
        self.group.flush().await;
        Ok(())
    }
}

impl Drop for FileConsumer {
    fn drop(&mut self) {
        let unhanded: Vec<_> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        self.release(unhanded.into_iter());
    }
}

struct FileAcker {
    group: Arc<Group>,
    shared: Arc<Shared>,
    file: super::topic::FileId,
    off: u64,
    count: u32,
    settled: bool,
}

impl FileAcker {
    fn settle(&mut self, op: Op) -> Settle {
        if !self.settled {
            self.settled = true;
            self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        Settle {
            file: self.file,
            off: self.off,
            count: self.count,
            op,
        }
    }
}

#[async_trait]
impl Acker for FileAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        let settle = self.settle(Op::Ack);
        self.group.settle(settle).await
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        let not_before = now_ms() + delay.map_or(0, super::ms);
        let settle = self.settle(Op::Nack { not_before });
        self.group.settle(settle).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        let deadline = now_ms() + self.group.lease_ms();
        self.group
            .settle(Settle {
                file: self.file,
                off: self.off,
                count: self.count,
                op: Op::Extend { deadline },
            })
            .await
    }
}

impl Drop for FileAcker {
    fn drop(&mut self) {
        if !self.settled {
            let settle = self.settle(Op::Nack { not_before: 0 });
            self.group.settle_later(settle);
        }
    }
}
