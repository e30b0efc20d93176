//! A queue with at most one flusher: whoever queues into an idle queue starts the flusher, which
//! writes everything queued (one lock, one `write` for many sends or acks) until the queue is empty.

use std::sync::Mutex;

pub(crate) struct Batch<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    items: Vec<T>,
    /// A flusher is running and will see anything queued.
    flushing: bool,
}

impl<T> Batch<T> {
    pub(crate) fn new() -> Batch<T> {
        Batch {
            inner: Mutex::new(Inner {
                items: Vec::new(),
                flushing: false,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`. `true` when no flusher is running: the caller must start one.
    pub(crate) fn push(&self, item: T) -> bool {
        let mut inner = self.inner();
        inner.items.push(item);
        !std::mem::replace(&mut inner.flushing, true)
    }

    /// Queues `item` without starting a flusher (where none can be started); the next flush or
    /// [`drain`](Self::drain) takes it.
    pub(crate) fn push_quietly(&self, item: T) {
        self.inner().items.push(item);
    }

    /// For the flusher: everything queued, or `None` (and the flusher stops) when nothing is.
    pub(crate) fn next_batch(&self) -> Option<Vec<T>> {
        let mut inner = self.inner();
        if inner.items.is_empty() {
            inner.flushing = false;
            return None;
        }
        Some(std::mem::take(&mut inner.items))
    }

    /// Everything queued, for someone writing anyway (a claim); a running flusher finds less to do.
    pub(crate) fn drain(&self) -> Vec<T> {
        std::mem::take(&mut self.inner().items)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner().items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flusher_at_a_time() {
        let b = Batch::new();
        assert!(b.push(1));
        assert!(!b.push(2));
        assert_eq!(b.next_batch(), Some(vec![1, 2]));
        assert!(!b.push(3), "the flusher is still running");
        assert_eq!(b.drain(), vec![3]);
        assert_eq!(b.next_batch(), None);
        assert!(b.push(4), "the flusher stopped; a new one is needed");
        b.push_quietly(5);
        assert_eq!(b.next_batch(), Some(vec![4, 5]));
    }
}
