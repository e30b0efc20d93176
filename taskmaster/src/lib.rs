//! # taskbus-taskmaster
//!
//! The taskmaster engines: the apps that decide which task runs next. Each engine is a folder with the
//! same shape — the pure rules (a state machine: a done task or a clock tick in, tasks to send out),
//! the configuration (TOML, unknown keys rejected, errors naming the file, line and key), and a thin
//! bus loop — so the rules are tested without a bus or a real clock.
//!
//! | module | what | command |
//! |---|---|---|
//! | [`template`] | info and meta templates (`{yyyy}`, `{SLUG}`, `{meta:key}` …) | |
//! | [`cron`] | send tasks on schedules, once per tick across replicas, catching up after restarts | `taskbus cron` |
//! | [`retry`] | retry failed tasks with backoff; exhausted ones go to a failed topic | `taskbus retry` |
//! | [`flow`] | workflows: start tasks when their parents complete (DAGs, fan-in, retries) | `taskbus flow` |
//! | [`backload`] | tasks over a time range | `taskbus backload` |
//!
//! [`clock`] lets tests drive every engine with a [`ManualClock`](clock::ManualClock).

pub mod backload;
pub mod clock;
pub mod config;
pub mod cron;
mod error;
pub mod flow;
pub mod retry;
pub mod template;

/// Time zones (IANA names), as rules and backloads use them.
pub use chrono_tz::Tz;
pub use error::{ConfigError, ScheduleError, TaskmasterError, TemplateError};
