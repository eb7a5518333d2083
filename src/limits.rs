//! The native relay's side of the per-address limits ([`gsio_relay_core::address`]): the
//! shared table behind a lock, the guard that gives a connection back when it ends, and the
//! WebSocket front's refusal (HTTP 429).
//!
//! The table decides; this module only carries the decision out. A connection is checked right
//! after `accept`, before it takes a slot or a task of its own ([`crate::server`]).
//!
//! # The refusal
//! - **WebSocket**: `429 Too Many Requests`, `Retry-After: 1` and a text body that starts with
//!   `too_many_connections_from_address: `, written at once, without reading the request (so a
//!   refused client costs no parsing), then the connection is closed. Browsers see a failed
//!   upgrade; a WebSocket library shows the status. The write and close are bounded: at most
//!   [`REFUSING_AT_ONCE`] refusals are in flight, each for at most [`REFUSAL_LINGER`], and past
//!   that a refused connection is simply closed.
//! - **gRPC**: the HTTP/2 server preface and a `GOAWAY` `ENHANCE_YOUR_CALM` whose debug data
//!   starts with `too_many_connections_from_address: `, written at once (HTTP/2 lets a server
//!   send its preface first), then the connection is closed; bounded the same way. A tonic
//!   client sees `RESOURCE_EXHAUSTED` (the GOAWAY's debug data in its source).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gsio_relay_core::address::{AddressLimits, AddressTable, Refusal};
use gsio_relay_core::RelayError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::metrics::Front;
use crate::state::Relay;

/// Refusals being written at once, at most; past it a refused connection is closed unanswered.
const REFUSING_AT_ONCE: usize = 256;
/// How long a refusal waits for the client to read the answer and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The per-address table every front shares.
pub struct Addresses {
    /// std `Mutex`: held only for one admission or release, never across an `.await`.
    table: Mutex<AddressTable>,
    /// For the limits in force (a reload applies to the next connection) and the counters.
    relay: Arc<Relay>,
    /// The core reads no clock: times are handed to it as the time since this instant.
    start: Instant,
    /// Bounds the refusals being written ([`REFUSING_AT_ONCE`]).
    refusing: Arc<Semaphore>,
}

impl Addresses {
    /// A table for the connections of both fronts: at most `max_connections` on each, so at
    /// most twice that many addresses hold a live connection, and a new one is never refused
    /// for want of room (see [`gsio_relay_core::address`]).
    pub fn new(relay: Arc<Relay>) -> Arc<Addresses> {
        let capacity = relay.config().server.max_connections.saturating_mul(2);
        Arc::new(Addresses {
            table: Mutex::new(AddressTable::new(capacity)),
            relay,
            start: Instant::now(),
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
        })
    }

    fn limits(&self) -> AddressLimits {
        AddressLimits::of(&self.relay.config().limits)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, AddressTable> {
        // A panic while holding it cannot leave the table inconsistent in a way that matters
        // more than refusing every connection would.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a connection from `ip` on `front`, or counts its refusal.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, front: Front) -> Result<AddressGuard, Refusal> {
        let limits = self.limits();
        let admitted = self.table().admit(ip, self.start.elapsed(), &limits);
        match admitted {
            Ok(()) => Ok(AddressGuard {
                addresses: self.clone(),
                ip,
            }),
            Err(refusal) => {
                self.relay.metrics.refused(front);
                tracing::debug!(%ip, front = front.as_str(), "connection refused: {refusal}");
                Err(refusal)
            }
        }
    }

    /// Answers a refused WebSocket client with 429 and closes its connection, in the
    /// background and bounded (see the module's docs).
    pub fn refuse_ws(&self, stream: TcpStream, refusal: Refusal) {
        let error = RelayError::from(refusal);
        let body = format!("{}: {error}", error.code());
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.refuse(stream, answer.into_bytes());
    }

    /// Answers a refused gRPC client with the HTTP/2 server preface (empty SETTINGS) and a
    /// `GOAWAY` `ENHANCE_YOUR_CALM` whose debug data is `too_many_connections_from_address: ...`,
    /// then closes its connection, bounded like [`Addresses::refuse_ws`].
    pub fn refuse_grpc(&self, stream: TcpStream, refusal: Refusal) {
        let error = RelayError::from(refusal);
        let debug = format!("{}: {error}", error.code());
        let mut answer = Vec::with_capacity(9 + 9 + 8 + debug.len());
        // SETTINGS, no settings: type 4, stream 0.
        answer.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // GOAWAY: type 7, stream 0; last stream 0, error ENHANCE_YOUR_CALM (0xb), debug data.
        let length = u32::try_from(8 + debug.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        answer.extend_from_slice(&[length[1], length[2], length[3], 7, 0, 0, 0, 0, 0]);
        answer.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x0b]);
        answer.extend_from_slice(debug.as_bytes());
        self.refuse(stream, answer);
    }

    /// Writes `answer`, closes our side, and reads what the client still sends until it closes
    /// its own, within [`REFUSAL_LINGER`]; at most [`REFUSING_AT_ONCE`] at once, past which the
    /// connection is closed unanswered.
    fn refuse(&self, mut stream: TcpStream, answer: Vec<u8>) {
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
                // Read (and drop) the request until the client closes: closing with its bytes
                // unread would reset the connection and could discard the answer.
                let mut scratch = [0u8; 1024];
                while stream.read(&mut scratch).await? != 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }
}

/// One admitted connection's place in the table; dropping it gives the place back.
pub struct AddressGuard {
    addresses: Arc<Addresses>,
    ip: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let limits = self.addresses.limits();
        let now = self.addresses.start.elapsed();
        self.addresses.table().release(self.ip, now, &limits);
    }
}
