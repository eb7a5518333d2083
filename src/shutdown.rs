//! Graceful shutdown in two phases, seen by every connection of both fronts.
//!
//! 1. [`Phase::StopReading`]: listeners stop accepting and every connection stops reading new
//!    envelopes. The server waits until all of them have stopped (each drops its
//!    [`ReadingToken`]), so no message can be routed after this point.
//! 2. [`Phase::Close`]: every connection writes what is still queued for it, tells its peer
//!    (WebSocket close 1001, gRPC `UNAVAILABLE`), and ends. The server waits for the last
//!    [`DoneToken`], bounded by `server.shutdown_grace_ms`.

use tokio::sync::{mpsc, watch};

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
    reading: mpsc::Sender<()>,
    done: mpsc::Sender<()>,
}

/// Held while a connection may still read (and so route) envelopes.
pub struct ReadingToken(#[allow(dead_code)] mpsc::Sender<()>);
/// Held until a connection has finished writing.
pub struct DoneToken(#[allow(dead_code)] mpsc::Sender<()>);

impl Shutdown {
    pub fn tokens(&self) -> (ReadingToken, DoneToken) {
        (ReadingToken(self.reading.clone()), DoneToken(self.done.clone()))
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
    reading: mpsc::Receiver<()>,
    done: mpsc::Receiver<()>,
    shutdown: Option<Shutdown>,
}

impl Controller {
    pub fn new() -> Controller {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let (reading_tx, reading_rx) = mpsc::channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        Controller {
            phase: phase_tx,
            reading: reading_rx,
            done: done_rx,
            shutdown: Some(Shutdown {
                phase: phase_rx,
                reading: reading_tx,
                done: done_tx,
            }),
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        self.shutdown.clone().expect("subscribe before shutdown starts")
    }

    /// Runs both phases; returns false if the grace period ran out with connections left.
    pub async fn shut_down(mut self, grace: std::time::Duration) -> bool {
        drop(self.shutdown.take());
        let deadline = tokio::time::Instant::now() + grace;
        self.phase.send_replace(Phase::StopReading);
        let stopped = tokio::time::timeout_at(deadline, self.reading.recv()).await.is_ok();
        self.phase.send_replace(Phase::Close);
        let done = tokio::time::timeout_at(deadline, self.done.recv()).await.is_ok();
        stopped && done
    }
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}
