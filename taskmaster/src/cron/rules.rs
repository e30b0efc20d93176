//! The cron state machine: given the time, which ticks are due, which are caught up and which are
//! skipped, and the task each fired tick sends. No I/O and no clock of its own: the caller says what
//! time it is, so tests can step through days in microseconds.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Meta, Task};

use super::Schedule;
use crate::template::{Template, Vars};
use crate::TemplateError;

/// The namespace of the deterministic task ids of cron ticks (UUID v5).
pub const TICK_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1d_2f0e_4c5a_4f4e_9a51_7c3e_2b8d_c0a1);

/// What to do with ticks that were missed (the app was down, or woke up late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Skip them (logged).
    None,
    /// Send only the most recent one within the window, unless a tick is on time anyway.
    Latest,
    /// Send every one within the window, oldest first.
    All,
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        })
    }
}

impl std::str::FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CatchUp::None),
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            other => Err(format!(
                "{other:?} is not a catch-up policy; use none, latest or all"
            )),
        }
    }
}

/// One rule: a schedule and the task it sends on each tick.
#[derive(Debug, Clone)]
pub struct Rule {
    /// A unique name (letters, digits, `.`, `_`, `-`): part of each tick's task id and its state.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// The task's `type`.
    pub kind: String,
    /// The task's `job`.
    pub job: String,
    /// The task's `info`, rendered at the tick time plus [`Rule::offset`], in the schedule's zone.
    pub template: Template,
    /// Added to the tick time before rendering (`-1h`: an hourly rule at 01:00 makes the task for 00:00).
    pub offset: chrono::Duration,
    /// Where the task goes.
    pub topic: String,
    /// Meta of the task, each value a template (rendered like the info).
    pub meta: Vec<(String, Template)>,
    /// What to do with missed ticks.
    pub catch_up: CatchUp,
    /// Missed ticks older than this are skipped whatever the policy.
    pub catch_up_window: Duration,
}

impl Rule {
    /// The task this rule sends for `tick`: a deterministic id (UUID v5 of the topic, type, job, rule
    /// name and tick), so replicas sending the same tick send the same task and a de-duplicating bus
    /// keeps one; `meta.scheduled` is the tick.
    pub fn task(&self, tick: DateTime<Utc>) -> Result<Task, TemplateError> {
        let time = (tick + self.offset).with_timezone(&self.schedule.timezone());
        let mut meta = Meta::new();
        for (key, template) in &self.meta {
            meta.set(key.clone(), template.render(&Vars::at(time))?);
        }
        let info = self.template.render(&Vars::at(time).meta(&meta))?;
        meta.set(
            keys::SCHEDULED,
            tick.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        let mut task = Task::with_id(&self.kind, info, self.tick_id(tick)).job(&self.job);
        task.meta = meta;
        Ok(task)
    }

    /// The deterministic id of this rule's task for `tick`.
    pub fn tick_id(&self, tick: DateTime<Utc>) -> String {
        let name = format!(
            "cron/{}/{}/{}/{}@{}",
            self.topic,
            self.kind,
            self.job,
            self.name,
            tick.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        uuid::Uuid::new_v5(&TICK_NAMESPACE, name.as_bytes()).to_string()
    }
}

/// A tick to send now.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    /// The index of the rule in [`Cron::rules`].
    pub rule: usize,
    /// The tick.
    pub tick: DateTime<Utc>,
    /// True when the tick was missed and is sent by the catch-up policy.
    pub catch_up: bool,
}

/// Missed ticks that will not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The index of the rule.
    pub rule: usize,
    /// The first tick skipped.
    pub first: DateTime<Utc>,
    /// The last tick skipped.
    pub last: DateTime<Utc>,
    /// How many, when counted (ticks older than the window are not counted).
    pub count: Option<usize>,
    /// Why: `catch_up = none`, older than the window, or superseded by a newer tick.
    pub reason: &'static str,
}

/// What [`Cron::due`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Due {
    /// Ticks to send, per rule oldest first.
    pub fires: Vec<Fire>,
    /// Missed ticks not sent, to be logged.
    pub skipped: Vec<Skipped>,
}

/// The cron state machine: a cursor per rule (the last tick already considered).
#[derive(Debug, Clone)]
pub struct Cron {
    rules: Vec<Rule>,
    cursors: Vec<DateTime<Utc>>,
    grace: chrono::Duration,
}

/// How late a tick may be handled and still count as on time (not missed).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

impl Cron {
    /// A state machine for `rules` that starts at `now`: ticks before it are history.
    pub fn new(rules: Vec<Rule>, now: DateTime<Utc>) -> Cron {
        let cursors = vec![now; rules.len()];
        Cron {
            rules,
            cursors,
            grace: chrono::Duration::from_std(DEFAULT_GRACE).unwrap_or_default(),
        }
    }

    /// Sets how late a tick may be and still count as on time (builder style).
    pub fn grace(mut self, grace: Duration) -> Cron {
        self.grace = chrono::Duration::from_std(grace).unwrap_or(self.grace);
        self
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The index of the rule called `name`.
    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }

    /// Resumes rule `index` after `last`, the last tick sent before a restart: ticks after it are
    /// due (on time or missed).
    pub fn resume(&mut self, index: usize, last: DateTime<Utc>) {
        if let Some(cursor) = self.cursors.get_mut(index) {
            *cursor = last;
        }
    }

    /// The earliest time a rule has a tick after its cursor: when to call [`Cron::due`] next.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.rules
            .iter()
            .zip(&self.cursors)
            .filter_map(|(rule, cursor)| rule.schedule.next_after(*cursor))
            .min()
    }

    /// The ticks due at `now` (those after each rule's cursor, up to `now`), with the catch-up policy
    /// applied to the missed ones; moves the cursors to `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Due {
        let mut due = Due::default();
        for index in 0..self.rules.len() {
            let cursor = self.cursors[index];
            if now <= cursor {
                continue;
            }
            self.due_for(index, cursor, now, &mut due);
            self.cursors[index] = now;
        }
        due
    }

    fn due_for(&self, index: usize, cursor: DateTime<Utc>, now: DateTime<Utc>, due: &mut Due) {
        let rule = &self.rules[index];
        let window =
            chrono::Duration::from_std(rule.catch_up_window).unwrap_or(chrono::Duration::MAX);
        let window_start = now.checked_sub_signed(window).unwrap_or(cursor).max(cursor);
        if window_start > cursor {
            if let Some(first) = rule
                .schedule
                .next_after(cursor)
                .filter(|t| *t <= window_start)
            {
                let last = last_tick_until(&rule.schedule, first, window_start);
                due.skipped.push(Skipped {
                    rule: index,
                    first,
                    last,
                    count: None,
                    reason: "older than catch_up_window",
                });
            }
        }
        let on_time_from = now - self.grace;
        let (missed, on_time): (Vec<_>, Vec<_>) = rule
            .schedule
            .ticks_between(window_start, now)
            .partition(|t| *t < on_time_from);
        let fire = |tick, catch_up| Fire {
            rule: index,
            tick,
            catch_up,
        };
        let skip = |ticks: &[DateTime<Utc>], reason| {
            ticks.first().map(|first| Skipped {
                rule: index,
                first: *first,
                last: *ticks.last().unwrap_or(first),
                count: Some(ticks.len()),
                reason,
            })
        };
        match rule.catch_up {
            CatchUp::None => due.skipped.extend(skip(&missed, "catch_up = none")),
            CatchUp::All => due.fires.extend(missed.iter().map(|t| fire(*t, true))),
            CatchUp::Latest if !on_time.is_empty() => {
                due.skipped.extend(skip(
                    &missed,
                    "superseded by a newer tick (catch_up = latest)",
                ));
            }
            CatchUp::Latest => {
                if let Some((newest, older)) = missed.split_last() {
                    due.skipped.extend(skip(
                        older,
                        "superseded by a newer tick (catch_up = latest)",
                    ));
                    due.fires.push(fire(*newest, true));
                }
            }
        }
        due.fires.extend(on_time.iter().map(|t| fire(*t, false)));
    }
}

/// The last tick of `schedule` in `[first, until]`, found without walking every tick when they are many.
fn last_tick_until(
    schedule: &Schedule,
    first: DateTime<Utc>,
    until: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut probe = until - chrono::Duration::seconds(1);
    let mut step = chrono::Duration::seconds(1);
    loop {
        if probe <= first {
            return schedule.ticks_between(first, until).last().unwrap_or(first);
        }
        if let Some(t) = schedule.next_after(probe).filter(|t| *t <= until) {
            return schedule.ticks_between(t, until).last().unwrap_or(t);
        }
        step = step * 2;
        probe = (until - step).max(first);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use crate::cron::config;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(extra: &str, start: &str) -> Cron {
        let text = format!(
            "[[rule]]\nname = \"r\"\ncron = \"0 * * * *\"\ntype = \"t\"\ntemplate = \"{{yyyy}}-{{mm}}-{{dd}}T{{hh}}\"\n{extra}"
        );
        Cron::new(
            config::parse(&ConfigFile::new("c.toml", text)).unwrap(),
            utc(start),
        )
    }

    fn ticks(due: &Due) -> Vec<(String, bool)> {
        due.fires
            .iter()
            .map(|f| (f.tick.format("%dT%H").to_string(), f.catch_up))
            .collect()
    }

    #[test]
    fn on_time_ticks_fire_once_as_the_clock_moves() {
        let mut c = cron("", "2024-01-02T10:30:00Z");
        assert!(c.due(utc("2024-01-02T10:59:59Z")).fires.is_empty());
        assert_eq!(c.next_wakeup(), Some(utc("2024-01-02T11:00:00Z")));
        assert_eq!(
            ticks(&c.due(utc("2024-01-02T11:00:00Z"))),
            [("02T11".to_owned(), false)]
        );
        assert!(c.due(utc("2024-01-02T11:00:30Z")).fires.is_empty());
        assert_eq!(c.next_wakeup(), Some(utc("2024-01-02T12:00:00Z")));
    }

    #[test]
    fn catch_up_latest_sends_the_newest_missed_tick() {
        let mut c = cron("", "2024-01-02T20:00:00Z");
        c.resume(0, utc("2024-01-02T06:00:00Z"));
        let due = c.due(utc("2024-01-02T10:30:00Z"));
        assert_eq!(ticks(&due), [("02T10".to_owned(), true)]);
        assert_eq!(due.skipped.len(), 1);
        assert_eq!(due.skipped[0].count, Some(3));
        assert_eq!(due.skipped[0].first, utc("2024-01-02T07:00:00Z"));
        assert_eq!(due.skipped[0].last, utc("2024-01-02T09:00:00Z"));
        // A tick on time supersedes the missed ones.
        c.resume(0, utc("2024-01-02T06:00:00Z"));
        let due = c.due(utc("2024-01-02T10:00:10Z"));
        assert_eq!(ticks(&due), [("02T10".to_owned(), false)]);
    }

    #[test]
    fn catch_up_all_sends_every_tick_in_the_window() {
        let mut c = cron(
            "catch_up = \"all\"\ncatch_up_window = \"3h\"",
            "2024-01-02T00:00:00Z",
        );
        c.resume(0, utc("2024-01-02T00:00:00Z"));
        let due = c.due(utc("2024-01-02T10:30:00Z"));
        assert_eq!(
            ticks(&due),
            [
                ("02T08".to_owned(), true),
                ("02T09".to_owned(), true),
                ("02T10".to_owned(), true)
            ]
        );
        assert_eq!(due.skipped.len(), 1);
        assert_eq!(due.skipped[0].reason, "older than catch_up_window");
        assert_eq!(due.skipped[0].first, utc("2024-01-02T01:00:00Z"));
        assert_eq!(due.skipped[0].last, utc("2024-01-02T07:00:00Z"));
    }

    #[test]
    fn catch_up_none_skips_and_says_so() {
        let mut c = cron("catch_up = \"none\"", "2024-01-02T00:00:00Z");
        c.resume(0, utc("2024-01-02T07:00:00Z"));
        let due = c.due(utc("2024-01-02T10:30:00Z"));
        assert!(due.fires.is_empty());
        assert_eq!(due.skipped[0].count, Some(3));
        assert_eq!(due.skipped[0].reason, "catch_up = none");
    }

    #[test]
    fn tasks_have_deterministic_ids_offsets_zones_and_meta() {
        let mut c = cron(
            "offset = \"-1h\"\ntimezone = \"Asia/Tokyo\"\njob = \"j\"\nmeta = { day = \"{dd}\", owner = \"ops\" }",
            "2024-01-02T10:30:00Z",
        );
        let rule = &c.rules()[0];
        let tick = utc("2024-01-02T15:00:00Z");
        let a = rule.task(tick).unwrap();
        let b = rule.task(tick).unwrap();
        assert_eq!(a.id, b.id, "same tick, same id");
        assert_ne!(
            a.id,
            rule.task(tick + chrono::Duration::hours(1)).unwrap().id
        );
        assert_eq!(a.info, "2024-01-02T23", "Tokyo is UTC+9, minus the offset");
        assert_eq!(a.kind, "t");
        assert_eq!(a.job, "j");
        assert_eq!(a.meta.get("day"), Some("02"));
        assert_eq!(a.meta.get("owner"), Some("ops"));
        assert_eq!(a.meta.get("scheduled"), Some("2024-01-02T15:00:00Z"));
        assert_eq!(a.dedup_key(), b.dedup_key());
        assert!(c.due(utc("2024-01-02T11:00:00Z")).fires.len() == 1);
    }
}
