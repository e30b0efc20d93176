//! What a backend can and cannot do. The conformance suite skips exactly the checks a backend opts out
//! of, and says so.

/// The abilities of a bus backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive the end of the process that sent them (and a broker restart, for brokers).
    pub persistent: bool,
    /// A new consumer group starts at the beginning of what the topic holds, so tasks sent before any
    /// consumer existed are delivered.
    pub replay: bool,
    /// `nack` with a delay holds the message back for that long.
    pub nack_delay: bool,
    /// A consumer that dies without acking has its deliveries handed to another consumer after a lease.
    pub lease_redelivery: bool,
    /// [`Delivery::in_progress`](crate::Delivery::in_progress) extends a delivery's lease.
    pub in_progress: bool,
    /// One consumer receives a topic's messages in the order they were sent (until a nack).
    pub ordered: bool,
    /// A consumer opened with [`ConsumerOptions::finite`](crate::ConsumerOptions) ends when it reaches
    /// the end of what the topic holds.
    pub end_of_input: bool,
    /// Consumer groups: members of one group share messages, each group gets all of them.
    pub consumer_groups: bool,
}

impl Capabilities {
    /// Everything.
    pub const ALL: Capabilities = Capabilities {
        persistent: true,
        replay: true,
        nack_delay: true,
        lease_redelivery: true,
        in_progress: true,
        ordered: true,
        end_of_input: true,
        consumer_groups: true,
    };
}
