//! Workflow files: TOML `[[phase]]` tables, one workflow per file, a file or a directory of them.
//!
//! ```toml
//! [[phase]]
//! name = "extract"                      # unique in the file (default: the task, "type" or "type:job")
//! task = "extract:daily"                # the task's type and optional job
//! topic = "extract"                     # where it is sent (default: the type)
//! rule = { cron = "0 5 * * *", timezone = "Europe/Paris", offset = "-1d" }
//! template = "s3://in/{yyyy}/{mm}/{dd}/"   # the task's info
//! meta = { day = "{yyyy}-{mm}-{dd}" }   # meta set on the task; values are templates
//! retry = { retries = 3, delay = "30s", backoff = "exponential", jitter = "5s", max_delay = "10m" }
//!
//! [[phase]]
//! name = "load"
//! task = "load"
//! depends_on = ["extract", "transform"] # one name, or several: starts once all completed in the run
//! rule = { require = ["file"] }         # start only when the parents' meta has a non-empty `file`
//! template = "{meta:file}?day={meta:extract.day}"   # parents' meta; PARENT.key reads one parent
//! retry = 2                             # 2 retries, 30s apart
//! ```
//!
//! | key | meaning |
//! |---|---|
//! | `name` | the phase's name: `depends_on` and the `phase` meta key use it |
//! | `task` | `type` or `type:job` of the phase's task |
//! | `topic` | the topic its task goes to (default: the type) |
//! | `depends_on` | a phase name, or a list: the phase starts when all of them completed in the same run. A name without a job (`"extract"`) also finds the one phase of that type |
//! | `rule.cron` | a root phase's schedule (5 or 6 fields, `@daily`, `@every 1h`): each tick starts the run of that scheduled time |
//! | `rule.manual` | `true`: a root phase started by hand (`taskbus flow start`, or a task of its type sent without workflow meta) |
//! | `rule.timezone` | the zone of the cron fields and of the templates (default UTC) |
//! | `rule.offset` | added to the phase's time before rendering (`-1d`, `-6h`, or a number of hours) |
//! | `rule.catch_up`, `rule.catch_up_window` | missed ticks after a restart: `none`, `latest` (default), `all`, within the window (24h) |
//! | `rule.require` | meta keys the parents must have set (non-empty), else the phase and its descendants are skipped |
//! | `retry` | a number of retries (30s apart), or a table as in `retry.toml`: `retries`, `delay`, `backoff`, `factor`, `jitter`, `max_delay`, `retry_on`, `no_retry_on` |
//! | `template` | the task's info; placeholders as in [`template`](crate::template) |
//! | `meta` | meta keys of the task, values are templates |
//!
//! Every template reads the run's `{meta:workflow}`, `{meta:run}`, `{meta:phase}` and
//! `{meta:scheduled}`, and a child's templates read its parents' done meta: `{meta:key}` (the first
//! parent in `depends_on` order that has it), or `{meta:PARENT.key}` for one parent's value (for
//! parent names of letters, digits, `.`, `_` and `-`: give a phase whose task has a job a `name`).
//!
//! ## flowlord files
//!
//! pcelvng flowlord's workflow files load as they are:
//!
//! ```toml
//! [[Phase]]
//! task = "topic:job"
//! dependsOn = "parent:job"
//! rule = "cron=0 0 1 * * *&offset=-6h&retry_delay=30s&require={meta:file}&job=x"
//! retry = 3
//! template = "?day={yyyy}-{mm}-{dd}"
//! ```
//!
//! `Phase`/`phase`, `Task`, `DependsOn`/`dependsOn`, `Rule`, `Retry`, `Template` are read in either
//! case; the rule string's `cron`, `offset` (a duration, or hours), `require` (`{meta:key}` or
//! `key`, several separated by commas), `job` and `retry_delay` (the delay of `retry`, plus up to
//! 40% jitter as flowlord adds) are understood. `files=` rules (flowlord's file watcher) are not:
//! such a phase loads as started by hand, with a warning.
//!
//! ## Checks
//!
//! A file is rejected, with the file, line, phase and reason, when: TOML or a key is wrong; a task,
//! topic or name is invalid or repeated; `depends_on` names an unknown or ambiguous phase; the
//! phases form a cycle (named: `a -> b -> c -> a`); a phase has no trigger (no `depends_on`, no
//! cron, not manual) or both parents and a cron; a cron, zone, offset or duration does not parse; a
//! template has an unknown placeholder, reads `{meta:X.key}` of a phase X that is not its parent, or
//! (in a cron phase, which has no parents) reads a meta key nothing sets.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use taskbus_bus::Meta;
use toml::Spanned;

use super::workflow::{CronTrigger, Phase, Trigger, Workflow, FRAMEWORK_KEYS};
use crate::config::{parse_duration, parse_offset, parse_timezone, ConfigFile};
use crate::cron::{CatchUp, Schedule};
use crate::retry::{Backoff, Policy};
use crate::template::Template;
use crate::ConfigError;

/// The default delay between retries of a phase.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(30);

/// One or more workflow files that cannot be used; every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The problems, each naming the file, the line, the phase and the reason.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError { errors: vec![e] }
    }
}

/// A checked workflow file, and what loading it noticed without rejecting it.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The workflow.
    pub workflow: Workflow,
    /// Things accepted but worth saying (a flowlord `files=` rule …).
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, alias = "Phase")]
    phase: Vec<Spanned<RawPhase>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    #[serde(alias = "Name")]
    name: Option<Spanned<String>>,
    #[serde(alias = "Task")]
    task: Option<Spanned<String>>,
    #[serde(alias = "Topic")]
    topic: Option<Spanned<String>>,
    #[serde(alias = "dependsOn", alias = "DependsOn", alias = "dependson")]
    depends_on: Option<Spanned<toml::Value>>,
    #[serde(alias = "Rule")]
    rule: Option<Spanned<toml::Value>>,
    #[serde(alias = "Retry")]
    retry: Option<Spanned<toml::Value>>,
    #[serde(alias = "Template", alias = "info")]
    template: Option<Spanned<String>>,
    #[serde(default, alias = "Meta")]
    meta: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    cron: Option<String>,
    timezone: Option<String>,
    offset: Option<toml::Value>,
    catch_up: Option<String>,
    catch_up_window: Option<String>,
    require: Option<toml::Value>,
    #[serde(default)]
    manual: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryTable {
    retries: Option<u32>,
    delay: Option<String>,
    backoff: Option<String>,
    factor: Option<f64>,
    jitter: Option<String>,
    max_delay: Option<String>,
    #[serde(default)]
    retry_on: Vec<String>,
    #[serde(default)]
    no_retry_on: Vec<String>,
}

/// A phase's rule, from a table or a flowlord query string.
#[derive(Debug, Default)]
struct Rule {
    cron: Option<String>,
    timezone: Option<String>,
    offset: Option<String>,
    catch_up: Option<String>,
    catch_up_window: Option<String>,
    require: Vec<String>,
    manual: bool,
    job: Option<String>,
    retry_delay: Option<String>,
    files: Option<String>,
}

/// Reads and checks one workflow file; `name` is what the `workflow` meta key calls it.
pub fn load_file(path: &Path, name: &str) -> Result<Parsed, LoadError> {
    parse(&ConfigFile::read(path)?, name)
}

/// Checks a workflow file already read.
pub fn parse(file: &ConfigFile, name: &str) -> Result<Parsed, LoadError> {
    let raw: RawFile = file.parse()?;
    if raw.phase.is_empty() {
        return Err(ConfigError::flag(
            file.name(),
            "no phases: add [[phase]] tables with task, and depends_on or a rule with cron",
        )
        .into());
    }
    let mut checker = Checker {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let drafts: Vec<Option<Draft>> = raw
        .phase
        .iter()
        .enumerate()
        .map(|(i, p)| checker.draft(i, p))
        .collect();
    let names = checker.unique_names(&drafts);
    let mut phases = Vec::new();
    let mut spans = Vec::new();
    for (i, draft) in drafts.into_iter().enumerate() {
        let Some(draft) = draft else { continue };
        let raw_phase = raw.phase[i].get_ref();
        if let Some(phase) = checker.phase(draft, raw_phase, &names) {
            spans.push(raw.phase[i].span());
            phases.push(phase);
        }
    }
    if !checker.errors.is_empty() {
        return Err(LoadError {
            errors: checker.errors,
        });
    }
    let workflow = Workflow::new(name, phases).map_err(|cycle| {
        let first = cycle.phases.first().cloned().unwrap_or_default();
        let at = names.get(&first).map_or(0..0, |i| raw.phase[*i].span());
        file.error(
            at,
            format!("phase {first:?}.depends_on"),
            format!("the phases depend on each other in a cycle: {cycle}; remove one of these depends_on"),
        )
    })?;
    checker.check_meta_reads(&workflow, &spans);
    if !checker.errors.is_empty() {
        return Err(LoadError {
            errors: checker.errors,
        });
    }
    Ok(Parsed {
        workflow,
        warnings: checker.warnings,
    })
}

/// A phase with its own fields checked, before parents are resolved.
struct Draft {
    name: String,
    kind: String,
    job: String,
    topic: String,
    rule: Rule,
    span: Range<usize>,
}

struct Checker<'a> {
    file: &'a ConfigFile,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, key: String, message: impl Into<String>) {
        self.errors.push(self.file.error(span, key, message));
    }

    fn draft(&mut self, i: usize, raw: &Spanned<RawPhase>) -> Option<Draft> {
        let p = raw.get_ref();
        let label = match (&p.name, &p.task) {
            (Some(n), _) => format!("phase {:?}", n.get_ref()),
            (None, Some(t)) => format!("phase {:?}", t.get_ref()),
            (None, None) => format!("phase[{}]", i + 1),
        };
        let Some(task) = &p.task else {
            self.error(
                raw.span(),
                label,
                "task is missing; write task = \"TYPE\" or \"TYPE:JOB\"",
            );
            return None;
        };
        let (kind, mut job) = match task.get_ref().split_once(':') {
            Some((k, j)) => (k.to_owned(), j.to_owned()),
            None => (task.get_ref().clone(), String::new()),
        };
        let rule = match &p.rule {
            Some(r) => match rule_of(r.get_ref()) {
                Ok(rule) => rule,
                Err(m) => {
                    self.error(r.span(), format!("{label}.rule"), m);
                    return None;
                }
            },
            None => Rule::default(),
        };
        if let Some(j) = &rule.job {
            if job.is_empty() {
                job.clone_from(j);
            } else if *j != job {
                self.error(
                    task.span(),
                    format!("{label}.task"),
                    format!("the task names job {job:?} and the rule job={j:?}; keep one"),
                );
            }
        }
        if let Err(m) = name_ok("type", &kind).and_then(|()| {
            if job.is_empty() {
                Ok(())
            } else {
                name_ok("job", &job)
            }
        }) {
            self.error(task.span(), format!("{label}.task"), m);
            return None;
        }
        let topic = match &p.topic {
            Some(t) => {
                if let Err(m) = name_ok("topic", t.get_ref()) {
                    self.error(t.span(), format!("{label}.topic"), m);
                }
                t.get_ref().clone()
            }
            None => kind.clone(),
        };
        let name = match &p.name {
            Some(n) => {
                if let Err(m) = phase_name_ok(n.get_ref()) {
                    self.error(n.span(), format!("{label}.name"), m);
                }
                n.get_ref().clone()
            }
            None if job.is_empty() => kind.clone(),
            None => format!("{kind}:{job}"),
        };
        Some(Draft {
            name,
            kind,
            job,
            topic,
            rule,
            span: raw.span(),
        })
    }

    /// Name → index of the first phase with it; repeated names are errors.
    fn unique_names(&mut self, drafts: &[Option<Draft>]) -> HashMap<String, usize> {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, d) in drafts.iter().enumerate() {
            let Some(d) = d else { continue };
            if let Some(first) = names.get(&d.name) {
                let line = self
                    .file
                    .line_col(drafts[*first].as_ref().map_or(0, |f| f.span.start))
                    .0;
                self.error(
                    d.span.clone(),
                    format!("phase {:?}", d.name),
                    format!(
                        "the name {:?} is also the name of the phase at line {line}; give one of them a name = \"...\"",
                        d.name
                    ),
                );
            } else {
                names.insert(d.name.clone(), i);
            }
        }
        names
    }

    fn phase(&mut self, d: Draft, raw: &RawPhase, names: &HashMap<String, usize>) -> Option<Phase> {
        let label = format!("phase {:?}", d.name);
        let before = self.errors.len();
        let parents = self.parents(&d, raw, names, &label);
        let timezone = match &d.rule.timezone {
            Some(tz) => parse_timezone(tz).unwrap_or_else(|m| {
                self.error(rule_span(raw, &d), format!("{label}.rule.timezone"), m);
                chrono_tz::UTC
            }),
            None => chrono_tz::UTC,
        };
        let declared = raw.depends_on.as_ref().is_some_and(|d| match d.get_ref() {
            toml::Value::String(s) => !s.trim().is_empty(),
            toml::Value::Array(items) => !items.is_empty(),
            _ => true,
        });
        let trigger = self.trigger(&d, raw, declared, timezone, &label);
        let offset = match &d.rule.offset {
            Some(o) => offset_of(o).unwrap_or_else(|m| {
                self.error(rule_span(raw, &d), format!("{label}.rule.offset"), m);
                chrono::Duration::zero()
            }),
            None => chrono::Duration::zero(),
        };
        let template = match &raw.template {
            Some(t) => Template::parse(t.get_ref()).unwrap_or_else(|e| {
                self.error(t.span(), format!("{label}.template"), e.to_string());
                empty_template()
            }),
            None => empty_template(),
        };
        let mut meta = Vec::new();
        for (k, v) in &raw.meta {
            match Template::parse(v.get_ref()) {
                Ok(t) => meta.push((k.clone(), t)),
                Err(e) => self.error(v.span(), format!("{label}.meta.{k}"), e.to_string()),
            }
        }
        let retry = self.retry(&d, raw, &label);
        if matches!(trigger, Trigger::Cron(_)) && !d.rule.require.is_empty() {
            self.error(
                rule_span(raw, &d),
                format!("{label}.rule.require"),
                "a cron phase has no parents whose meta it could require; put require on a phase with depends_on",
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Phase {
            name: d.name,
            kind: d.kind,
            job: d.job,
            topic: d.topic.clone(),
            parents,
            children: Vec::new(),
            trigger,
            template,
            meta,
            require: d.rule.require,
            retry: Policy {
                topic: Some(d.topic),
                ..retry
            },
            offset,
            timezone,
        })
    }

    fn parents(
        &mut self,
        d: &Draft,
        raw: &RawPhase,
        names: &HashMap<String, usize>,
        label: &str,
    ) -> Vec<usize> {
        let Some(dep) = &raw.depends_on else {
            return Vec::new();
        };
        let list: Vec<String> = match dep.get_ref() {
            toml::Value::String(s) if s.trim().is_empty() => Vec::new(),
            toml::Value::String(s) => vec![s.trim().to_owned()],
            toml::Value::Array(items) => items
                .iter()
                .filter_map(|v| match v {
                    toml::Value::String(s) => Some(s.trim().to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let well_typed = match dep.get_ref() {
            toml::Value::String(_) => true,
            toml::Value::Array(items) => items.iter().all(toml::Value::is_str),
            _ => false,
        };
        let key = format!("{label}.depends_on");
        if !well_typed {
            self.error(
                dep.span(),
                key,
                "depends_on is a phase name or a list of names, such as [\"extract\", \"transform\"]",
            );
            return Vec::new();
        }
        let mut parents = Vec::new();
        for parent in list {
            match resolve_parent(&parent, names) {
                Ok(i) if i == names.get(&d.name).copied().unwrap_or(usize::MAX) => self.error(
                    dep.span(),
                    key.clone(),
                    format!("{parent:?} is this phase itself: a phase cannot wait for itself"),
                ),
                Ok(i) if parents.contains(&i) => self.error(
                    dep.span(),
                    key.clone(),
                    format!("{parent:?} is listed twice"),
                ),
                Ok(i) => parents.push(i),
                Err(m) => self.error(dep.span(), key.clone(), m),
            }
        }
        parents
    }

    fn trigger(
        &mut self,
        d: &Draft,
        raw: &RawPhase,
        has_parents: bool,
        timezone: chrono_tz::Tz,
        label: &str,
    ) -> Trigger {
        let span = rule_span(raw, d);
        if let Some(files) = &d.rule.files {
            self.warnings.push(format!(
                "{}: {label}: rule files={files} is not supported (taskbus flow has no file watcher); the phase starts only by hand",
                self.file.name()
            ));
        }
        match (&d.rule.cron, !has_parents) {
            (Some(_), false) => {
                self.error(span, format!("{label}.rule.cron"),
                    "a phase with depends_on starts when its parents complete, so it cannot also have a cron; remove one of them");
                Trigger::Parents
            }
            (None, false) => Trigger::Parents,
            (Some(expr), true) => self.cron(d, expr, timezone, span, label),
            (None, true) if d.rule.manual || d.rule.files.is_some() => Trigger::Manual,
            (None, true) => {
                self.error(span, label.to_owned(),
                    "the phase has no trigger: add depends_on = [\"PARENT\"], a rule with a cron (rule = { cron = \"0 5 * * *\" }), or rule = { manual = true } for a phase started by hand");
                Trigger::Manual
            }
        }
    }

    fn cron(
        &mut self,
        d: &Draft,
        expr: &str,
        timezone: chrono_tz::Tz,
        span: Range<usize>,
        label: &str,
    ) -> Trigger {
        let schedule = match Schedule::parse(expr, timezone) {
            Ok(s) => s,
            Err(e) => {
                self.error(span, format!("{label}.rule.cron"), e.to_string());
                return Trigger::Manual;
            }
        };
        let catch_up = match &d.rule.catch_up {
            Some(c) => c.parse::<CatchUp>().unwrap_or_else(|m| {
                self.error(span.clone(), format!("{label}.rule.catch_up"), m);
                CatchUp::Latest
            }),
            None => CatchUp::Latest,
        };
        let catch_up_window = match &d.rule.catch_up_window {
            Some(w) => parse_duration(w).unwrap_or_else(|m| {
                self.error(span.clone(), format!("{label}.rule.catch_up_window"), m);
                Duration::ZERO
            }),
            None => crate::cron::config::DEFAULT_CATCH_UP_WINDOW,
        };
        Trigger::Cron(CronTrigger {
            schedule,
            catch_up,
            catch_up_window,
        })
    }

    fn retry(&mut self, d: &Draft, raw: &RawPhase, label: &str) -> Policy {
        let none = Policy {
            retries: 0,
            ..Policy::default()
        };
        let Some(retry) = &raw.retry else {
            if d.rule.retry_delay.is_some() {
                self.warnings.push(format!(
                    "{}: {label}: rule retry_delay without retry = N does nothing",
                    self.file.name()
                ));
            }
            return none;
        };
        let key = format!("{label}.retry");
        match retry.get_ref() {
            toml::Value::Integer(n) => {
                let Ok(retries) = u32::try_from(*n) else {
                    self.error(
                        retry.span(),
                        key,
                        format!("{n} is not a number of retries; write 0 or more"),
                    );
                    return none;
                };
                let (delay, jitter) = match &d.rule.retry_delay {
                    Some(s) => match parse_duration(s) {
                        Ok(delay) => (delay, delay.mul_f64(0.4)),
                        Err(m) => {
                            self.error(rule_span(raw, d), format!("{label}.rule.retry_delay"), m);
                            return none;
                        }
                    },
                    None => (DEFAULT_RETRY_DELAY, Duration::ZERO),
                };
                Policy {
                    retries,
                    delay,
                    jitter,
                    ..Policy::default()
                }
            }
            toml::Value::Table(_) => match retry.get_ref().clone().try_into::<RetryTable>() {
                Ok(table) => policy_of(table).unwrap_or_else(|m| {
                    self.error(retry.span(), key, m);
                    none
                }),
                Err(e) => {
                    self.error(retry.span(), key, e.message().trim_end().to_owned());
                    none
                }
            },
            _ => {
                self.error(retry.span(), key,
                    "retry is a number of retries (retry = 3) or a table (retry = { retries = 3, delay = \"30s\" })");
                none
            }
        }
    }

    /// `{meta:X.key}` must name a parent X; a cron phase (no parents) may only read keys it sets.
    fn check_meta_reads(&mut self, workflow: &Workflow, spans: &[Range<usize>]) {
        for (i, phase) in workflow.phases().iter().enumerate() {
            let label = format!("phase {:?}", phase.name);
            let own: Vec<&str> = phase.meta.iter().map(|(k, _)| k.as_str()).collect();
            let templates = std::iter::once(("template", &phase.template, true))
                .chain(phase.meta.iter().map(|(_, t)| ("meta", t, false)));
            for (what, template, may_read_own) in templates {
                for key in template.meta_keys() {
                    if let Some(m) =
                        meta_read_problem(workflow, i, key, may_read_own.then_some(&own[..]))
                    {
                        self.error(spans[i].clone(), format!("{label}.{what}"), m);
                    }
                }
            }
        }
    }
}

fn meta_read_problem(
    workflow: &Workflow,
    index: usize,
    key: &str,
    own: Option<&[&str]>,
) -> Option<String> {
    let phase = workflow.phase(index);
    if let Some((prefix, _)) = key.split_once('.') {
        if let Some(p) = workflow.index_of(prefix) {
            if !phase.parents.contains(&p) {
                let parents: Vec<&str> = phase
                    .parents
                    .iter()
                    .map(|p| workflow.phase(*p).name.as_str())
                    .collect();
                return Some(format!(
                    "{{meta:{key}}} reads the meta of phase {prefix:?}, which is not a parent of this phase (its parents: {parents:?}); add it to depends_on"
                ));
            }
        }
    }
    let framework = FRAMEWORK_KEYS.contains(&key);
    let set_here = own.is_some_and(|own| own.contains(&key));
    if matches!(phase.trigger, Trigger::Cron(_)) && !framework && !set_here {
        return Some(format!(
            "{{meta:{key}}}: a cron phase has no parents whose meta it could read; set {key} in this phase's meta, or read only {FRAMEWORK_KEYS:?}"
        ));
    }
    None
}

fn resolve_parent(parent: &str, names: &HashMap<String, usize>) -> Result<usize, String> {
    if let Some(i) = names.get(parent) {
        return Ok(*i);
    }
    if !parent.contains(':') {
        let prefix = format!("{parent}:");
        let mut matches: Vec<(&String, &usize)> = names
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .collect();
        matches.sort();
        match matches.as_slice() {
            [(_, i)] => return Ok(**i),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "{parent:?} could be any of {names:?}; name one of them"
                ));
            }
        }
    }
    let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
    known.sort_unstable();
    Err(format!(
        "no phase is called {parent:?}; the phases are {known:?}"
    ))
}

fn rule_span(raw: &RawPhase, d: &Draft) -> Range<usize> {
    raw.rule.as_ref().map_or(d.span.clone(), Spanned::span)
}

fn rule_of(value: &toml::Value) -> Result<Rule, String> {
    match value {
        toml::Value::String(s) => flowlord_rule(s),
        toml::Value::Table(_) => {
            let t: RuleTable = value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| e.message().trim_end().to_owned())?;
            let offset = match t.offset {
                None => None,
                Some(toml::Value::Integer(h)) => Some(h.to_string()),
                Some(toml::Value::String(s)) => Some(s),
                Some(other) => {
                    return Err(format!(
                        "offset {other} is not an offset; write \"-1d\", \"-6h\" or a number of hours"
                    ))
                }
            };
            let require = match t.require {
                None => Vec::new(),
                Some(toml::Value::String(s)) => require_keys(&s),
                Some(toml::Value::Array(items)) => {
                    let mut keys = Vec::new();
                    for item in items {
                        match item {
                            toml::Value::String(s) => keys.extend(require_keys(&s)),
                            other => return Err(format!("require lists meta keys; {other} is not one")),
                        }
                    }
                    keys
                }
                Some(other) => return Err(format!("require lists meta keys; {other} is not a list")),
            };
            Ok(Rule {
                cron: t.cron,
                timezone: t.timezone,
                offset,
                catch_up: t.catch_up,
                catch_up_window: t.catch_up_window,
                require,
                manual: t.manual,
                ..Rule::default()
            })
        }
        _ => Err(
            "rule is a table (rule = { cron = \"0 5 * * *\" }) or a flowlord string (rule = \"cron=0 0 5 * * *\")"
                .to_owned(),
        ),
    }
}

/// A flowlord rule: `cron=…&offset=…&require=…&retry_delay=…&job=…&files=…`.
fn flowlord_rule(s: &str) -> Result<Rule, String> {
    let mut rule = Rule::default();
    let pairs: Meta = s.parse().unwrap_or_default();
    for (key, value) in pairs.iter() {
        let lower = key.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("require:") {
            // flowlord's README writes `require:{meta:file}`.
            rule.require
                .extend(require_keys(&key[key.len() - rest.len()..]));
            continue;
        }
        let value = value.trim().to_owned();
        match lower.as_str() {
            "cron" => rule.cron = Some(value),
            "offset" => rule.offset = Some(value),
            "require" => rule.require.extend(require_keys(&value)),
            "retry_delay" => rule.retry_delay = Some(value),
            "job" => rule.job = Some(value),
            "files" => rule.files = Some(value),
            "timezone" | "tz" => rule.timezone = Some(value),
            "catch_up" => rule.catch_up = Some(value),
            "catch_up_window" => rule.catch_up_window = Some(value),
            "manual" => rule.manual = matches!(value.as_str(), "true" | "1" | "yes" | ""),
            "" => {}
            other => {
                return Err(format!(
                    "unknown rule key {other:?} in {s:?}; a rule string knows cron, offset, require, retry_delay, job, files, timezone, catch_up, catch_up_window and manual"
                ))
            }
        }
    }
    Ok(rule)
}

/// `{meta:file}`, `{meta:a},{meta:b}`, `file` or `a,b` → the keys.
fn require_keys(s: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = s;
    let mut found = false;
    while let Some(start) = rest.find("{meta:") {
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else { break };
        keys.push(after[..end].trim().to_owned());
        rest = &after[end + 1..];
        found = true;
    }
    if !found {
        keys.extend(
            s.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        );
    }
    keys.retain(|k| !k.is_empty());
    keys
}

fn offset_of(s: &str) -> Result<chrono::Duration, String> {
    if let Ok(hours) = s.trim().parse::<i64>() {
        return chrono::Duration::try_hours(hours)
            .ok_or_else(|| format!("{hours} hours is too large"));
    }
    parse_offset(s)
}

fn policy_of(t: RetryTable) -> Result<Policy, String> {
    let dur = |s: &Option<String>| s.as_deref().map(parse_duration).transpose();
    let backoff = match t.backoff.as_deref() {
        None | Some("fixed") => Backoff::Fixed,
        Some("linear") => Backoff::Linear,
        Some("exponential") => Backoff::Exponential {
            factor: t.factor.unwrap_or(2.0),
        },
        Some(other) => {
            return Err(format!(
                "backoff {other:?} is not a backoff; use fixed, linear or exponential"
            ))
        }
    };
    if let Some(f) = t.factor {
        if !matches!(backoff, Backoff::Exponential { .. }) {
            return Err("factor only applies to backoff = \"exponential\"".to_owned());
        }
        if !(f.is_finite() && f >= 1.0) {
            return Err(format!("factor {f} must be 1 or more"));
        }
    }
    Ok(Policy {
        retries: t.retries.unwrap_or(3),
        delay: dur(&t.delay)?.unwrap_or(DEFAULT_RETRY_DELAY),
        backoff,
        jitter: dur(&t.jitter)?.unwrap_or(Duration::ZERO),
        max_delay: dur(&t.max_delay)?,
        retry_on: t.retry_on,
        no_retry_on: t.no_retry_on,
        ..Policy::default()
    })
}

fn name_ok(what: &'static str, name: &str) -> Result<(), String> {
    taskbus_bus::check_name("topic", name).map_err(|e| match e {
        taskbus_bus::BusError::InvalidName { reason, .. } => format!("{what} {name:?}: {reason}"),
        other => other.to_string(),
    })
}

fn phase_name_ok(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("a phase name has 1 to 200 characters".to_owned());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        Some(c) => Err(format!(
            "phase name {name:?} contains {c:?}; use letters, digits, '.', '_', '-' and ':'"
        )),
        None => Ok(()),
    }
}

/// One loaded workflow file.
#[derive(Debug, Clone)]
struct Loaded {
    checksum: u64,
    workflow: Arc<Workflow>,
}

/// The workflows of a file or a directory (every `*.toml` below it), named by their path relative to
/// the directory, and reloaded when a file's checksum changes.
#[derive(Debug, Clone)]
pub struct WorkflowSet {
    path: PathBuf,
    is_dir: bool,
    files: BTreeMap<String, Loaded>,
    /// Checksums of files whose last version was rejected, so each bad version is reported once.
    rejected: HashMap<String, u64>,
    warnings: Vec<String>,
}

/// What a [`WorkflowSet::reload`] changed.
#[derive(Debug, Default)]
pub struct Reload {
    /// Workflows added or changed (the new version is in use).
    pub changed: Vec<Arc<Workflow>>,
    /// Workflows whose file is gone.
    pub removed: Vec<String>,
    /// Files whose new version was rejected: the last good version (if any) stays in use.
    pub rejected: Vec<(String, LoadError)>,
    /// Warnings of the versions loaded.
    pub warnings: Vec<String>,
}

impl WorkflowSet {
    /// Loads the workflow file, or every `*.toml` file below the directory, at `path`. Every file must
    /// be valid; the error lists every problem of every file.
    pub fn load(path: &Path) -> Result<WorkflowSet, LoadError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            ConfigError::flag(
                path.display().to_string(),
                format!("cannot read the workflow path ({e}); give a workflow file or a directory of them"),
            )
        })?;
        let mut set = WorkflowSet {
            path: path.to_owned(),
            is_dir: meta.is_dir(),
            files: BTreeMap::new(),
            rejected: HashMap::new(),
            warnings: Vec::new(),
        };
        let report = set.reload();
        if !report.rejected.is_empty() {
            return Err(LoadError {
                errors: report
                    .rejected
                    .into_iter()
                    .flat_map(|(_, e)| e.errors)
                    .collect(),
            });
        }
        if set.files.is_empty() {
            return Err(ConfigError::flag(
                path.display().to_string(),
                "no workflow files (*.toml) in this directory",
            )
            .into());
        }
        set.warnings = report.warnings;
        Ok(set)
    }

    /// The path given to [`WorkflowSet::load`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The workflows, by name.
    pub fn workflows(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.files.values().map(|l| &l.workflow)
    }

    /// The workflow called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.files.get(name).map(|l| &l.workflow)
    }

    /// Warnings of the first load.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads the files again; changed files that pass the checks replace their workflow, changed
    /// files that fail keep the last good version, and files gone are removed.
    pub fn reload(&mut self) -> Reload {
        let mut report = Reload::default();
        let files = match self.list() {
            Ok(files) => files,
            Err(e) => {
                report.rejected.push((String::new(), e.into()));
                return report;
            }
        };
        let present: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        for (name, path) in files {
            self.reload_one(&name, &path, &mut report);
        }
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.files.remove(&name);
            report.removed.push(name);
        }
        report
    }

    fn reload_one(&mut self, name: &str, path: &Path, report: &mut Reload) {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                let err = ConfigError::flag(
                    path.display().to_string(),
                    format!("cannot read the file ({e})"),
                );
                report.rejected.push((name.to_owned(), err.into()));
                return;
            }
        };
        let sum = checksum(&text);
        if self.files.get(name).is_some_and(|l| l.checksum == sum)
            || self.rejected.get(name) == Some(&sum)
        {
            return;
        }
        let file = ConfigFile::new(
            path.display().to_string(),
            String::from_utf8_lossy(&text).into_owned(),
        );
        match parse(&file, name) {
            Ok(parsed) => {
                self.rejected.remove(name);
                let workflow = Arc::new(parsed.workflow);
                report.warnings.extend(parsed.warnings);
                report.changed.push(workflow.clone());
                self.files.insert(
                    name.to_owned(),
                    Loaded {
                        checksum: sum,
                        workflow,
                    },
                );
            }
            Err(e) => {
                self.rejected.insert(name.to_owned(), sum);
                report.rejected.push((name.to_owned(), e));
            }
        }
    }

    /// The workflow files: name → path.
    fn list(&self) -> Result<Vec<(String, PathBuf)>, ConfigError> {
        if !self.is_dir {
            let name = self.path.file_name().map_or_else(
                || self.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            return Ok(vec![(name, self.path.clone())]);
        }
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                ConfigError::flag(
                    dir.display().to_string(),
                    format!("cannot list the directory ({e})"),
                )
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if file_name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if file_name.ends_with(".toml") {
                    let rel = path.strip_prefix(&self.path).unwrap_or(&path);
                    let name = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push((name, path));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn empty_template() -> Template {
    Template::parse("").expect("an empty template has no placeholder")
}

/// FNV-1a over the bytes: enough to notice that a file changed.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Parsed, LoadError> {
        parse(&ConfigFile::new("w.toml", text), "w.toml")
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn require_keys_read_every_form() {
        assert_eq!(require_keys("{meta:file}"), ["file"]);
        assert_eq!(require_keys("{meta:a},{meta:b}"), ["a", "b"]);
        assert_eq!(require_keys("a, b"), ["a", "b"]);
    }

    #[test]
    fn flowlord_rules_parse() {
        let r =
            flowlord_rule("cron=0 0 1 * * *&offset=-6h&retry_delay=30s&require={meta:file}&job=x")
                .unwrap();
        assert_eq!(r.cron.as_deref(), Some("0 0 1 * * *"));
        assert_eq!(r.offset.as_deref(), Some("-6h"));
        assert_eq!(r.retry_delay.as_deref(), Some("30s"));
        assert_eq!(r.require, ["file"]);
        assert_eq!(r.job.as_deref(), Some("x"));
        assert_eq!(
            flowlord_rule("require:{meta:file}").unwrap().require,
            ["file"]
        );
        assert!(flowlord_rule("crn=1").unwrap_err().contains("\"crn\""));
        assert_eq!(offset_of("-6").unwrap(), -chrono::Duration::hours(6));
    }

    #[test]
    fn errors_name_file_line_phase_and_reason() {
        let e = err("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n\n[[phase]]\ntask = \"b\"\ndepends_on = \"x\"\n");
        assert!(e.starts_with("w.toml:7:"), "{e}");
        assert!(e.contains("phase \"b\".depends_on"), "{e}");
        assert!(e.contains("no phase is called \"x\""), "{e}");
        let e = err("[[phase]]\ntask = \"a\"\nrule = { cron = \"61 * * * *\" }\n");
        assert!(
            e.contains("phase \"a\".rule.cron") && e.contains("61"),
            "{e}"
        );
        let e = err("[[phase]]\ntask = \"a\"\n");
        assert!(e.contains("no trigger"), "{e}");
        let e =
            err("[[phase]]\ntask = \"a\"\nrule = { manual = true }\ntemplate = \"{yyyy}{dday}\"\n");
        assert!(
            e.contains("phase \"a\".template") && e.contains("{dday}"),
            "{e}"
        );
    }
}
