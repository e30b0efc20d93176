//! # taskbus
//!
//! Run work as **tasks travelling on a message bus**. A task is a small JSON object compatible with
//! pcelvng/task; a [`Bus`](bus::Bus) moves tasks between processes (file/stdio, in-memory, NATS
//! JetStream, AMQP, Kafka); a [`Worker`](worker) run by a launcher does them and publishes the done task;
//! stateless taskmasters ([`taskmaster`]) react to done tasks and emit new ones.
//!
//! This crate only re-exports the parts:
//!
//! | crate | what it holds |
//! |---|---|
//! | [`bus`] (`taskbus-bus`) | the [`Task`](bus::Task) model, the bus contract and every backend |
//! | [`worker`] (`taskbus-worker`) | the worker trait and the launcher |
//! | [`taskmaster`] (`taskbus-taskmaster`) | templates, cron, retry, workflow and backload engines |
//!
//! ## Cargo features
//!
//! | feature | enables |
//! |---|---|
//! | `nats` | the NATS JetStream bus (`nats://…`) |
//! | `amqp` | the AMQP 0.9.1 / RabbitMQ bus (`amqp://…`) |
//! | `kafka` | the Kafka bus (`kafka://…`, bundled librdkafka) |
//!
//! The memory (`mem:`), file (`file://DIR`) and stdio (`stdio:`) buses are always built.

pub use taskbus_bus as bus;
pub use taskbus_taskmaster as taskmaster;
pub use taskbus_worker as worker;

pub use taskbus_bus::{Bus, Task, TaskResult};
