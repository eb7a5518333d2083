//! Graceful shutdown in two phases, seen by every connection of both fronts.
//!
//! 1. [`Phase::StopReading`]: listeners stop accepting and every connection stops reading new
//!    envelopes. The server waits until all of them have stopped (each drops its
//!    [`ReadingToken`]), so no message can be routed after this point.
//! 2. [`Phase::Close`]: every connection writes what is still queued for it, tells its peer
//!    (WebSocket close 1001, gRPC `UNAVAILABLE`), and ends. The server waits for the last
//!    [`DoneToken`], bounded by `server.shutdown_grace_ms`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    StopReading,
    Close,
}

/// A connection's view of the shutdown: cheap to clone, one per connection.
#[derive(Clone)]
pub struct Shutdown {
    phase: watch::Receiver<Phase>,
    reading: Arc<Tally>,
    done: Arc<Tally>,
}

/// How many tokens of one kind are alive; wakes the controller when none are.
#[derive(Default)]
struct Tally {
    alive: AtomicUsize,
    none_left: Notify,
}

impl Tally {
    fn take(self: &Arc<Self>) -> Token {
        self.alive.fetch_add(1, Ordering::SeqCst);
        Token(self.clone())
    }

    /// Resolves when no token is alive. Cancel safe.
    async fn all_returned(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            // Register before checking, so a token dropped in between is not missed.
            notified.as_mut().enable();
            if self.alive.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct Token(Arc<Tally>);

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.alive.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Held while a connection may still read (and so route) envelopes.
pub struct ReadingToken(#[allow(dead_code)] Token);
/// Held until a connection has finished writing.
pub struct DoneToken(#[allow(dead_code)] Token);

impl Shutdown {
    pub fn tokens(&self) -> (ReadingToken, DoneToken) {
        (
            ReadingToken(self.reading.take()),
            DoneToken(self.done.take()),
        )
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Resolves once the phase is at least `phase`. Cancel safe.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        // The sender lives in the controller until shutdown ends; if it is gone, we are done.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

/// The server's side: moves the phases and waits for the connections.
pub struct Controller {
    phase: watch::Sender<Phase>,
    shutdown: Shutdown,
}

impl Controller {
    pub fn new() -> Controller {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        Controller {
            phase: phase_tx,
            shutdown: Shutdown {
                phase: phase_rx,
                reading: Arc::default(),
                done: Arc::default(),
            },
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs both phases; returns false if the grace period ran out with connections left.
    pub async fn shut_down(self, grace: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        self.phase.send_replace(Phase::StopReading);
        let reading = self.shutdown.reading.all_returned();
        let stopped = tokio::time::timeout_at(deadline, reading).await.is_ok();
        self.phase.send_replace(Phase::Close);
        let done = self.shutdown.done.all_returned();
        let done = tokio::time::timeout_at(deadline, done).await.is_ok();
        stopped && done
    }
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}
