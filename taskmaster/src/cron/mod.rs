//! Cron: send tasks on schedules.
//!
//! - [`Schedule`] — cron expressions (5 or 6 fields, `@daily`, `@every 30s`) in a time zone.
//! - [`Cron`] — the pure state machine: given the time, the ticks due, caught up and skipped.
//! - [`config`] — the rules file (`cron.toml`).
//! - [`ledger`] — how replicas agree on who sends a tick, and where the last sent tick is kept.
//! - [`CronService`] — the bus loop.
//!
//! ## Several replicas
//! Each tick's task has a deterministic id (UUID v5 of topic, type, job, rule name and tick), so a bus
//! that de-duplicates by message id (JetStream) drops a tick sent twice. On every bus, replicas also
//! claim each tick in a shared [`ledger`] and only the winner sends it.
//!
//! ## Restarts and missed ticks
//! The ledger keeps the last tick each rule sent. After a restart (or a pause), ticks between it and
//! now were *missed*; the rule's `catch_up` policy decides: `none` skips them, `latest` (the default)
//! sends the most recent one unless a tick is on time anyway, `all` sends every one, oldest first.
//! Missed ticks older than `catch_up_window` (24 h by default) are skipped. Every skip is logged with
//! the ticks and the reason. A tick up to a minute late (the grace) counts as on time.
//!
//! ```
//! use taskbus_taskmaster::cron::{config, Cron};
//! use taskbus_taskmaster::config::ConfigFile;
//! let rules = config::parse(&ConfigFile::new("cron.toml", r#"
//!     [[rule]]
//!     cron = "0 * * * *"
//!     type = "report"
//!     template = "day={yyyy}-{mm}-{dd}T{hh}"
//!     offset = "-1h"
//! "#))?;
//! let start = "2024-01-02T10:30:00Z".parse().unwrap();
//! let mut cron = Cron::new(rules, start);
//! assert_eq!(cron.next_wakeup(), Some("2024-01-02T11:00:00Z".parse().unwrap()));
//! let due = cron.due("2024-01-02T11:00:00Z".parse().unwrap());
//! let task = cron.rules()[0].task(due.fires[0].tick).unwrap();
//! assert_eq!(task.info, "day=2024-01-02T10");
//! # Ok::<(), taskbus_taskmaster::ConfigError>(())
//! ```

pub mod config;
pub mod ledger;
mod rules;
mod schedule;
mod service;

pub use rules::{CatchUp, Cron, Due, Fire, Rule, Skipped, DEFAULT_GRACE, TICK_NAMESPACE};
pub use schedule::Schedule;
pub use service::CronService;
