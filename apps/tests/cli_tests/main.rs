//! The `taskbus` binary, driven as a user drives it: every subcommand, and every kind of bad input
//! giving one clear line and a non-zero exit code.

#![allow(clippy::unwrap_used)]

mod config;
mod errors;
mod exec;
mod quickstart;
mod send;
mod tail;
mod util;
