//! A workflow drawn for people: a tree in the terminal, or Graphviz dot.

use std::fmt::Write as _;

use super::workflow::{Phase, Trigger, Workflow};

/// Beyond this depth the tree stops indenting and shows the depth as a number, so a long chain
/// prints in linear space.
const MAX_INDENT: usize = 24;

/// What starts a phase, in a few words.
pub fn trigger_text(w: &Workflow, phase: &Phase) -> String {
    match &phase.trigger {
        Trigger::Cron(c) => format!("cron {}", c.schedule),
        Trigger::Manual => "started by hand".to_owned(),
        Trigger::Parents => {
            let names: Vec<&str> = phase
                .parents
                .iter()
                .map(|p| w.phase(*p).name.as_str())
                .collect();
            format!("after {}", names.join(" + "))
        }
    }
}

fn describe(w: &Workflow, phase: &Phase) -> String {
    let mut s = phase.name.clone();
    let task = phase.task_name();
    let mut notes = Vec::new();
    if task != phase.name {
        notes.push(task);
    }
    if phase.topic != phase.kind {
        notes.push(format!("topic {}", phase.topic));
    }
    match &phase.trigger {
        Trigger::Parents if phase.parents.len() > 1 => notes.push(trigger_text(w, phase)),
        Trigger::Parents => {}
        _ => notes.push(trigger_text(w, phase)),
    }
    if phase.retry.retries > 0 {
        notes.push(format!("retry {}", phase.retry.retries));
    }
    if !phase.require.is_empty() {
        notes.push(format!("require {}", phase.require.join(",")));
    }
    if !notes.is_empty() {
        let _ = write!(s, "  ({})", notes.join(", "));
    }
    s
}

/// The workflow as a tree from its roots. A phase with several parents is drawn under the first
/// one that reaches it, and as `NAME (see above)` under the others.
pub fn tree(w: &Workflow) -> String {
    let mut out = format!("{}\n", w.name());
    let mut drawn = vec![false; w.phases().len()];
    // (phase, prefix, is_last, depth)
    let mut stack: Vec<(usize, String, bool, usize)> = Vec::new();
    let roots: Vec<usize> = (0..w.phases().len())
        .filter(|i| w.phase(*i).is_root())
        .collect();
    for (k, r) in roots.iter().enumerate().rev() {
        stack.push((*r, String::new(), k + 1 == roots.len(), 1));
    }
    while let Some((i, prefix, last, depth)) = stack.pop() {
        let phase = w.phase(i);
        let branch = if last { "└─ " } else { "├─ " };
        if depth > MAX_INDENT {
            let _ = write!(out, "{prefix}[depth {depth}] ");
        } else {
            let _ = write!(out, "{prefix}{branch}");
        }
        if drawn[i] {
            let _ = writeln!(out, "{} (see above)", phase.name);
            continue;
        }
        drawn[i] = true;
        let _ = writeln!(out, "{}", describe(w, phase));
        let child_prefix = if depth >= MAX_INDENT {
            prefix
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (k, c) in phase.children.iter().enumerate().rev() {
            stack.push((
                *c,
                child_prefix.clone(),
                k + 1 == phase.children.len(),
                depth + 1,
            ));
        }
    }
    out
}

/// The workflow in Graphviz dot (`taskbus flow graph --dot | dot -Tsvg > flow.svg`).
pub fn dot(w: &Workflow) -> String {
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box];\n",
        quote(w.name())
    );
    for phase in w.phases() {
        let mut label = phase.name.clone();
        let task = phase.task_name();
        if task != phase.name {
            label.push('\n');
            label.push_str(&task);
        }
        if !matches!(phase.trigger, Trigger::Parents) {
            label.push('\n');
            label.push_str(&trigger_text(w, phase));
        }
        let _ = writeln!(out, "  {} [label={}];", quote(&phase.name), quote(&label));
    }
    for phase in w.phases() {
        for c in &phase.children {
            let _ = writeln!(
                out,
                "  {} -> {};",
                quote(&phase.name),
                quote(&w.phase(*c).name)
            );
        }
    }
    out.push_str("}\n");
    out
}

fn quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::workflow::tests::phase;
    use super::*;

    fn diamond() -> Workflow {
        Workflow::new(
            "d.toml",
            vec![
                phase("a", &[]),
                phase("b", &[0]),
                phase("c", &[0]),
                phase("d", &[1, 2]),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_diamond_as_a_tree_draws_the_join_once() {
        let t = tree(&diamond());
        assert_eq!(
            t,
            "d.toml\n└─ a  (started by hand)\n   ├─ b\n   │  └─ d  (after b + c)\n   └─ c\n      └─ d (see above)\n"
        );
    }

    #[test]
    fn dot_has_every_edge() {
        let d = dot(&diamond());
        for edge in [
            "\"a\" -> \"b\"",
            "\"a\" -> \"c\"",
            "\"b\" -> \"d\"",
            "\"c\" -> \"d\"",
        ] {
            assert!(d.contains(edge), "{d}");
        }
        assert!(d.starts_with("digraph \"d.toml\" {"), "{d}");
    }
}
