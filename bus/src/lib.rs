//! # taskbus-bus
//!
//! What a task is and how it travels: the [`Task`] model (wire-compatible with pcelvng/task), the
//! delivery contract ([`Backend`], [`Consumer`], [`Delivery`]), the [`Bus`] handle configured by one URL,
//! and every backend.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use taskbus_bus::{Bus, Task, TaskResult};
//!
//! let bus = Bus::connect("mem:crate-docs").await?;
//! bus.send("hello", &Task::new("hello", "world")).await?;
//!
//! let mut sub = bus.subscribe("hello", "workers").await?;
//! let got = sub.next().await?.expect("a task");
//! let mut done = got.task.clone();
//! done.start();
//! done.end(TaskResult::Complete, "said hello");
//! bus.send("done", &done).await?; // confirmed stored …
//! got.ack().await?;               // … before the input is acked
//! # Ok::<(), taskbus_bus::BusError>(())
//! # }).unwrap();
//! ```
//!
//! ## Buses
//!
//! | URL | backend | feature |
//! |---|---|---|
//! | `mem:[NAME]` | in-process, for tests and embedding | always |
//! | `file://DIR` | one newline-delimited JSON file per topic, shared by processes | always |
//! | `stdio:` | tasks from stdin, tasks to stdout | always |
//! | `nats://HOST:PORT` | NATS JetStream | `nats` |
//! | `amqp://USER:PASS@HOST:PORT/VHOST` | AMQP 0.9.1 (RabbitMQ) | `amqp` |
//! | `kafka://HOST:PORT` | Kafka | `kafka` |
//!
//! Options common to all are in [`config`]; each backend module documents its own.
//!
//! ## Cargo features
//!
//! | feature | enables |
//! |---|---|
//! | `nats` | the NATS JetStream backend (`async-nats`) |
//! | `amqp` | the AMQP backend (`lapin`) |
//! | `kafka` | the Kafka backend (`rdkafka`, bundled librdkafka) |
//! | `conformance` | the `conformance` suite, for testing a backend |

mod bus;
mod capabilities;
pub mod config;
mod contract;
mod dead_letter;
mod error;
mod subscription;
pub mod task;

pub mod amqp;
pub mod file;
pub mod kafka;
pub mod mem;
pub mod nats;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use crate::bus::Bus;
pub use capabilities::Capabilities;
pub use config::{BusOptions, BusUrl};
pub use contract::{Acker, Backend, Consumer, ConsumerOptions, Delivery, Outgoing};
pub use dead_letter::DeadLetter;
pub use error::{check_name, BusError};
pub use subscription::{Received, Subscription};
pub use task::{Meta, MetaError, Task, TaskDecodeError, TaskResult};
