//! The raw loop on Kafka with rdkafka, as a hand-written worker does it: an idempotent producer
//! (`acks=all`, `linger.ms=0`, like the bus's default), a stream consumer in a new group that stores
//! each message's offset once its done task's delivery report came back — in whatever order messages
//! finish, which a careful worker must not do (a crash would skip unfinished messages below a stored
//! offset; the bus commits only up to the lowest unfinished one) — and auto-commits every second, with
//! C messages in flight.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::measure::{CpuClock, FirstSeen, Measured};
use super::plan::Point;
use super::target::{is_stale, Target};
use super::taskbus_loop::FILL_IN_FLIGHT;
use super::tasks;

/// Partitions of the raw topics: the bus's default.
const PARTITIONS: i32 = 3;
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Fills a new topic with `point.n` tasks and drains it with C messages in flight.
pub(crate) async fn run(
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let servers = bootstrap(&target.brokers.kafka);
    let (input, output) = (target.raw_name("in"), target.raw_name("done"));
    create_topics(&servers, &[&input, &output]).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .context("kafka: cannot make a producer")?;
    bar.set_length(point.n as u64);

    let filled = Instant::now();
    futures::stream::iter(0..point.n)
        .map(|i| {
            let task = tasks::task(i);
            send(&producer, &input, task.id.clone(), task.to_json_bytes())
        })
        .buffer_unordered(FILL_IN_FLIGHT)
        .try_collect::<()>()
        .await
        .context("kafka: cannot fill the raw topic")?;
    let fill = filled.elapsed();

    let cpu = CpuClock::start(target.kind.broker_process());

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", target.raw_name("group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .create()
        .context("kafka: cannot make a consumer")?;
    consumer
        .subscribe(&[&input])
        .context("kafka: cannot subscribe")?;
    let first = FirstSeen::default();
    consumer
        .stream()
        .take(point.n)
        .map(|message| {
            let (producer, consumer, output, first) = (&producer, &consumer, &output, &first);
            async move {
                let message = message.context("kafka: cannot consume")?.detach();
                first.mark();
                let payload = message
                    .payload()
                    .context("kafka: a message without payload")?;
                let done = tasks::done_json(payload)?;
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                send(producer, output, key.unwrap_or_default(), done).await?;
                consumer.store_offset(
                    message.topic(),
                    message.partition(),
                    message.offset() + 1,
                )?;
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(point.c)
        .try_collect::<()>()
        .await?;
    let drain = first.elapsed();
    let cpu = cpu.stop();
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    Ok(Measured {
        fill,
        drain,
        duplicates: 0,
        cpu,
    })
}

/// Sends one message and waits for its delivery report.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: String,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic).key(&key).payload(&payload);
    producer
        .send(record, SEND_TIMEOUT)
        .await
        .map_err(|(e, _)| {
            anyhow::anyhow!("kafka: no delivery report for a message to {topic:?}: {e}")
        })?;
    Ok(())
}

/// `HOST:PORT,…` of a `kafka://` URL.
fn bootstrap(url: &str) -> String {
    let rest = url.trim_start_matches("kafka://");
    let hosts = rest.split(['?', '/']).next().unwrap_or(rest);
    hosts.rsplit('@').next().unwrap_or(hosts).to_owned()
}

fn admin(servers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .with_context(|| format!("kafka: cannot make an admin client for {servers}"))
}

/// Creates `topics` (brokers such as tansu do not create them on first use).
async fn create_topics(servers: &str, topics: &[&str]) -> anyhow::Result<()> {
    let admin = admin(servers)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &options).await.with_context(|| {
        format!("cannot create topics on {servers}: is the Kafka broker running? start tansu with `bash scripts/brokers/kafka.sh`")
    })?;
    for result in results {
        result.map_err(|(topic, e)| {
            anyhow::anyhow!("kafka: cannot create the topic {topic:?}: {e}")
        })?;
    }
    Ok(())
}

/// Deletes `topics`, and the topics of bench runs that started more than two hours ago and could not
/// clean up.
pub(crate) async fn delete_topics(url: &str, topics: &[String]) -> anyhow::Result<()> {
    let servers = bootstrap(url);
    let admin = admin(&servers)?;
    let mut doomed: Vec<String> = topics.to_vec();
    let client = admin.inner();
    let metadata =
        tokio::task::block_in_place(|| client.fetch_metadata(None, Duration::from_secs(10)));
    if let Ok(metadata) = metadata {
        doomed.extend(
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|t| is_stale(t)),
        );
    }
    if doomed.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = doomed.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(&names, &options)
        .await
        .with_context(|| format!("kafka: cannot delete the bench topics on {servers}"))?;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .filter(|(_, e)| *e != RDKafkaErrorCode::UnknownTopicOrPartition)
        .map(|(topic, e)| format!("{topic} ({e})"))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "kafka: cannot delete the topics {}",
        failed.join(", ")
    );
    Ok(())
}
