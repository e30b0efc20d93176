//! Backload: tasks over a time range, for a type and an info template.
//!
//! - [`Backload`] — the pure plan: the times of a range (newest first when `from` is after `to`),
//!   stepped by hour, day, week or month, filtered by hour, times the meta rows, rendered into tasks.
//! - [`config::Request`] — the request as the command line gives it, checked into a [`Backload`].
//! - [`send`] — sending with [`Bus::send_all`](taskbus_bus::Bus::send_all), reporting progress.
//!
//! Each task gets a fresh id and `meta.scheduled` set to its time, so workflows downstream see the time
//! it stands for.
//!
//! ```
//! use taskbus_taskmaster::backload::config::Request;
//! let request = Request {
//!     kind: "report".into(),
//!     template: "day={yyyy}-{mm}-{dd}".into(),
//!     from: "2024-01-03".into(),
//!     to: Some("2024-01-01".into()),
//!     by: "day".into(),
//!     every: 1,
//!     ..Request::default()
//! };
//! let plan = request.build(chrono::Utc::now())?;
//! let tasks = plan.tasks(&plan.times(1000).unwrap()).unwrap();
//! let infos: Vec<_> = tasks.iter().map(|t| t.info.as_str()).collect();
//! assert_eq!(infos, ["day=2024-01-03", "day=2024-01-02", "day=2024-01-01"]);
//! # Ok::<(), taskbus_taskmaster::ConfigError>(())
//! ```

pub mod config;
mod rules;
mod service;

pub use rules::{Backload, HourFilter, Step};
pub use service::send;
