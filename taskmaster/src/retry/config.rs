//! `retry.toml`: the rules file of `taskbus retry`.
//!
//! ```toml
//! done_topic = "done"        # where workers publish done tasks (default done)
//! group = "retry"            # this app's consumer group on it (default retry)
//! failed_topic = "failed"    # where tasks go when they will not be retried (default failed)
//!
//! [[rule]]
//! type = "flaky"             # the task type, or "*" for any
//! job = "nightly"            # optional: only this job (a rule with a job wins over one without)
//! retries = 3                # retries after the first run (default 3)
//! delay = "30s"              # base delay (default 30s)
//! backoff = "exponential"    # fixed | linear | exponential (default fixed)
//! factor = 2.0               # exponential growth (default 2)
//! jitter = "5s"              # up to this much added to each delay (default 0)
//! max_delay = "10m"          # cap on any delay (default none)
//! results = ["error"]        # which results retry; warn and alert never do (default ["error"])
//! retry_on = ["timeout"]     # only when the message contains one of these (default: any)
//! no_retry_on = ["bad input"]  # never when the message contains one of these
//! topic = "flaky"            # where the retry goes (default: the task's type)
//! ```

use std::path::Path;

use serde::Deserialize;
use taskbus_bus::TaskResult;
use toml::Spanned;

use super::{Backoff, Policy, RetryRule, RetryRules};
use crate::config::{parse_duration, ConfigFile};
use crate::ConfigError;

/// A checked `retry.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// The topic done tasks arrive on.
    pub done_topic: String,
    /// The consumer group of the retry app.
    pub group: String,
    /// The rules and the failed topic.
    pub rules: RetryRules,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    done_topic: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    failed_topic: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    job: Option<String>,
    retries: Option<u32>,
    delay: Option<Spanned<String>>,
    backoff: Option<Spanned<String>>,
    factor: Option<Spanned<f64>>,
    jitter: Option<Spanned<String>>,
    max_delay: Option<Spanned<String>>,
    results: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    retry_on: Vec<String>,
    #[serde(default)]
    no_retry_on: Vec<String>,
    topic: Option<Spanned<String>>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<RetryConfig, ConfigError> {
    parse(&ConfigFile::read(path)?)
}

/// Checks a file already read.
pub fn parse(file: &ConfigFile) -> Result<RetryConfig, ConfigError> {
    let raw: RawFile = file.parse()?;
    let name =
        |s: &Option<Spanned<String>>, key: &str, default: &str| -> Result<String, ConfigError> {
            match s {
                Some(s) => {
                    check(s.get_ref()).map_err(|m| file.error(s.span(), key, m))?;
                    Ok(s.get_ref().clone())
                }
                None => Ok(default.to_owned()),
            }
        };
    let done_topic = name(&raw.done_topic, "done_topic", "done")?;
    let group = name(&raw.group, "group", "retry")?;
    let failed_topic = name(&raw.failed_topic, "failed_topic", "failed")?;
    if raw.rule.is_empty() {
        return Err(ConfigError::flag(
            file.name(),
            "no rules: add a [[rule]] table with type, retries and delay",
        ));
    }
    let mut rules: Vec<RetryRule> = Vec::new();
    for (i, r) in raw.rule.iter().enumerate() {
        let rule = rule(file, i + 1, r.get_ref())?;
        if let Some(j) = rules
            .iter()
            .position(|o| o.kind == rule.kind && o.job == rule.job)
        {
            return Err(file.error(
                r.span(),
                format!("rule[{}]", i + 1),
                format!(
                    "rule[{}] already covers type {:?}{}; merge the two",
                    j + 1,
                    rule.kind,
                    rule.job
                        .as_ref()
                        .map(|j| format!(" job {j:?}"))
                        .unwrap_or_default()
                ),
            ));
        }
        rules.push(rule);
    }
    Ok(RetryConfig {
        done_topic,
        group,
        rules: RetryRules {
            rules,
            failed_topic,
        },
    })
}

fn rule(file: &ConfigFile, n: usize, raw: &RawRule) -> Result<RetryRule, ConfigError> {
    let key = |k: &str| format!("rule[{n}].{k}");
    let dur = |s: &Spanned<String>, k: &str| {
        parse_duration(s.get_ref()).map_err(|m| file.error(s.span(), key(k), m))
    };
    let kind = raw.kind.get_ref().clone();
    if kind != "*" {
        check(&kind).map_err(|m| file.error(raw.kind.span(), key("type"), m))?;
    }
    let mut policy = Policy {
        retries: raw.retries.unwrap_or(3),
        ..Policy::default()
    };
    if let Some(d) = &raw.delay {
        policy.delay = dur(d, "delay")?;
    }
    let factor = raw.factor.as_ref().map(|f| (*f.get_ref(), f.span()));
    policy.backoff = match raw
        .backoff
        .as_ref()
        .map(|b| (b.get_ref().as_str(), b.span()))
    {
        None | Some(("fixed", _)) => Backoff::Fixed,
        Some(("linear", _)) => Backoff::Linear,
        Some(("exponential", _)) => Backoff::Exponential {
            factor: factor.as_ref().map_or(2.0, |f| f.0),
        },
        Some((other, span)) => {
            return Err(file.error(
                span,
                key("backoff"),
                format!("{other:?} is not a backoff; use fixed, linear or exponential"),
            ))
        }
    };
    if let Some((f, span)) = factor {
        if !matches!(policy.backoff, Backoff::Exponential { .. }) {
            return Err(file.error(
                span,
                key("factor"),
                "factor only applies to backoff = \"exponential\"",
            ));
        }
        if !(f.is_finite() && f >= 1.0) {
            return Err(file.error(span, key("factor"), format!("factor {f} must be 1 or more")));
        }
    }
    if let Some(j) = &raw.jitter {
        policy.jitter = dur(j, "jitter")?;
    }
    if let Some(m) = &raw.max_delay {
        policy.max_delay = Some(dur(m, "max_delay")?);
    }
    if let Some(results) = &raw.results {
        policy.results = results_of(results.get_ref())
            .map_err(|m| file.error(results.span(), key("results"), m))?;
    }
    policy.retry_on.clone_from(&raw.retry_on);
    policy.no_retry_on.clone_from(&raw.no_retry_on);
    if let Some(t) = &raw.topic {
        check(t.get_ref()).map_err(|m| file.error(t.span(), key("topic"), m))?;
        policy.topic = Some(t.get_ref().clone());
    }
    Ok(RetryRule {
        kind,
        job: raw.job.clone(),
        policy,
    })
}

fn results_of(list: &[String]) -> Result<Vec<TaskResult>, String> {
    let mut out = Vec::new();
    for s in list {
        match s.parse::<TaskResult>().map_err(|e| e.to_string())? {
            TaskResult::Error => out.push(TaskResult::Error),
            other => return Err(format!(
                "result {other} is never retried (complete is done; warn and alert ask for no retry); only error can be"
            )),
        }
    }
    if out.is_empty() {
        return Err(
            "results is empty, so the rule would never retry; write [\"error\"] or remove the rule"
                .to_owned(),
        );
    }
    Ok(out)
}

fn check(name: &str) -> Result<(), String> {
    taskbus_bus::check_name("topic", name).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse_str(text: &str) -> Result<RetryConfig, ConfigError> {
        parse(&ConfigFile::new("retry.toml", text))
    }

    #[test]
    fn reads_a_full_rule() {
        let c = parse_str(
            "failed_topic = \"dead\"\n[[rule]]\ntype = \"flaky\"\nretries = 2\ndelay = \"1s\"\nbackoff = \"exponential\"\nfactor = 3.0\njitter = \"100ms\"\nmax_delay = \"5s\"\n",
        ).unwrap();
        assert_eq!(
            (
                c.done_topic.as_str(),
                c.group.as_str(),
                c.rules.failed_topic.as_str()
            ),
            ("done", "retry", "dead")
        );
        let p = &c.rules.rules[0].policy;
        assert_eq!(p.retries, 2);
        assert_eq!(p.backoff, Backoff::Exponential { factor: 3.0 });
        assert_eq!(p.max_delay, Some(Duration::from_secs(5)));
    }

    #[test]
    fn errors_name_line_and_key() {
        let err = parse_str("[[rule]]\ntype = \"flaky\"\nretrys = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("retry.toml:3:1:") && err.contains("retrys"),
            "{err}"
        );
        let err = parse_str("[[rule]]\ntype = \"flaky\"\nresults = [\"warn\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("retry.toml:3:")
                && err.contains("rule[1].results")
                && err.contains("never retried"),
            "{err}"
        );
        let err = parse_str("[[rule]]\ntype = \"flaky\"\ndelay = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rule[1].delay") && err.contains("30s"),
            "{err}"
        );
        let err = parse_str("[[rule]]\ntype = \"flaky\"\nbackoff = \"random\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rule[1].backoff"), "{err}");
        let err = parse_str("[[rule]]\ntype = \"a\"\n[[rule]]\ntype = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry.toml:3:") && err.contains("merge"),
            "{err}"
        );
    }
}
