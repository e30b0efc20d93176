//! The worker binary of the crate docs: it greets the `info` of each `hello` task.
//!
//! ```sh
//! echo '{"type":"hello","info":"world"}' | cargo run -q -p taskbus-worker --example hello
//! ```
//!
//! The code lives in `worker.rs`, which the crate docs show and the tests run as a process.

include!("worker.rs");
