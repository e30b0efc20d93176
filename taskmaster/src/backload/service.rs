//! Sending a backload: [`Bus::send_all`] in chunks, reporting progress after each.

use taskbus_bus::{Bus, BusError, Task};

/// How many tasks are sent between two progress reports.
const CHUNK: usize = 512;

/// Sends `tasks` to `topic` with up to `in_flight` publishes unconfirmed at once, calling `progress`
/// with the number sent so far after each chunk. Returns how many were sent.
pub async fn send(
    bus: &Bus,
    topic: &str,
    tasks: &[Task],
    in_flight: usize,
    mut progress: impl FnMut(usize),
) -> Result<usize, BusError> {
    let mut sent = 0;
    for chunk in tasks.chunks(CHUNK) {
        sent += bus.send_all(topic, chunk, in_flight).await?;
        progress(sent);
    }
    Ok(sent)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_everything_and_reports_progress() {
        let bus = Bus::connect("mem:backload-service-test").await.unwrap();
        let tasks: Vec<Task> = (0..1200).map(|i| Task::new("bl", i.to_string())).collect();
        let mut reports = Vec::new();
        let n = send(&bus, "bl", &tasks, 32, |s| reports.push(s))
            .await
            .unwrap();
        assert_eq!(n, 1200);
        assert_eq!(reports, [512, 1024, 1200]);
        let mut sub = bus
            .subscribe_with("bl", taskbus_bus::ConsumerOptions::group("g").finite(true))
            .await
            .unwrap();
        let mut seen = 0;
        while let Some(r) = sub.next().await.unwrap() {
            seen += 1;
            r.ack().await.unwrap();
        }
        assert_eq!(seen, 1200);
    }
}
