//! [`Ledger`]: which task ids were sent and which came back, how often.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

/// Accounts for the ids a test sent and the ids it received, so the test can check the exact set:
/// nothing missing, nothing that was never sent, and duplicates counted and named.
///
/// Methods take `&self` and the ledger is `Sync`: share one between tasks with an `Arc`.
///
/// ```
/// use taskbus_bus::conformance::Ledger;
/// let ledger = Ledger::new("example");
/// ledger.sent_all(["a", "b"]);
/// ledger.received("a");
/// ledger.received("b");
/// ledger.received("b");
/// let report = ledger.report();
/// assert!(report.missing.is_empty());
/// assert_eq!(report.duplicates, vec![("b".to_owned(), 2)]);
/// ledger.assert_at_least_once(); // duplicates are reported, not fatal
/// ```
pub struct Ledger {
    name: String,
    state: Mutex<State>,
    complete: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// Ids in the order they were first sent.
    sent: Vec<String>,
    sent_set: HashSet<String>,
    /// Times each received id arrived (sent or not).
    received: HashMap<String, u32>,
    /// Sent ids not received yet.
    missing: usize,
    /// Every receipt, duplicates included.
    deliveries: usize,
}

impl State {
    fn is_sent(&self, id: &str) -> bool {
        self.sent_set.contains(id)
    }
}

impl Ledger {
    /// An empty ledger; `name` appears in its reports (use the test's name).
    pub fn new(name: impl Into<String>) -> Ledger {
        Ledger {
            name: name.into(),
            state: Mutex::new(State::default()),
            complete: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_complete(&self, state: &State) {
        let complete = !state.sent.is_empty() && state.missing == 0;
        self.complete
            .send_if_modified(|c| std::mem::replace(c, complete) != complete);
    }

    /// Records that `id` was sent (or is about to be). Recording an id twice counts it once.
    pub fn sent(&self, id: impl Into<String>) {
        let id = id.into();
        let mut state = self.lock();
        if state.is_sent(&id) {
            return;
        }
        if !state.received.contains_key(&id) {
            state.missing += 1;
        }
        state.sent_set.insert(id.clone());
        state.sent.push(id);
        self.update_complete(&state);
    }

    /// Records that every id of `ids` was sent.
    pub fn sent_all<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for id in ids {
            self.sent(id);
        }
    }

    /// Records one receipt of `id` and returns how many times it has now been received.
    pub fn received(&self, id: &str) -> u32 {
        let mut state = self.lock();
        state.deliveries += 1;
        let sent = state.is_sent(id);
        let times = state.received.entry(id.to_owned()).or_insert(0);
        *times += 1;
        let times = *times;
        if times == 1 && sent {
            state.missing -= 1;
            self.update_complete(&state);
        }
        times
    }

    /// How many times `id` has been received.
    pub fn times_received(&self, id: &str) -> u32 {
        self.lock().received.get(id).copied().unwrap_or(0)
    }

    /// How many ids were sent.
    pub fn sent_count(&self) -> usize {
        self.lock().sent.len()
    }

    /// True once every id sent has been received at least once (and at least one was sent).
    pub fn is_complete(&self) -> bool {
        *self.complete.borrow()
    }

    /// Waits until every id sent has been received at least once. Not bounded: see
    /// [`wait_complete`](Ledger::wait_complete).
    pub async fn all_received(&self) {
        let mut rx = self.complete.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|complete| *complete).await;
    }

    /// Waits up to `limit` until every id sent has been received.
    ///
    /// # Panics
    ///
    /// When `limit` passes first, with the report (what is missing) in the message.
    #[track_caller]
    pub fn wait_complete(&self, limit: Duration) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            if tokio::time::timeout(limit, self.all_received())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {limit:?} waiting for every id ({caller}): {}",
                    self.report()
                );
            }
        }
    }

    /// What was missing, duplicated or unexpected so far.
    pub fn report(&self) -> LedgerReport {
        let state = self.lock();
        let missing = state
            .sent
            .iter()
            .filter(|id| !state.received.contains_key(*id))
            .cloned()
            .collect();
        let mut duplicates = Vec::new();
        let mut unexpected = Vec::new();
        for id in &state.sent {
            match state.received.get(id) {
                Some(&n) if n > 1 => duplicates.push((id.clone(), n)),
                _ => {}
            }
        }
        for (id, &n) in &state.received {
            if !state.is_sent(id) {
                unexpected.push((id.clone(), n));
            }
        }
        unexpected.sort();
        LedgerReport {
            name: self.name.clone(),
            sent: state.sent.len(),
            deliveries: state.deliveries,
            missing,
            duplicates,
            unexpected,
        }
    }

    /// Checks that every id sent was received exactly once and nothing else was received.
    ///
    /// # Panics
    ///
    /// On any missing, duplicated or unexpected id, with the report in the message.
    #[track_caller]
    pub fn assert_exactly_once(&self) -> LedgerReport {
        let report = self.report();
        assert!(
            report.is_exact(),
            "expected every id exactly once: {report}"
        );
        report
    }

    /// Checks that every id sent was received and nothing else was; duplicates are allowed and
    /// printed to stderr (at-least-once delivery after a crash or a broker restart).
    ///
    /// # Panics
    ///
    /// On any missing or unexpected id, with the report in the message.
    #[track_caller]
    pub fn assert_at_least_once(&self) -> LedgerReport {
        let report = self.report();
        assert!(
            report.missing.is_empty() && report.unexpected.is_empty(),
            "expected every id at least once: {report}"
        );
        if !report.duplicates.is_empty() {
            eprintln!("NOTE {report}");
        }
        report
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ledger({})", self.report())
    }
}

/// The accounting of a [`Ledger`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerReport {
    /// The ledger's name.
    pub name: String,
    /// How many ids were sent.
    pub sent: usize,
    /// How many receipts were recorded, duplicates included.
    pub deliveries: usize,
    /// Ids sent and never received, in the order they were sent.
    pub missing: Vec<String>,
    /// Ids received more than once, with how many times, in the order they were sent.
    pub duplicates: Vec<(String, u32)>,
    /// Ids received that were never sent, with how many times.
    pub unexpected: Vec<(String, u32)>,
}

impl LedgerReport {
    /// True when every id sent was received exactly once and nothing else was.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.duplicates.is_empty() && self.unexpected.is_empty()
    }

    /// How many extra receipts the duplicates account for.
    pub fn extra_deliveries(&self) -> u32 {
        self.duplicates.iter().map(|(_, n)| n - 1).sum()
    }
}

/// Lists at most this many ids of each kind in a report.
const SHOWN: usize = 10;

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    let mut parts: Vec<String> = items.iter().take(SHOWN).map(show).collect();
    if items.len() > SHOWN {
        parts.push(format!("… and {} more", items.len() - SHOWN));
    }
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for LedgerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ledger {:?}: {} ids sent, {} receipts; {} missing {}; {} duplicated ({} extra receipts) {}; \
             {} never sent {}",
            self.name,
            self.sent,
            self.deliveries,
            self.missing.len(),
            list(&self.missing, |id| format!("{id:?}")),
            self.duplicates.len(),
            self.extra_deliveries(),
            list(&self.duplicates, |(id, n)| format!("{id:?} x{n}")),
            self.unexpected.len(),
            list(&self.unexpected, |(id, n)| format!("{id:?} x{n}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_duplicates_and_strays() {
        let ledger = Ledger::new("t");
        ledger.sent_all(["a", "b", "c"]);
        assert_eq!(ledger.received("a"), 1);
        assert_eq!(ledger.received("a"), 2);
        ledger.received("zz");
        let report = ledger.report();
        assert_eq!(report.missing, vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(report.duplicates, vec![("a".to_owned(), 2)]);
        assert_eq!(report.unexpected, vec![("zz".to_owned(), 1)]);
        assert_eq!(report.deliveries, 3);
        let text = report.to_string();
        assert!(text.contains("2 missing [\"b\", \"c\"]"), "{text}");
        assert!(text.contains("\"a\" x2"), "{text}");
        assert!(text.contains("1 never sent [\"zz\" x1]"), "{text}");
        assert!(!ledger.is_complete());
    }

    #[test]
    #[should_panic(expected = "1 duplicated (1 extra receipts) [\"a\" x2]")]
    fn exactly_once_fails_on_a_duplicate() {
        let ledger = Ledger::new("t");
        ledger.sent("a");
        ledger.received("a");
        ledger.received("a");
        ledger.assert_exactly_once();
    }

    #[test]
    #[should_panic(expected = "1 missing [\"b\"]")]
    fn at_least_once_fails_on_a_missing_id() {
        let ledger = Ledger::new("t");
        ledger.sent_all(["a", "b"]);
        ledger.received("a");
        ledger.assert_at_least_once();
    }

    #[test]
    fn long_lists_are_cut() {
        let ledger = Ledger::new("t");
        ledger.sent_all((0..25).map(|i| i.to_string()));
        let text = ledger.report().to_string();
        assert!(text.contains("25 missing"), "{text}");
        assert!(text.contains("… and 15 more"), "{text}");
    }

    #[tokio::test]
    async fn completes_when_every_sent_id_arrived() {
        let ledger = std::sync::Arc::new(Ledger::new("t"));
        assert!(!ledger.is_complete(), "an empty ledger is not complete");
        ledger.received("early"); // received before it was recorded as sent
        ledger.sent_all(["early", "late"]);
        assert!(!ledger.is_complete());
        let waiter = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.wait_complete(Duration::from_secs(5)).await }
        });
        ledger.received("late");
        waiter.await.expect("the waiter finishes");
        assert!(ledger.is_complete());
        ledger.sent("later");
        assert!(!ledger.is_complete(), "a new id reopens the ledger");
        ledger.assert_at_least_once_fails_for_test();
    }

    impl Ledger {
        fn assert_at_least_once_fails_for_test(&self) {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.assert_at_least_once()
            }));
            assert!(r.is_err());
        }
    }

    #[tokio::test]
    #[should_panic(expected = "1 missing [\"never\"]")]
    async fn wait_complete_times_out_with_the_report() {
        let ledger = Ledger::new("t");
        ledger.sent("never");
        ledger.wait_complete(Duration::from_millis(20)).await;
    }
}
