//! The tasks every loop works on, and the one thing a no-op worker does to them.

use taskbus_bus::{Task, TaskDecodeError, TaskResult};
use taskbus_worker::{from_info, Outcome, Worker};

/// The task type of the bench.
pub(crate) const KIND: &str = "bench";

/// Task `i` of a run: about 250 bytes of JSON, like a typical pcelvng/task task (an info URI with a
/// query, a job, a little meta).
pub(crate) fn task(i: usize) -> Task {
    Task::new(
        KIND,
        format!("s3://bucket/path/to/input/file-{i:08}.csv?day=2024-01-02&hour=15"),
    )
    .job("noop")
    .meta("workflow", "bench.toml")
    .meta("run", "2024-01-02T15")
}

/// What the raw loops do with a message: parse it as a task, mark it started and completed, and
/// write the done task — what the launcher does around a no-op worker.
pub(crate) fn done_json(payload: &[u8]) -> Result<Vec<u8>, TaskDecodeError> {
    let mut task = Task::from_json(payload)?;
    task.start();
    task.end(TaskResult::Complete, "");
    Ok(task.to_json_bytes())
}

/// The no-op worker of the taskbus loops.
pub(crate) fn noop() -> impl Worker {
    from_info(|_info: String| async { Outcome::complete("") })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_about_250_bytes_and_done_tasks_parse() {
        let line = task(12_345).to_json_bytes();
        assert!((220..=280).contains(&line.len()), "{} bytes", line.len());
        let done = Task::from_json(&done_json(&line).unwrap()).unwrap();
        assert_eq!(done.result, Some(TaskResult::Complete));
        assert!(done.started.is_some() && done.ended.is_some());
        assert!(done_json(b"not json").is_err());
    }
}
