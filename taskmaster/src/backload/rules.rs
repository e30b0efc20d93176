//! The backload plan: the times of a range (either direction), filtered by hour, times the meta rows,
//! rendered into tasks. Pure: the same request gives the same times and infos.

use std::str::FromStr;

use chrono::{
    DateTime, Days, Months, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Meta, Task};

use crate::template::{Template, Vars};
use crate::TemplateError;

/// The step between two times of a backload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every hour (real hours: a daylight-saving change does not skip or repeat one).
    Hour,
    /// Every day, at the same local time.
    Day,
    /// Every seven days, at the same local time.
    Week,
    /// Every month, on the same day (the last day for months that are shorter).
    Month,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Hour => "hour",
            Step::Day => "day",
            Step::Week => "week",
            Step::Month => "month",
        })
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hour" | "hourly" => Ok(Step::Hour),
            "day" | "daily" => Ok(Step::Day),
            "week" | "weekly" => Ok(Step::Week),
            "month" | "monthly" => Ok(Step::Month),
            _ => Err(format!("{s:?} is not a step; use hour, day, week or month")),
        }
    }
}

/// Hours of the day to keep (`--on-hours`) and to drop (`--off-hours`), as bit sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourFilter {
    /// Hours kept (all when every bit is set).
    pub on: u32,
    /// Hours dropped.
    pub off: u32,
}

impl Default for HourFilter {
    fn default() -> Self {
        HourFilter {
            on: (1 << 24) - 1,
            off: 0,
        }
    }
}

impl HourFilter {
    /// True when `hour` passes.
    pub fn keeps(&self, hour: u32) -> bool {
        self.on & (1 << hour) != 0 && self.off & (1 << hour) == 0
    }
}

/// Everything a backload needs, checked.
#[derive(Debug, Clone)]
pub struct Backload {
    /// The tasks' type.
    pub kind: String,
    /// The tasks' job.
    pub job: String,
    /// The tasks' info.
    pub template: Template,
    /// Where they go.
    pub topic: String,
    /// The first time (the newest when the range runs backwards).
    pub from: DateTime<Tz>,
    /// The last time, included.
    pub to: DateTime<Tz>,
    /// The step.
    pub by: Step,
    /// Take every n-th step (1: all).
    pub every: u32,
    /// The local time of day of each time, for day, week and month steps (applied to `to` as well).
    pub at: Option<NaiveTime>,
    /// Hours to keep.
    pub hours: HourFilter,
    /// One task per row per time, each with the row as its meta (at least one row, maybe empty).
    pub rows: Vec<Meta>,
}

impl Backload {
    /// True when the range runs from newest to oldest (`--from` after `--to`).
    pub fn reversed(&self) -> bool {
        self.from > self.to
    }

    /// The times, in order (newest first when reversed), filtered by hour; fails past `max` times.
    pub fn times(&self, max: usize) -> Result<Vec<DateTime<Tz>>, usize> {
        let tz = self.from.timezone();
        // With a time of day, both ends take it: `--to 2024-03-01 --at 06:30` includes 06:30 that day.
        let with_at = |t: DateTime<Tz>| match (self.by, self.at) {
            (Step::Hour, _) | (_, None) => t,
            (_, Some(at)) => resolve(tz, t.date_naive().and_time(at)).unwrap_or(t),
        };
        let (start, end) = (with_at(self.from), with_at(self.to));
        let mut out = Vec::new();
        let step = i64::from(self.every.max(1));
        for n in 0i64.. {
            let k = if self.reversed() { -n * step } else { n * step };
            let Some(t) = self.nth(start, k) else { break };
            if (!self.reversed() && t > end) || (self.reversed() && t < end) {
                break;
            }
            if self.hours.keeps(t.hour()) {
                if out.len() == max {
                    return Err(max);
                }
                out.push(t);
            }
        }
        Ok(out)
    }

    fn nth(&self, start: DateTime<Tz>, k: i64) -> Option<DateTime<Tz>> {
        let tz = start.timezone();
        let local = start.naive_local();
        let shift_days = |days: i64| -> Option<NaiveDateTime> {
            let d = Days::new(days.unsigned_abs());
            if days >= 0 {
                local.checked_add_days(d)
            } else {
                local.checked_sub_days(d)
            }
        };
        let naive = match self.by {
            Step::Hour => return start.checked_add_signed(chrono::Duration::try_hours(k)?),
            Step::Day => shift_days(k)?,
            Step::Week => shift_days(k.checked_mul(7)?)?,
            Step::Month => {
                let m = Months::new(u32::try_from(k.unsigned_abs()).ok()?);
                if k >= 0 {
                    local.checked_add_months(m)?
                } else {
                    local.checked_sub_months(m)?
                }
            }
        };
        resolve(tz, naive)
    }

    /// The tasks: for each time, one per meta row. Fails when a template reads a meta key a row lacks.
    pub fn tasks(&self, times: &[DateTime<Tz>]) -> Result<Vec<Task>, TemplateError> {
        let mut tasks = Vec::with_capacity(times.len() * self.rows.len());
        for t in times {
            let scheduled = t
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            for row in &self.rows {
                let info = self.template.render(&Vars::at(*t).meta(row))?;
                let mut task = Task::new(&self.kind, info).job(&self.job);
                task.meta = row.clone();
                task.meta.set(keys::SCHEDULED, &scheduled);
                tasks.push(task);
            }
        }
        Ok(tasks)
    }
}

/// A local time in `tz`: the first instant when it happens twice, the time after the jump when it
/// does not exist.
fn resolve(tz: Tz, t: NaiveDateTime) -> Option<DateTime<Tz>> {
    tz.from_local_datetime(&t).earliest().or_else(|| {
        tz.from_local_datetime(&(t + chrono::Duration::hours(1)))
            .earliest()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(from: &str, to: &str, by: Step) -> Backload {
        let parse = |s: &str| {
            chrono_tz::UTC.from_utc_datetime(&DateTime::parse_from_rfc3339(s).unwrap().naive_utc())
        };
        Backload {
            kind: "t".into(),
            job: String::new(),
            template: Template::parse("{yyyy}-{mm}-{dd}T{hh}").unwrap(),
            topic: "t".into(),
            from: parse(from),
            to: parse(to),
            by,
            every: 1,
            at: None,
            hours: HourFilter::default(),
            rows: vec![Meta::new()],
        }
    }

    fn infos(b: &Backload) -> Vec<String> {
        b.tasks(&b.times(10_000).unwrap())
            .unwrap()
            .into_iter()
            .map(|t| t.info)
            .collect()
    }

    #[test]
    fn ranges_run_either_way() {
        let b = plan("2024-01-01T22:00:00Z", "2024-01-02T01:00:00Z", Step::Hour);
        assert_eq!(
            infos(&b),
            [
                "2024-01-01T22",
                "2024-01-01T23",
                "2024-01-02T00",
                "2024-01-02T01"
            ]
        );
        let b = plan("2024-01-02T01:00:00Z", "2024-01-01T22:00:00Z", Step::Hour);
        assert_eq!(
            infos(&b),
            [
                "2024-01-02T01",
                "2024-01-02T00",
                "2024-01-01T23",
                "2024-01-01T22"
            ]
        );
    }

    #[test]
    fn days_weeks_and_months_with_at_and_every() {
        let mut b = plan("2024-01-30T00:00:00Z", "2024-05-01T00:00:00Z", Step::Month);
        assert_eq!(
            infos(&b),
            [
                "2024-01-30T00",
                "2024-02-29T00",
                "2024-03-30T00",
                "2024-04-30T00"
            ]
        );
        b.by = Step::Week;
        b.every = 2;
        b.to = b.from + chrono::Duration::days(40);
        assert_eq!(
            infos(&b),
            ["2024-01-30T00", "2024-02-13T00", "2024-02-27T00"]
        );
        let mut b = plan("2024-01-01T00:00:00Z", "2024-01-03T23:00:00Z", Step::Day);
        b.at = NaiveTime::from_hms_opt(6, 30, 0);
        assert_eq!(
            infos(&b),
            ["2024-01-01T06", "2024-01-02T06", "2024-01-03T06"]
        );
    }

    #[test]
    fn hour_filters_and_limits() {
        let mut b = plan("2024-01-01T00:00:00Z", "2024-01-01T23:00:00Z", Step::Hour);
        b.hours = HourFilter {
            on: 0b1111,
            off: 0b10,
        };
        assert_eq!(
            infos(&b),
            ["2024-01-01T00", "2024-01-01T02", "2024-01-01T03"]
        );
        b.hours = HourFilter::default();
        assert_eq!(b.times(5), Err(5));
    }

    #[test]
    fn one_task_per_row_with_meta_and_scheduled() {
        let mut b = plan("2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z", Step::Hour);
        b.template = Template::parse("{meta:region}/{hh}").unwrap();
        b.rows = vec!["region=eu".parse().unwrap(), "region=us".parse().unwrap()];
        let tasks = b.tasks(&b.times(100).unwrap()).unwrap();
        let infos: Vec<_> = tasks.iter().map(|t| t.info.as_str()).collect();
        assert_eq!(infos, ["eu/00", "us/00", "eu/01", "us/01"]);
        assert_eq!(tasks[3].meta.get("scheduled"), Some("2024-01-01T01:00:00Z"));
        assert_eq!(tasks[3].meta.get("region"), Some("us"));
        b.rows = vec![Meta::new()];
        assert!(b
            .tasks(&b.times(100).unwrap())
            .unwrap_err()
            .to_string()
            .contains("region"));
    }
}
