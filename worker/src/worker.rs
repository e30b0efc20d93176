//! The [`Worker`] trait, and workers made from closures: [`from_fn`] and [`from_info`].

use std::future::Future;

use async_trait::async_trait;
use taskbus_bus::Task;

use crate::{IntoOutcome, Outcome, TaskContext};

/// Does tasks. One worker value serves every task the launcher runs, concurrently, so it takes
/// `&self`; keep per-task state in the `run` future.
///
/// Implement it for your own type, or make one from a closure with [`from_fn`] (the whole task) or
/// [`from_info`] (the `info` string only, like pcelvng's `NewWorker(info)`).
///
/// ```
/// use taskbus_bus::Task;
/// use taskbus_worker::{async_trait, Outcome, TaskContext, Worker};
///
/// struct Copier;
///
/// #[async_trait]
/// impl Worker for Copier {
///     async fn run(&self, task: &Task, ctx: &TaskContext) -> Outcome {
///         ctx.progress("50%");
///         Outcome::complete(format!("copied {}", task.info)).meta("bytes", 1024)
///     }
/// }
/// ```
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// Does `task`. The launcher stamps `started` before and `ended`, `result`, `msg` after, merges
    /// the outcome's meta into the done task, and turns a panic into an `error` outcome.
    async fn run(&self, task: &Task, ctx: &TaskContext) -> Outcome;
}

#[async_trait]
impl<W: Worker + ?Sized> Worker for std::sync::Arc<W> {
    async fn run(&self, task: &Task, ctx: &TaskContext) -> Outcome {
        (**self).run(task, ctx).await
    }
}

/// A worker made from a closure over the whole task and its context; see [`from_fn`].
#[derive(Debug, Clone)]
pub struct FnWorker<F>(F);

/// A worker from an async closure that gets the task (a copy) and its context and returns anything
/// [`IntoOutcome`]: an [`Outcome`], `()`, or a `Result`.
///
/// ```
/// use taskbus_bus::Task;
/// use taskbus_worker::{from_fn, Outcome, TaskContext};
///
/// let worker = from_fn(|task: Task, ctx: TaskContext| async move {
///     tokio::select! {
///         () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
///         () = ctx.cancelled() => return Outcome::error("stopped"),
///     }
///     Outcome::complete(format!("did {}", task.id))
/// });
/// # let _ = worker;
/// ```
pub fn from_fn<F, Fut, O>(f: F) -> FnWorker<F>
where
    F: Fn(Task, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: IntoOutcome,
{
    FnWorker(f)
}

#[async_trait]
impl<F, Fut, O> Worker for FnWorker<F>
where
    F: Fn(Task, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: IntoOutcome,
{
    async fn run(&self, task: &Task, ctx: &TaskContext) -> Outcome {
        (self.0)(task.clone(), ctx.clone()).await.into_outcome()
    }
}

/// A worker made from a closure over the task's `info`; see [`from_info`].
#[derive(Debug, Clone)]
pub struct InfoWorker<F>(F);

/// A worker from an async closure that gets the task's `info` and returns anything [`IntoOutcome`].
///
/// ```
/// use taskbus_worker::{from_info, Outcome};
///
/// let worker = from_info(|info: String| async move {
///     let n: u64 = info.parse().map_err(|e| Outcome::error(format!("{info:?}: {e}")).no_retry())?;
///     Ok::<_, Outcome>(Outcome::complete(n * 2))
/// });
/// # let _ = worker;
/// ```
pub fn from_info<F, Fut, O>(f: F) -> InfoWorker<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: IntoOutcome,
{
    InfoWorker(f)
}

#[async_trait]
impl<F, Fut, O> Worker for InfoWorker<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: IntoOutcome,
{
    async fn run(&self, task: &Task, _ctx: &TaskContext) -> Outcome {
        (self.0)(task.info.clone()).await.into_outcome()
    }
}
