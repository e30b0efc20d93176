//! The command line of `taskbus exec` as a template over the task's fields, and the environment a
//! command gets.
//!
//! Placeholders: `{type}` `{job}` `{info}` `{id}` `{created}` `{meta}` `{meta:KEY}` `{attempt}`.
//! Anything else in braces is left as it is (so `awk '{print $1}'` works); a word in braces that looks
//! like a placeholder but is not one is reported at start-up.

use taskbus_bus::task::time;
use taskbus_bus::Task;

/// The placeholders a command can use, for help and error messages.
pub(crate) const PLACEHOLDERS: &str =
    "{type} {job} {info} {id} {created} {meta} {meta:KEY} {attempt}";

/// A command line with placeholders.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    argv: Vec<String>,
}

impl Template {
    /// A template from the words of a command line; `None` when there are none.
    pub(crate) fn new(argv: Vec<String>) -> Option<Template> {
        (!argv.is_empty()).then_some(Template { argv })
    }

    /// The program (first word) when it has no placeholder, so it can be checked at start-up.
    pub(crate) fn fixed_program(&self) -> Option<&str> {
        let program = self.argv.first()?;
        let mut found = false;
        substitute(program, |_| {
            found = true;
            Some(String::new())
        });
        (!found).then_some(program.as_str())
    }

    /// Words in braces that look like placeholders but are not ones taskbus knows (typos).
    pub(crate) fn unknown_placeholders(&self) -> Vec<String> {
        let mut unknown = Vec::new();
        for word in &self.argv {
            let mut rest = word.as_str();
            while let Some(open) = rest.find('{') {
                rest = &rest[open + 1..];
                let Some(close) = rest.find('}') else { break };
                let name = &rest[..close];
                let looks_like_one = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
                if looks_like_one && field(&Task::default(), name).is_none() {
                    unknown.push(format!("{{{name}}}"));
                }
            }
        }
        unknown
    }

    /// The command line for `task`.
    pub(crate) fn render(&self, task: &Task) -> Vec<String> {
        self.argv
            .iter()
            .map(|word| substitute(word, |name| field(task, name)))
            .collect()
    }

    /// The command line as written, for logs.
    pub(crate) fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// Replaces every `{name}` in `word` for which `value` gives a value.
fn substitute(word: &str, mut value: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((close, value(&after[..close])?)))
        {
            Some((close, v)) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value of placeholder `name` for `task`; `None` when `name` is not a placeholder.
fn field(task: &Task, name: &str) -> Option<String> {
    Some(match name {
        "type" => task.kind.clone(),
        "job" => task.job.clone(),
        "info" => task.info.clone(),
        "id" => task.id.clone(),
        "created" => task.created.map(|t| time::format(&t)).unwrap_or_default(),
        "meta" => task.meta.to_string(),
        "attempt" => task.attempt().to_string(),
        _ => {
            let key = name.strip_prefix("meta:")?;
            task.meta.get(key).unwrap_or_default().to_owned()
        }
    })
}

/// The environment a command gets for `task`: `TASK_TYPE`, `TASK_JOB`, `TASK_INFO`, `TASK_ID`,
/// `TASK_CREATED`, `TASK_META`, `TASK_ATTEMPT`, and `TASK_META_<KEY>` for each meta key (upper-cased,
/// other characters than letters and digits as `_`).
pub(crate) fn environment(task: &Task) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        ["type", "job", "info", "id", "created", "meta", "attempt"]
            .iter()
            .map(|name| {
                let value = field(task, name).unwrap_or_default();
                (format!("TASK_{}", name.to_ascii_uppercase()), value)
            })
            .collect();
    for (key, value) in task.meta.iter() {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("TASK_META_{name}"), value.to_owned()));
    }
    env
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::with_id("resize", "s3://b/a.png", "id-1")
            .job("thumb")
            .meta("size", 64)
            .meta("x-y", "z")
    }

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let t = Template::new(vec![
            "./resize.sh".into(),
            "{info}".into(),
            "--size={meta:size}".into(),
            "{type}:{job}/{id}".into(),
            "awk '{print $1}'".into(),
            "{nope".into(),
            "{meta:missing}".into(),
        ])
        .unwrap();
        let argv = t.render(&task());
        assert_eq!(
            argv,
            [
                "./resize.sh",
                "s3://b/a.png",
                "--size=64",
                "resize:thumb/id-1",
                "awk '{print $1}'",
                "{nope",
                ""
            ]
        );
    }

    #[test]
    fn typos_are_found_and_fixed_programs_known() {
        let t = Template::new(vec!["{info}".into(), "{inf}".into(), "{ x }".into()]).unwrap();
        assert_eq!(t.unknown_placeholders(), ["{inf}"]);
        assert_eq!(t.fixed_program(), None);
        let t = Template::new(vec!["echo".into(), "{info}".into()]).unwrap();
        assert_eq!(t.fixed_program(), Some("echo"));
        assert!(Template::new(Vec::new()).is_none());
    }

    #[test]
    fn environment_has_fields_and_meta_keys() {
        let env = environment(&task());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TASK_INFO"), Some("s3://b/a.png"));
        assert_eq!(get("TASK_TYPE"), Some("resize"));
        assert_eq!(get("TASK_META"), Some("size=64&x-y=z"));
        assert_eq!(get("TASK_META_SIZE"), Some("64"));
        assert_eq!(get("TASK_META_X_Y"), Some("z"));
        assert_eq!(get("TASK_ATTEMPT"), Some("0"));
    }
}
