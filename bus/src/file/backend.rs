//! The `file://DIR` backend: topic writers and consumer groups of one directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::consumer::FileConsumer;
use super::group::Group;
use super::topic::TopicWriter;
use super::FileOptions;
use crate::{Backend, BusError, Capabilities, Consumer, ConsumerOptions, Outgoing};

/// One connection to a bus directory. Connections in one process are as separate as processes: they
/// share nothing but the files.
pub(crate) struct FileBackend {
    dir: PathBuf,
    options: Arc<FileOptions>,
    writers: Mutex<HashMap<String, Arc<TopicWriter>>>,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    closed: AtomicBool,
}

impl FileBackend {
    pub(crate) fn new(dir: PathBuf, options: FileOptions) -> FileBackend {
        FileBackend {
            dir,
            options: Arc::new(options),
            writers: Mutex::default(),
            groups: Mutex::default(),
            closed: AtomicBool::new(false),
        }
    }

    fn topic_path(&self, topic: &str) -> PathBuf {
        self.dir.join(format!("{topic}.jsonl"))
    }

    fn writer(&self, topic: &str) -> Arc<TopicWriter> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(writers.entry(topic.to_owned()).or_insert_with(|| {
            Arc::new(TopicWriter::new(self.topic_path(topic), self.options.fsync))
        }))
    }

    fn group(&self, topic: &str, name: &str) -> Result<Arc<Group>, BusError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic.to_owned(), name.to_owned());
        if let Some(group) = groups.get(&key) {
            return Ok(Arc::clone(group));
        }
        let group = Arc::new(Group::open(
            &self.dir,
            topic,
            name,
            Arc::clone(&self.options),
        )?);
        groups.insert(key, Arc::clone(&group));
        Ok(group)
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(BusError::Closed(format!(
                "the file bus at {}",
                self.dir.display()
            )));
        }
        Ok(())
    }
}

/// A message must be one non-blank line to survive the trip through a line-per-message file.
pub(super) fn check_payload(topic: &str, payload: &[u8]) -> Result<(), BusError> {
    let reason = if payload.contains(&b'\n') {
        "it contains a newline, and the file bus stores one message per line; \
         send compact JSON (tasks never contain a raw newline)"
    } else if payload.iter().all(u8::is_ascii_whitespace) {
        "it is empty or blank, and blank lines are not messages; send a task"
    } else {
        return Ok(());
    };
    Err(BusError::broker(
        format!("publish to topic {topic:?}"),
        reason,
    ))
}

#[async_trait]
impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: true,
            replay: true,
            nack_delay: true,
            lease_redelivery: true,
            in_progress: true,
            ordered: true,
            end_of_input: true,
            consumer_groups: true,
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        self.check_open()?;
        check_payload(topic, &message.payload)?;
        self.writer(topic).send(message.payload).await
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.check_open()?;
        let path = self.topic_path(topic);
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| BusError::io("cannot create the topic file", &path, e))?;
        let group = self.group(topic, &options.group)?;
        Ok(Box::new(FileConsumer::new(
            group,
            Arc::clone(&self.writer(topic).appended),
            options.finite,
            options.max_in_flight,
            self.options.poll,
        )))
    }

    async fn close(&self) -> Result<(), BusError> {
        self.closed.store(true, Ordering::Relaxed);
        let groups: Vec<_> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for group in groups {
            group.flush().await;
        }
        Ok(())
    }
}
