//! Graceful shutdown in two phases, seen by every connection of both fronts.
//!
//! 1. [`Phase::StopReading`]: listeners stop accepting and every connection stops reading new
//!    envelopes. The server waits until all of them have stopped (each drops its
//!    [`ReadingToken`]), so no message can be routed after this point.
//! 2. [`Phase::Close`]: every connection writes what is still queued for it, tells its peer
//!    (WebSocket close 1001, gRPC `UNAVAILABLE`), and ends. The server waits for the last
//!    [`DoneToken`]. One deadline, `server.shutdown_grace_ms` after the start, bounds both
//!    phases and the gRPC server's own graceful end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::events::ConnEvents;

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
    /// Connections that may still read: each holds a token of this tracker until it stops.
    /// Tokens, not spawned tasks: a connection is not always one task (a gRPC stream is a reader
    /// task plus a response stream polled by tonic), and what is tracked is a phase of it.
    reading: TaskTracker,
    /// Connections not yet done writing (same: tokens held by whatever finishes last).
    done: TaskTracker,
    /// The live connections' event flags, raised at each phase: a busy connection loop then checks
    /// one atomic instead of polling this shared channel on every frame.
    registry: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    /// std `Mutex`: held briefly, never across an `.await`; taken once per connection and at
    /// each phase change, never per message.
    live: Mutex<HashMap<u64, Weak<ConnEvents>>>,
    next: AtomicU64,
}

/// Keeps a connection's event flags registered; removes it when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.key);
    }
}

fn phase_events(phase: Phase) -> u8 {
    match phase {
        Phase::Running => 0,
        Phase::StopReading => ConnEvents::STOP_READING,
        Phase::Close => ConnEvents::STOP_READING | ConnEvents::CLOSE,
    }
}

/// Held while a connection may still read (and so route) envelopes.
pub struct ReadingToken(#[allow(dead_code)] TaskTrackerToken);
/// Held until a connection has finished writing.
pub struct DoneToken(#[allow(dead_code)] TaskTrackerToken);

impl Shutdown {
    pub fn tokens(&self) -> (ReadingToken, DoneToken) {
        (
            ReadingToken(self.reading.token()),
            DoneToken(self.done.token()),
        )
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Raises the shutdown's phases on `conn` from now on (and at once, if one was reached).
    pub fn register(&self, conn: &Arc<ConnEvents>) -> Registration {
        let key = self.registry.next.fetch_add(1, Ordering::Relaxed);
        let mut live = self.registry.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(key, Arc::downgrade(conn));
        // Read under the lock, under which the controller publishes a phase: either this
        // connection is in the map when the controller raises the phase, or it reads it here.
        let events = phase_events(self.phase());
        if events != 0 {
            conn.raise(events);
        }
        drop(live);
        Registration {
            registry: self.registry.clone(),
            key,
        }
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
                reading: TaskTracker::new(),
                done: TaskTracker::new(),
                registry: Arc::default(),
            },
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Raises `phase` on every live connection, then publishes it to whatever waits in
    /// [`Shutdown::reached`] (the listeners among them). In that order: once a listener has
    /// stopped, every connection has been told, so a client that finds the port closed knows
    /// that nothing it sends from then on is read.
    fn enter(&self, phase: Phase) {
        let live = self
            .shutdown
            .registry
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for conn in live.values().filter_map(Weak::upgrade) {
            conn.raise(phase_events(phase));
        }
        self.phase.send_replace(phase);
        drop(live);
    }

    /// Runs both phases by `deadline` (the one grace period of the whole shutdown); returns
    /// false if it passed with connections left.
    pub async fn shut_down(self, deadline: tokio::time::Instant) -> bool {
        self.enter(Phase::StopReading);
        // Closed: `wait` resolves once no token is left (tokens taken later still count).
        self.shutdown.reading.close();
        let reading = self.shutdown.reading.wait();
        let stopped = tokio::time::timeout_at(deadline, reading).await.is_ok();
        self.enter(Phase::Close);
        self.shutdown.done.close();
        let done = self.shutdown.done.wait();
        let done = tokio::time::timeout_at(deadline, done).await.is_ok();
        stopped && done
    }
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}
