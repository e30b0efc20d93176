//! The raw loop on NATS JetStream with async-nats, as a hand-written worker does it: two file-storage
//! streams (tasks and done tasks), a durable pull consumer with explicit acks fetching C at a time
//! (two at C=1, see below), and for each message: parse, publish the done task and await its
//! JetStream ack, then ack the input (a plain `+ACK`, not awaited: the server confirms nothing,
//! unlike taskbus's acks), with C messages in flight.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;

use super::measure::{CpuClock, FirstSeen, Measured};
use super::plan::Point;
use super::target::{is_stale, Target};
use super::taskbus_loop::FILL_IN_FLIGHT;
use super::tasks;

/// How long one pull request waits at the server: async-nats's default, 30 s, makes a pull it lost
/// track of a 30 s stall.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Fills a new stream with `point.n` tasks and drains it with C messages in flight.
pub(crate) async fn run(
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let js = connect(&target.brokers.nats).await?;
    let (input, output) = (target.raw_name("in"), target.raw_name("done"));
    let (in_subject, out_subject) = (subject(&input), subject(&output));
    let input_stream = create_stream(&js, &input, &in_subject).await?;
    create_stream(&js, &output, &out_subject).await?;
    bar.set_length(point.n as u64);

    let filled = Instant::now();
    futures::stream::iter(0..point.n)
        .map(|i| {
            let (js, subject) = (&js, &in_subject);
            async move {
                let payload = tasks::task(i).to_json_bytes();
                js.publish(subject.clone(), payload.into()).await?.await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(FILL_IN_FLIGHT)
        .try_collect::<()>()
        .await
        .context("nats: cannot fill the raw stream")?;
    let fill = filled.elapsed();

    let cpu = CpuClock::start(target.kind.broker_process());

    let consumer = input_stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("nats: cannot create the raw consumer")?;
    let messages = consumer
        .stream()
        // Pulls of one message stall now and then in async-nats 0.51 (its pending-message count
        // goes wrong): at C=1 the loop pulls two, and still works on one at a time.
        .max_messages_per_batch(point.c.max(2))
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .context("nats: cannot start pulling")?;
    let first = FirstSeen::default();
    messages
        .take(point.n)
        .map(|message| {
            let (js, subject, first) = (&js, &out_subject, &first);
            async move {
                let message = message.context("nats: cannot pull")?;
                first.mark();
                let done = tasks::done_json(&message.payload)?;
                js.publish(subject.clone(), done.into()).await?.await?;
                message
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("nats: cannot ack: {e}"))?;
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(point.c)
        .try_collect::<()>()
        .await?;
    let drain = first.elapsed();
    Ok(Measured {
        fill,
        drain,
        duplicates: 0,
        cpu: cpu.stop(),
    })
}

/// The subject of a raw stream: its name with dots, so it never overlaps taskbus's subjects.
fn subject(stream: &str) -> String {
    stream.replace('-', ".")
}

async fn connect(url: &str) -> anyhow::Result<jetstream::Context> {
    let address = url.split('?').next().unwrap_or(url);
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(address))
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to {address} within 10s"))?
        .with_context(|| {
            format!("cannot connect to {address}: is nats-server running? start it with `bash scripts/brokers/nats.sh`")
        })?;
    Ok(jetstream::new(client))
}

async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> anyhow::Result<stream::Stream> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .with_context(|| format!("nats: cannot create the stream {name:?}"))
}

/// Deletes the streams of run `run_id` (the bus's and the raw loops'), and those of bench runs that
/// started more than two hours ago and could not clean up.
pub(crate) async fn delete_streams(url: &str, run_id: &str) -> anyhow::Result<()> {
    let js = connect(url).await?;
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .context("nats: cannot list the streams")?;
    for name in names
        .into_iter()
        .filter(|n| n.contains(run_id) || is_stale(n))
    {
        js.delete_stream(&name)
            .await
            .with_context(|| format!("nats: cannot delete the stream {name:?}"))?;
    }
    Ok(())
}
