//! The cases of the conformance suite.
//!
//! Each case is `pub async fn <case><H: Harness>(harness: &H)`: it makes topics and groups of its own
//! (`cf-<case>-<label>-<uid>`), bounds every wait by a limit derived from [`Harness::lease`], checks
//! the exact set of task ids with a [`Ledger`](super::Ledger), and panics with a message that says
//! what went wrong. A case that needs a capability the harness does not declare prints
//! `SKIPPED <case>: needs <capability>` and returns.
//!
//! | case | needs | checks |
//! |---|---|---|
//! | [`publish_before_subscribe`] | (`replay` for a new group) | tasks sent with no consumer running arrive later |
//! | [`sender_close_loses_nothing`] | | a task is stored when `send` returns, whatever the sender does next |
//! | [`ordered_delivery`] | `ordered` | one consumer gets tasks in the order sent |
//! | [`concurrent_publishers_and_subscribers`] | (`consumer_groups` for 3 consumers) | 4 publishers, 3 consumers of one group, each task once |
//! | [`many_topics`] | | 20 topics at once, each gets its own |
//! | [`topic_isolation`] | | no task crosses topics that share a group name |
//! | [`nack_redelivers`] | | a nacked task comes back once, delivery count 2 |
//! | [`nack_with_delay`] | `nack_delay` | a delayed nack stays away at least the delay |
//! | [`each_group_gets_all`] | `consumer_groups` | three groups each get every task |
//! | [`group_members_share`] | `consumer_groups` | members of a group share, none twice |
//! | [`close_and_reopen_loses_nothing`] | | close, drain, ack after close, reopen: nothing lost or repeated |
//! | [`crash_without_close_redelivers`] | `lease_redelivery` | unacked tasks of a crashed consumer come back |
//! | [`in_progress_keeps_lease`] | `lease_redelivery`, `in_progress` | a task being worked on is not handed out again |
//! | [`redelivery_limit_dead_letters`] | | past `max_deliveries`, a task becomes a dead letter |
//! | [`undecodable_dead_letters`] | | bytes that are not a task become dead letters (on the case's and on the bus's own dead-letter topic); the rest flows |
//! | [`large_payloads`] | | a 1 MB task and a > 64 KiB task arrive intact |
//! | [`finite_consumer_ends`] | `end_of_input` | a finite consumer ends after the last task |
//! | [`broker_restart`] | `persistent`, [`Harness::restart_broker`] | a broker restart mid-stream loses nothing |

#[allow(unused_imports)] // for the doc links
use super::Harness;

mod dead_letters;
mod flow;
mod groups;
mod redelivery;
mod restart;

pub use dead_letters::{redelivery_limit_dead_letters, undecodable_dead_letters};
pub use flow::{
    concurrent_publishers_and_subscribers, finite_consumer_ends, large_payloads, many_topics,
    ordered_delivery, publish_before_subscribe, sender_close_loses_nothing, topic_isolation,
};
pub use groups::{each_group_gets_all, group_members_share};
pub use redelivery::{
    close_and_reopen_loses_nothing, crash_without_close_redelivers, in_progress_keeps_lease,
    nack_redelivers, nack_with_delay,
};
pub use restart::broker_restart;
