//! The floor's per-connection queue: the relay's kind of queue, in a small copy (the relay's
//! `QueueTx` / `Outbox` in gsio-relay's `src/relay.rs` are private to it).
//!
//! An unbounded tokio channel plus an atomic count checked against the capacity on every push:
//! pushing and taking are lock-free (tokio's bounded channel takes a lock to return every
//! permit), the bound is exact, and a push never waits. A push onto a full queue is refused and
//! raises the queue's *overflow*, which the connection's writer watches with one atomic load
//! per turn (an [`AtomicWaker`], as the relay's `Signal`); what the floor then does is in
//! [`super`]'s module doc.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The sending side, cloned into the registry for every route to this connection.
#[derive(Clone)]
pub struct QueueTx {
    tx: mpsc::UnboundedSender<Message>,
    depth: Arc<Depth>,
}

/// Shared by both sides of one queue.
struct Depth {
    /// Frames pushed and not yet taken; never above `capacity`.
    queued: AtomicUsize,
    capacity: usize,
    /// Set by the first refused push; the writer ends the connection on it.
    overflowed: AtomicBool,
    /// The writer, waiting for `overflowed` (one task per queue).
    writer: AtomicWaker,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// `capacity` frames are queued: the reader is not keeping up.
    Full,
    /// The connection has ended.
    Closed,
}

impl QueueTx {
    /// Queues `frame` without waiting (the relay's `QueueTx::push`, plus raising the overflow
    /// where the relay's `PeerHandle::offer` kicks the peer).
    pub fn push(&self, frame: Message) -> Result<(), PushError> {
        if self.depth.queued.fetch_add(1, Ordering::AcqRel) >= self.depth.capacity {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            if !self.depth.overflowed.swap(true, Ordering::SeqCst) {
                self.depth.writer.wake();
            }
            return Err(PushError::Full);
        }
        self.tx.send(frame).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            PushError::Closed
        })
    }
}

/// The receiving side, owned by the connection's writer.
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Message>,
    depth: Arc<Depth>,
}

impl Outbox {
    /// The next queued frame; `None` once every sender is gone and the queue is empty. Cancel
    /// safe.
    pub async fn recv(&mut self) -> Option<Message> {
        let frame = self.rx.recv().await?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }

    /// A frame already queued, without waiting (for batching writes).
    pub fn try_next(&mut self) -> Option<Message> {
        let frame = self.rx.try_recv().ok()?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }

    /// The handle on which the writer waits for an overflow, apart from the outbox so that it
    /// can wait while writing (the relay's `Outbox::signal`).
    pub fn overflow(&self) -> Overflow {
        Overflow(self.depth.clone())
    }
}

/// Raised by the first push that found the queue full.
pub struct Overflow(Arc<Depth>);

impl Overflow {
    /// Resolves once a push has been refused because the queue was full. Cancel safe, and cheap
    /// to create anew on every turn of a loop (one atomic load while nothing is raised).
    pub async fn raised(&self) {
        let depth = &self.0;
        std::future::poll_fn(|cx| {
            if depth.overflowed.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            depth.writer.register(cx.waker());
            // Raised between the check and the registration: do not sleep through it.
            if depth.overflowed.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A queue of at most `capacity` frames.
pub fn queue(capacity: usize) -> (QueueTx, Outbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(Depth {
        queued: AtomicUsize::new(0),
        capacity,
        overflowed: AtomicBool::new(false),
        writer: AtomicWaker::new(),
    });
    let outbox = Outbox {
        rx,
        depth: depth.clone(),
    };
    (QueueTx { tx, depth }, outbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Message {
        Message::text(n.to_string())
    }

    #[tokio::test]
    async fn the_bound_is_exact_and_a_full_push_raises_the_overflow_once() {
        let (tx, mut outbox) = queue(3);
        for n in 0..3 {
            tx.push(frame(n)).unwrap();
        }
        assert_eq!(tx.push(frame(3)), Err(PushError::Full));
        // Raised: resolves at once.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            outbox.overflow().raised(),
        )
        .await
        .expect("overflow raised");
        // Taking makes room again; order is kept.
        assert_eq!(outbox.recv().await, Some(frame(0)));
        tx.push(frame(4)).unwrap();
        assert_eq!(tx.push(frame(5)), Err(PushError::Full));
        let rest: Vec<_> = std::iter::from_fn(|| outbox.try_next()).collect();
        assert_eq!(rest, [frame(1), frame(2), frame(4)]);
    }

    #[tokio::test]
    async fn a_queue_that_never_filled_is_not_overflowed() {
        let (tx, outbox) = queue(2);
        tx.push(frame(0)).unwrap();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            outbox.overflow().raised(),
        )
        .await;
        assert!(waited.is_err());
    }

    #[test]
    fn a_push_after_the_writer_left_is_closed_and_not_counted() {
        let (tx, outbox) = queue(1);
        drop(outbox);
        assert_eq!(tx.push(frame(0)), Err(PushError::Closed));
        assert_eq!(tx.depth.queued.load(Ordering::Acquire), 0);
    }
}
