//! The launcher's behaviour on the mem and file buses, each test with assertions on the done tasks.

mod util;

mod deadline;
mod failures;
mod lifetime;
mod observability;
mod process;
mod results;
mod shutdown;
mod timeout;
mod types;
