//! The cases of the conformance suite (being written).
#![allow(missing_docs, clippy::todo)]

use super::Harness;

macro_rules! pending_cases {
    ($($case:ident),+) => {$(
        pub async fn $case<H: Harness>(_harness: &H) {
            todo!(concat!("conformance case ", stringify!($case)))
        }
    )+};
}

pending_cases!(
    publish_before_subscribe,
    concurrent_publishers_and_subscribers,
    many_topics,
    topic_isolation,
    nack_redelivers,
    nack_with_delay,
    each_group_gets_all,
    group_members_share,
    close_and_reopen_loses_nothing,
    crash_without_close_redelivers,
    in_progress_keeps_lease,
    redelivery_limit_dead_letters,
    undecodable_dead_letters,
    large_payloads,
    finite_consumer_ends,
    broker_restart
);
