//! `cron.toml`: the rules file of `taskbus cron`.
//!
//! ```toml
//! [[rule]]
//! name = "hourly-report"          # unique; part of each tick's task id (default: type, or type-job)
//! cron = "0 5 * * * *"            # 5 fields, 6 with seconds first, @hourly…, @every 30s
//! timezone = "Europe/Paris"       # the zone of the fields and of the template (default UTC)
//! type = "report"                 # the task's type
//! job = "hourly"                  # the task's job (optional)
//! template = "s3://bucket/{SLUG}/data.json?day={yyyy}-{mm}-{dd}"   # the task's info
//! offset = "-1h"                  # added to the tick before rendering (or a number of hours: -1)
//! topic = "report"                # where to send it (default: the type)
//! meta = { owner = "data", day = "{yyyy}-{mm}-{dd}" }              # values are templates
//! catch_up = "latest"             # missed ticks: none | latest | all (default latest)
//! catch_up_window = "24h"         # missed ticks older than this are skipped (default 24h)
//! ```
//!
//! Unknown keys are errors, and every error names the file, the line and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{CatchUp, Rule, Schedule};
use crate::config::{parse_duration, parse_offset, parse_timezone, ConfigFile};
use crate::template::Template;
use crate::ConfigError;

/// The default [`Rule::catch_up_window`].
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    cron: Spanned<String>,
    timezone: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    job: String,
    #[serde(default, alias = "info")]
    template: Option<Spanned<String>>,
    offset: Option<Spanned<RawOffset>>,
    topic: Option<Spanned<String>>,
    #[serde(default)]
    meta: BTreeMap<String, Spanned<String>>,
    catch_up: Option<Spanned<String>>,
    catch_up_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawOffset {
    Hours(i64),
    Text(String),
}

/// Reads and checks the rules file at `path`.
pub fn load(path: &Path) -> Result<Vec<Rule>, ConfigError> {
    parse(&ConfigFile::read(path)?)
}

/// Checks the rules of a file already read.
pub fn parse(file: &ConfigFile) -> Result<Vec<Rule>, ConfigError> {
    let raw: RawFile = file.parse()?;
    if raw.rule.is_empty() {
        return Err(ConfigError::flag(
            file.name(),
            "no rules: add a [[rule]] table with cron, type and template",
        ));
    }
    let mut rules = Vec::with_capacity(raw.rule.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, spanned) in raw.rule.iter().enumerate() {
        let span = spanned.span();
        let rule = rule(file, i + 1, spanned.get_ref())?;
        if let Some(first) = names.insert(rule.name.clone(), i + 1) {
            return Err(file.error(
                span,
                format!("rule[{}].name", i + 1),
                format!(
                    "rule name {:?} is also the name of rule[{first}]; give each rule a unique name",
                    rule.name
                ),
            ));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn rule(file: &ConfigFile, n: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
    let key = |field: &str| format!("rule[{n}].{field}");
    let err = |s: &Spanned<String>, field: &str, msg: String| file.error(s.span(), key(field), msg);

    let tz = match &raw.timezone {
        Some(s) => parse_timezone(s.get_ref()).map_err(|m| err(s, "timezone", m))?,
        None => chrono_tz::UTC,
    };
    let schedule =
        Schedule::parse(raw.cron.get_ref(), tz).map_err(|e| err(&raw.cron, "cron", e.reason))?;
    let kind = raw.kind.get_ref().clone();
    check_name(&raw.kind, "type").map_err(|m| err(&raw.kind, "type", m))?;
    let name = match &raw.name {
        Some(s) => {
            check_name(s, "name").map_err(|m| err(s, "name", m))?;
            s.get_ref().clone()
        }
        None if raw.job.is_empty() => kind.clone(),
        None => format!("{kind}-{}", raw.job),
    };
    let topic = match &raw.topic {
        Some(s) => {
            check_name(s, "topic").map_err(|m| err(s, "topic", m))?;
            s.get_ref().clone()
        }
        None => kind.clone(),
    };
    let mut meta = Vec::new();
    for (k, v) in &raw.meta {
        let t = Template::parse(v.get_ref())
            .map_err(|e| err(v, &format!("meta.{k}"), e.to_string()))?;
        if let Some(key) = t.meta_keys().next() {
            return Err(err(
                v,
                &format!("meta.{k}"),
                format!("a meta value cannot read {{meta:{key}}}"),
            ));
        }
        meta.push((k.clone(), t));
    }
    let template = match &raw.template {
        Some(s) => {
            let t = Template::parse(s.get_ref()).map_err(|e| err(s, "template", e.to_string()))?;
            if let Some(missing) = t.meta_keys().find(|k| !raw.meta.contains_key(*k)) {
                return Err(err(s, "template", format!(
                    "{{meta:{missing}}} reads meta key {missing:?}, which this rule's meta does not set; add it to meta"
                )));
            }
            t
        }
        None => Template::parse("").map_err(|e| ConfigError::flag(file.name(), e.to_string()))?,
    };
    let offset = match &raw.offset {
        Some(s) => match s.get_ref() {
            RawOffset::Hours(h) => chrono::Duration::try_hours(*h).ok_or_else(|| {
                file.error(s.span(), key("offset"), format!("{h} hours is too large"))
            })?,
            RawOffset::Text(t) => {
                parse_offset(t).map_err(|m| file.error(s.span(), key("offset"), m))?
            }
        },
        None => chrono::Duration::zero(),
    };
    let catch_up = match &raw.catch_up {
        Some(s) => s.get_ref().parse().map_err(|m| err(s, "catch_up", m))?,
        None => CatchUp::Latest,
    };
    let catch_up_window = match &raw.catch_up_window {
        Some(s) => parse_duration(s.get_ref()).map_err(|m| err(s, "catch_up_window", m))?,
        None => DEFAULT_CATCH_UP_WINDOW,
    };
    Ok(Rule {
        name,
        schedule,
        kind,
        job: raw.job.clone(),
        template,
        offset,
        topic,
        meta,
        catch_up,
        catch_up_window,
    })
}

fn check_name(s: &Spanned<String>, what: &'static str) -> Result<(), String> {
    taskbus_bus::check_name("topic", s.get_ref()).map_err(|e| match e {
        taskbus_bus::BusError::InvalidName { reason, .. } => {
            format!("{what} {:?}: {reason}", s.get_ref())
        }
        other => other.to_string(),
    })
}
