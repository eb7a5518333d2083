//! Out-of-band events for one connection (kicked as a slow consumer, shutdown's phases), raised
//! by other tasks and checked by the connection's own loop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use futures_util::task::AtomicWaker;
use gsio_relay_core::RelayError;

/// Out-of-band events for one connection: it was kicked (slow consumer), or shutdown reached a
/// phase. A connection's loop checks them with one atomic load per turn; registering to be woken
/// is an [`AtomicWaker`] (no lock, and no work at all when the waker is unchanged).
#[derive(Default)]
pub struct ConnEvents {
    raised: AtomicU8,
    /// Why the connection was kicked; set once, before [`ConnEvents::KICKED`] is raised.
    reason: OnceLock<RelayError>,
    /// One waker per task that waits on these events (see [`Waiter`]).
    wakers: [AtomicWaker; Waiter::COUNT],
}

/// Which of a connection's tasks is waiting: each has its own waker slot, so that one task
/// registering does not replace the other's waker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// The task that writes to the peer (on WebSocket, the connection's only task).
    Writer,
    /// A gRPC stream's reader task (the WebSocket front reads in its writer's task).
    Reader,
}

impl Waiter {
    const COUNT: usize = 2;

    fn slot(self) -> usize {
        match self {
            Waiter::Writer => 0,
            Waiter::Reader => 1,
        }
    }
}

impl ConnEvents {
    pub const KICKED: u8 = 1;
    pub const STOP_READING: u8 = 2;
    pub const CLOSE: u8 = 4;

    /// Kicks the connection; returns true the first time (later kicks keep the first reason).
    pub(crate) fn kick(&self, reason: RelayError) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            self.raise(ConnEvents::KICKED);
        }
        first
    }

    /// True once any of `events` was raised (one atomic load: a kick is checked on every
    /// delivery).
    pub(crate) fn is_raised(&self, events: u8) -> bool {
        self.raised.load(Ordering::SeqCst) & events != 0
    }

    pub(crate) fn raise(&self, events: u8) {
        self.raised.fetch_or(events, Ordering::SeqCst);
        for waker in &self.wakers {
            waker.wake();
        }
    }

    /// Resolves with the raised events among `mask`, for the `waiter` task. Cancel safe, and
    /// cheap to create anew on every turn of a loop.
    pub async fn raised(&self, waiter: Waiter, mask: u8) -> u8 {
        std::future::poll_fn(|cx| {
            let raised = self.raised.load(Ordering::SeqCst) & mask;
            if raised != 0 {
                return std::task::Poll::Ready(raised);
            }
            self.wakers[waiter.slot()].register(cx.waker());
            // Raised between the check and the registration: do not sleep through it.
            match self.raised.load(Ordering::SeqCst) & mask {
                0 => std::task::Poll::Pending,
                raised => std::task::Poll::Ready(raised),
            }
        })
        .await
    }

    /// Why the connection was kicked.
    pub fn reason(&self) -> RelayError {
        self.reason
            .get()
            .cloned()
            .unwrap_or(RelayError::ShuttingDown)
    }
}
