//! The names of the queues this backend declares, and the rounding of nack delays.
//!
//! Topic and group names hold only `A-Z a-z 0-9 . _ -` (see [`check_name`](crate::check_name)) and so
//! does the exchange name, so `:` separates the parts without ambiguity, and `(backlog)` or `delay=`
//! can never be a group's name.

use std::time::Duration;

/// RabbitMQ's limit on queue names, in bytes.
const MAX_QUEUE_NAME: usize = 255;

/// The alternate exchange of `exchange`: where messages no group's queue takes go.
pub(crate) fn unrouted_exchange(exchange: &str) -> String {
    format!("{exchange}:unrouted")
}

/// The queue of consumer group `group` on `topic`.
pub(crate) fn group_queue(exchange: &str, topic: &str, group: &str) -> String {
    fit(format!("{exchange}:{topic}:{group}"))
}

/// The queue that keeps a topic's messages sent while no group's queue was bound to it.
pub(crate) fn backlog_queue(exchange: &str, topic: &str) -> String {
    fit(format!("{exchange}:{topic}:(backlog)"))
}

/// The queue that holds messages nacked with a delay of `delay_ms` for `group_queue`.
pub(crate) fn delay_queue(group_queue: &str, delay_ms: u32) -> String {
    fit(format!("{group_queue}:delay={delay_ms}ms"))
}

/// A nack delay in milliseconds, rounded up to two significant digits (at least 1 ms, at most the
/// largest message TTL RabbitMQ takes, about 49 days), so a jittered backoff makes few delay queues.
pub(crate) fn round_delay(delay: Duration) -> u32 {
    let ms = delay.as_millis().max(1);
    let mut unit = 1u128;
    while ms / unit >= 100 {
        unit *= 10;
    }
    let rounded = ms.div_ceil(unit) * unit;
    u32::try_from(rounded).unwrap_or(u32::MAX)
}

/// `name` if RabbitMQ accepts its length, else its start and a hash of the whole.
fn fit(name: String) -> String {
    if name.len() <= MAX_QUEUE_NAME {
        return name;
    }
    // Every part is ASCII, so any byte index is a character boundary.
    format!(
        "{}~{:016x}",
        &name[..MAX_QUEUE_NAME - 17],
        fnv1a(name.as_bytes())
    )
}

/// 64-bit FNV-1a: stable across releases and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unambiguous() {
        assert_eq!(group_queue("taskbus", "a.b", "c"), "taskbus:a.b:c");
        assert_ne!(group_queue("x", "a.b", "c"), group_queue("x", "a", "b.c"));
        assert_eq!(backlog_queue("taskbus", "hello"), "taskbus:hello:(backlog)");
        assert_eq!(unrouted_exchange("taskbus"), "taskbus:unrouted");
        assert_eq!(delay_queue("taskbus:a:g", 1500), "taskbus:a:g:delay=1500ms");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let topic = "t".repeat(200);
        let a = group_queue("taskbus", &topic, &"g".repeat(200));
        let b = group_queue("taskbus", &topic, &format!("{}h", "g".repeat(199)));
        assert_eq!(a.len(), MAX_QUEUE_NAME);
        assert_ne!(a, b);
        assert_eq!(a, group_queue("taskbus", &topic, &"g".repeat(200)));
    }

    #[test]
    fn delays_round_up_to_two_digits() {
        assert_eq!(round_delay(Duration::ZERO), 1);
        assert_eq!(round_delay(Duration::from_millis(7)), 7);
        assert_eq!(round_delay(Duration::from_millis(99)), 99);
        assert_eq!(round_delay(Duration::from_millis(101)), 110);
        assert_eq!(round_delay(Duration::from_millis(1234)), 1300);
        assert_eq!(round_delay(Duration::from_secs(30)), 30_000);
        assert_eq!(round_delay(Duration::from_secs(3600 * 24 * 365)), u32::MAX);
    }
}
