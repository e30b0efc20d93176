//! The retry decision: given a done task and the time, ignore it, retry it (when), or give up and
//! send it to the failed topic. No I/O; the attempt count and history travel in the task's meta, so
//! the decision needs nothing but the task.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Task, TaskResult};

/// The meta key of the attempt history: one value per failed attempt, `ATTEMPT|RESULT|ENDED|MSG`.
pub const HISTORY: &str = "retry_history";
/// The meta key saying why a task in the failed topic was not retried.
pub const FAILED_REASON: &str = "failed_reason";
/// Messages longer than this are cut in the history.
const HISTORY_MSG_MAX: usize = 200;

/// How the delay grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// The same delay each time.
    Fixed,
    /// `delay × n` before the n-th retry.
    Linear,
    /// `delay × factor^(n-1)` before the n-th retry.
    Exponential {
        /// The growth factor (2 by default).
        factor: f64,
    },
}

/// How one kind of task is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How many retries after the first run.
    pub retries: u32,
    /// The base delay.
    pub delay: Duration,
    /// How the delay grows.
    pub backoff: Backoff,
    /// Up to this much is added to each delay, the same for a given task and attempt (so a restarted
    /// app computes the same time).
    pub jitter: Duration,
    /// No delay is longer than this (applied last).
    pub max_delay: Option<Duration>,
    /// Which results are retried. Only `error` can be: `warn` and `alert` never are.
    pub results: Vec<TaskResult>,
    /// Retry only when the message contains one of these (empty: any message).
    pub retry_on: Vec<String>,
    /// Never retry when the message contains one of these.
    pub no_retry_on: Vec<String>,
    /// Where retries are sent (default: the task's type).
    pub topic: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: 3,
            delay: Duration::from_secs(30),
            backoff: Backoff::Fixed,
            jitter: Duration::ZERO,
            max_delay: None,
            results: vec![TaskResult::Error],
            retry_on: Vec::new(),
            no_retry_on: Vec::new(),
            topic: None,
        }
    }
}

impl Policy {
    /// The delay before retry number `n` (1 for the first retry) of the task with `id`.
    pub fn delay_for(&self, n: u32, id: &str) -> Duration {
        let n = n.max(1);
        let base = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Linear => self.delay.saturating_mul(n),
            Backoff::Exponential { factor } => {
                let secs = self.delay.as_secs_f64()
                    * factor.powi(i32::try_from(n - 1).unwrap_or(i32::MAX));
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            }
        };
        let jitter = self.jitter.mul_f64(unit_hash(id, n));
        let delay = base.saturating_add(jitter);
        self.max_delay.map_or(delay, |cap| delay.min(cap))
    }
}

/// A number in `[0, 1)` that depends only on `id` and `n` (FNV-1a), for stable jitter.
fn unit_hash(id: &str, n: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A policy for tasks of one type (and optionally one job).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryRule {
    /// The task type, or `*` for any.
    pub kind: String,
    /// The job, or `None` for any.
    pub job: Option<String>,
    /// The policy.
    pub policy: Policy,
}

/// What to do with one done task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not ours to retry (complete, warn, alert, no rule, or a result the rule does not retry).
    Ignore(String),
    /// Send `task` to `topic` at `due`.
    Retry {
        /// The task to send: same id, `attempt` one more, outcome cleared, history in meta.
        task: Task,
        /// Where.
        topic: String,
        /// When.
        due: DateTime<Utc>,
    },
    /// Give up: send `task` (the done task with its history and reason) to `topic`.
    Fail {
        /// The done task, with [`HISTORY`] and [`FAILED_REASON`] in meta.
        task: Task,
        /// The failed topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

/// The retry rules of one app, and its failed topic.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryRules {
    /// The rules; the most specific match wins (type and job, then type, then `*`).
    pub rules: Vec<RetryRule>,
    /// Where tasks go when they will not be retried.
    pub failed_topic: String,
}

impl RetryRules {
    /// The rule for `task`: type and job, then type alone, then `*`.
    pub fn find(&self, task: &Task) -> Option<&RetryRule> {
        let by = |kind: &str, job: Option<&str>| {
            self.rules
                .iter()
                .find(|r| r.kind == kind && r.job.as_deref() == job)
        };
        by(&task.kind, Some(&task.job))
            .or_else(|| by(&task.kind, None))
            .or_else(|| by("*", Some(&task.job)))
            .or_else(|| by("*", None))
    }

    /// Decides what to do with `done`, seen at `now`. The retry is due `delay` after the task ended
    /// (or after `now` when it has no end time), so a restart computes the same time.
    pub fn decide(&self, done: &Task, now: DateTime<Utc>) -> Decision {
        let Some(result) = done.result else {
            return Decision::Ignore("not a done task (no result)".to_owned());
        };
        if matches!(
            result,
            TaskResult::Complete | TaskResult::Warn | TaskResult::Alert
        ) {
            return Decision::Ignore(format!("result {result} is never retried"));
        }
        let Some(rule) = self.find(done) else {
            return Decision::Ignore(format!("no retry rule for {}", done.kind_job()));
        };
        let policy = &rule.policy;
        if !policy.results.contains(&result) {
            return Decision::Ignore(format!("the rule does not retry result {result}"));
        }
        let attempt = done.attempt();
        let mut failed = done.clone();
        failed.meta.append(HISTORY, history_entry(done, attempt));
        let fail = |mut task: Task, reason: String| {
            task.meta.set(FAILED_REASON, &reason);
            Decision::Fail {
                task,
                topic: self.failed_topic.clone(),
                reason,
            }
        };
        if done.meta.get(keys::NO_RETRY).is_some_and(is_true) {
            return fail(
                failed,
                "the worker asked not to retry (no_retry)".to_owned(),
            );
        }
        if let Some(word) = policy
            .no_retry_on
            .iter()
            .find(|w| done.msg.contains(w.as_str()))
        {
            return fail(
                failed,
                format!("the message contains {word:?} (no_retry_on)"),
            );
        }
        if !policy.retry_on.is_empty()
            && !policy
                .retry_on
                .iter()
                .any(|w| done.msg.contains(w.as_str()))
        {
            return fail(failed, "the message matches nothing in retry_on".to_owned());
        }
        if attempt >= policy.retries {
            return fail(failed, format!("gave up after {} retries", policy.retries));
        }
        let delay = match done.meta.get_duration(keys::RETRY_AFTER) {
            Ok(Some(d)) => d,
            _ => policy.delay_for(attempt + 1, &done.id),
        };
        let anchor = done.ended.unwrap_or(now);
        let due = anchor + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        if let Ok(Some(deadline)) = done
            .meta
            .get(keys::DEADLINE)
            .map(taskbus_bus::task::time::parse)
            .transpose()
        {
            if deadline.is_some_and(|d| due > d) {
                return fail(
                    failed,
                    format!(
                        "the next retry, due {}, would start after the deadline",
                        fmt(due)
                    ),
                );
            }
        }
        let task = retry_task(failed, attempt + 1);
        let topic = policy.topic.clone().unwrap_or_else(|| done.kind.clone());
        Decision::Retry { task, topic, due }
    }
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn history_entry(done: &Task, attempt: u32) -> String {
    let ended = done.ended.map(fmt).unwrap_or_default();
    let result = done.result.map_or("", TaskResult::as_str);
    let mut msg: String = done.msg.chars().take(HISTORY_MSG_MAX).collect();
    if msg.len() < done.msg.len() {
        msg.push('…');
    }
    format!("{attempt}|{result}|{ended}|{msg}")
}

/// The task to run again: same id, type, job, info and meta (with the history), the next attempt
/// number, and no outcome.
fn retry_task(mut task: Task, attempt: u32) -> Task {
    task.meta.set(keys::ATTEMPT, attempt);
    task.meta.remove(keys::RETRY_AFTER);
    task.meta.remove(keys::NO_RETRY);
    task.result = None;
    task.msg.clear();
    task.started = None;
    task.ended = None;
    task
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rules(policy: Policy) -> RetryRules {
        RetryRules {
            rules: vec![RetryRule {
                kind: "flaky".into(),
                job: None,
                policy,
            }],
            failed_topic: "failed".into(),
        }
    }

    fn failed(attempt: u32, result: TaskResult) -> Task {
        let mut t = Task::with_id("flaky", "x", "id-1");
        if attempt > 0 {
            t.meta.set("attempt", attempt);
        }
        t.started = Some(utc("2024-01-02T10:00:00Z"));
        t.ended = Some(utc("2024-01-02T10:00:05Z"));
        t.result = Some(result);
        t.msg = "boom".into();
        t
    }

    #[test]
    fn backoffs_grow_and_are_capped() {
        let p = |backoff| Policy {
            delay: Duration::from_secs(10),
            backoff,
            ..Policy::default()
        };
        let secs = |p: &Policy| {
            (1..=4)
                .map(|n| p.delay_for(n, "x").as_secs())
                .collect::<Vec<_>>()
        };
        assert_eq!(secs(&p(Backoff::Fixed)), [10, 10, 10, 10]);
        assert_eq!(secs(&p(Backoff::Linear)), [10, 20, 30, 40]);
        assert_eq!(
            secs(&p(Backoff::Exponential { factor: 2.0 })),
            [10, 20, 40, 80]
        );
        let capped = Policy {
            max_delay: Some(Duration::from_secs(25)),
            ..p(Backoff::Exponential { factor: 2.0 })
        };
        assert_eq!(secs(&capped), [10, 20, 25, 25]);
    }

    #[test]
    fn jitter_is_bounded_and_stable_per_task_and_attempt() {
        let p = Policy {
            delay: Duration::from_secs(10),
            jitter: Duration::from_secs(5),
            ..Policy::default()
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let id = format!("task-{i}");
            let d = p.delay_for(1, &id);
            assert!(
                d >= Duration::from_secs(10) && d < Duration::from_secs(15),
                "{d:?}"
            );
            assert_eq!(d, p.delay_for(1, &id));
            seen.insert(d);
        }
        assert!(seen.len() > 40, "jitter spreads retries");
    }

    #[test]
    fn retries_keep_the_id_count_attempts_and_anchor_on_the_end_time() {
        let r = rules(Policy {
            retries: 2,
            delay: Duration::from_secs(10),
            backoff: Backoff::Linear,
            ..Policy::default()
        });
        let now = utc("2024-01-02T12:00:00Z");
        let Decision::Retry { task, topic, due } = r.decide(&failed(0, TaskResult::Error), now)
        else {
            panic!()
        };
        assert_eq!(
            (task.id.as_str(), topic.as_str(), task.attempt()),
            ("id-1", "flaky", 1)
        );
        assert_eq!(due, utc("2024-01-02T10:00:15Z"));
        assert!(task.result.is_none() && task.ended.is_none() && task.msg.is_empty());
        assert_eq!(
            task.meta.get_all(HISTORY).collect::<Vec<_>>(),
            ["0|error|2024-01-02T10:00:05Z|boom"]
        );
        let mut second = task.clone();
        second.result = Some(TaskResult::Error);
        second.ended = Some(utc("2024-01-02T10:01:00Z"));
        second.msg = "boom again".into();
        let Decision::Retry { task, due, .. } = r.decide(&second, now) else {
            panic!()
        };
        assert_eq!((task.attempt(), due), (2, utc("2024-01-02T10:01:20Z")));
        let mut third = task;
        third.result = Some(TaskResult::Error);
        let Decision::Fail {
            task,
            topic,
            reason,
        } = r.decide(&third, now)
        else {
            panic!()
        };
        assert_eq!(topic, "failed");
        assert!(reason.contains("after 2 retries"), "{reason}");
        assert_eq!(task.meta.get_all(HISTORY).count(), 3);
        assert_eq!(task.meta.get(FAILED_REASON), Some(reason.as_str()));
    }

    #[test]
    fn warn_alert_complete_and_unknown_types_are_ignored() {
        let r = rules(Policy::default());
        let now = utc("2024-01-02T12:00:00Z");
        for result in [TaskResult::Complete, TaskResult::Warn, TaskResult::Alert] {
            assert!(matches!(
                r.decide(&failed(0, result), now),
                Decision::Ignore(_)
            ));
        }
        let mut other = failed(0, TaskResult::Error);
        other.kind = "steady".into();
        assert!(matches!(r.decide(&other, now), Decision::Ignore(_)));
        assert!(matches!(
            r.decide(&Task::new("flaky", "x"), now),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn the_worker_can_say_no_retry_or_retry_after() {
        let r = rules(Policy::default());
        let now = utc("2024-01-02T12:00:00Z");
        let mut no = failed(0, TaskResult::Error);
        no.meta.set("no_retry", "true");
        assert!(
            matches!(r.decide(&no, now), Decision::Fail { reason, .. } if reason.contains("no_retry"))
        );
        let mut after = failed(0, TaskResult::Error);
        after.meta.set("retry_after", "2m");
        let Decision::Retry { task, due, .. } = r.decide(&after, now) else {
            panic!()
        };
        assert_eq!(due, utc("2024-01-02T10:02:05Z"));
        assert_eq!(task.meta.get("retry_after"), None);
        let mut late = failed(0, TaskResult::Error);
        late.meta.set("deadline", "2024-01-02T10:00:10Z");
        assert!(
            matches!(r.decide(&late, now), Decision::Fail { reason, .. } if reason.contains("deadline"))
        );
    }

    #[test]
    fn message_filters_and_rule_precedence() {
        let p = Policy {
            no_retry_on: vec!["bad input".into()],
            retry_on: vec!["timeout".into(), "boom".into()],
            ..Policy::default()
        };
        let r = rules(p);
        let now = utc("2024-01-02T12:00:00Z");
        assert!(matches!(
            r.decide(&failed(0, TaskResult::Error), now),
            Decision::Retry { .. }
        ));
        let mut bad = failed(0, TaskResult::Error);
        bad.msg = "boom: bad input".into();
        assert!(matches!(r.decide(&bad, now), Decision::Fail { .. }));
        let mut other = failed(0, TaskResult::Error);
        other.msg = "disk full".into();
        assert!(matches!(r.decide(&other, now), Decision::Fail { .. }));

        let rule = |kind: &str, job: Option<&str>, retries| RetryRule {
            kind: kind.into(),
            job: job.map(Into::into),
            policy: Policy {
                retries,
                ..Policy::default()
            },
        };
        let r = RetryRules {
            rules: vec![
                rule("*", None, 1),
                rule("flaky", None, 2),
                rule("flaky", Some("j"), 3),
            ],
            failed_topic: "failed".into(),
        };
        let mut t = failed(0, TaskResult::Error);
        assert_eq!(r.find(&t).unwrap().policy.retries, 2);
        t.job = "j".into();
        assert_eq!(r.find(&t).unwrap().policy.retries, 3);
        t.kind = "other".into();
        assert_eq!(r.find(&t).unwrap().policy.retries, 1);
    }
}
