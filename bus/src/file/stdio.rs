//! `stdio:` — tasks from standard input, tasks to standard output.
//!
//! Both ends use a thread of their own, so a full pipe or a terminal waiting for input never blocks
//! the async runtime. Lines of any length are read (pcelvng/task stopped at 64 KiB).

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::backend::check_payload;
use crate::{
    Acker, Backend, BusError, Capabilities, Consumer, ConsumerOptions, Delivery, Outgoing,
};

type Reply = oneshot::Sender<Result<(), (io::ErrorKind, String)>>;

pub(crate) struct StdioBackend {
    output: OnceLock<Mutex<std_mpsc::Sender<(Bytes, Reply)>>>,
    input: OnceLock<Arc<Input>>,
    closed: AtomicBool,
}

impl StdioBackend {
    pub(crate) fn new() -> StdioBackend {
        StdioBackend {
            output: OnceLock::new(),
            input: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn output(&self) -> std_mpsc::Sender<(Bytes, Reply)> {
        let sender = self.output.get_or_init(|| {
            let (tx, rx) = std_mpsc::channel();
            std::thread::Builder::new()
                .name("taskbus-stdout".to_owned())
                .spawn(move || write_stdout(&rx))
                .map_err(|e| tracing::error!(error = %e, "cannot start the stdout writer thread"))
                .ok();
            Mutex::new(tx)
        });
        sender.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn input(&self) -> Arc<Input> {
        Arc::clone(self.input.get_or_init(Input::start))
    }
}

/// Writes every queued line with one `write`, flushes, and answers each sender.
fn write_stdout(rx: &std_mpsc::Receiver<(Bytes, Reply)>) {
    let mut data = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(4096));
        data.clear();
        for (line, _) in &batch {
            data.extend_from_slice(line);
            data.push(b'\n');
        }
        let mut out = io::stdout().lock();
        let result = out.write_all(&data).and_then(|()| out.flush());
        drop(out);
        for (_, reply) in batch {
            let _ = reply.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| (e.kind(), e.to_string())),
            );
        }
    }
}

/// Standard input, shared by every consumer of the process, and the lines handed back to it.
struct Input {
    lines: tokio::sync::Mutex<mpsc::Receiver<io::Result<Bytes>>>,
    ended: AtomicBool,
    again: Mutex<Again>,
    notify: Notify,
}

#[derive(Default)]
struct Again {
    /// Nacked or dropped lines, with how often they were delivered.
    ready: VecDeque<(Bytes, u32)>,
    /// Nacked lines waiting out their delay.
    delayed: usize,
}

impl Input {
    fn start() -> Arc<Input> {
        let (tx, rx) = mpsc::channel(1024);
        let started = std::thread::Builder::new()
            .name("taskbus-stdin".to_owned())
            .spawn(move || read_stdin(&tx));
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the stdin reader thread");
        }
        Arc::new(Input {
            lines: tokio::sync::Mutex::new(rx),
            ended: AtomicBool::new(false),
            again: Mutex::default(),
            notify: Notify::new(),
        })
    }

    fn again(&self) -> std::sync::MutexGuard<'_, Again> {
        self.again.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requeue(self: &Arc<Self>, payload: Bytes, count: u32, delay: Option<Duration>) {
        match delay.filter(|d| !d.is_zero()) {
            None => {
                self.again().ready.push_back((payload, count));
                self.notify.notify_waiters();
            }
            Some(delay) => {
                self.again().delayed += 1;
                let input = Arc::clone(self);
                let requeue = move || {
                    let mut again = input.again();
                    again.delayed -= 1;
                    again.ready.push_back((payload, count));
                    drop(again);
                    input.notify.notify_waiters();
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            tokio::time::sleep(delay).await;
                            requeue();
                        });
                    }
                    Err(_) => requeue(),
                }
            }
        }
    }
}

/// Sends each non-blank line of standard input, without its newline, until end of input.
fn read_stdin(tx: &mpsc::Sender<io::Result<Bytes>>) {
    let mut stdin = io::stdin().lock();
    let mut line = Vec::with_capacity(64 * 1024);
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if tx.blocking_send(Ok(Bytes::copy_from_slice(&line))).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[async_trait]
impl Backend for StdioBackend {
    fn name(&self) -> &'static str {
        "stdio"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            replay: false,
            nack_delay: true,
            lease_redelivery: false,
            in_progress: false,
            ordered: true,
            end_of_input: true,
            consumer_groups: false,
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(BusError::Closed("the stdio bus".to_owned()));
        }
        check_payload(topic, &message.payload)?;
        let (tx, rx) = oneshot::channel();
        let gone = || BusError::Closed("standard output (its writer thread stopped)".to_owned());
        self.output()
            .send((message.payload, tx))
            .map_err(|_| gone())?;
        match rx.await.map_err(|_| gone())? {
            Ok(()) => Ok(()),
            Err((kind, message)) => Err(BusError::Io {
                action: "cannot write a task to",
                path: "standard output".into(),
                source: io::Error::new(kind, message),
                hint: if kind == io::ErrorKind::BrokenPipe {
                    "; the process reading this one's output has exited".to_owned()
                } else {
                    String::new()
                },
            }),
        }
    }

    async fn consumer(
        &self,
        topic: &str,
        _options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(BusError::Closed("the stdio bus".to_owned()));
        }
        Ok(Box::new(StdioConsumer {
            topic: topic.to_owned(),
            input: self.input(),
            closed: CancellationToken::new(),
        }))
    }

    async fn close(&self) -> Result<(), BusError> {
        self.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

struct StdioConsumer {
    topic: String,
    input: Arc<Input>,
    closed: CancellationToken,
}

impl StdioConsumer {
    fn deliver(&self, payload: Bytes, count: u32) -> Delivery {
        let acker = StdioAcker {
            input: Arc::clone(&self.input),
            payload: payload.clone(),
            count,
            settled: false,
        };
        Delivery::new(self.topic.clone(), payload, count, Box::new(acker))
    }
}

#[async_trait]
impl Consumer for StdioConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.closed.is_cancelled() {
                return Ok(None);
            }
            let notified = self.input.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let again = self.input.again().ready.pop_front();
            if let Some((payload, count)) = again {
                return Ok(Some(self.deliver(payload, count + 1)));
            }
            if self.input.ended.load(Ordering::Relaxed) {
                if self.input.again().delayed == 0 {
                    return Ok(None);
                }
                tokio::select! {
                    () = notified => continue,
                    () = self.closed.cancelled() => return Ok(None),
                }
            }
            let line = tokio::select! {
                line = async { self.input.lines.lock().await.recv().await } => line,
                () = notified => continue,
                () = self.closed.cancelled() => return Ok(None),
            };
            match line {
                Some(Ok(payload)) => return Ok(Some(self.deliver(payload, 1))),
                Some(Err(e)) => {
                    self.input.ended.store(true, Ordering::Relaxed);
                    return Err(BusError::io("cannot read tasks from", "standard input", e));
                }
                None => {
                    self.input.ended.store(true, Ordering::Relaxed);
                    self.input.notify.notify_waiters();
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed.cancel();
        Ok(())
    }
}

struct StdioAcker {
    input: Arc<Input>,
    payload: Bytes,
    count: u32,
    settled: bool,
}

#[async_trait]
impl Acker for StdioAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.settled = true;
        self.input.requeue(self.payload.clone(), self.count, delay);
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        Ok(()) // no lease to extend: nothing takes a line back from this process
    }
}

impl Drop for StdioAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.input.requeue(self.payload.clone(), self.count, None);
        }
    }
}
