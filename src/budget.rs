//! The memory a WebSocket client can make the relay hold for messages it has not finished
//! sending, bounded twice (the README's "Memory"):
//!
//! - **before it has an id**, a connection may announce frames and fragmented messages of at
//!   most `limits.anonymous_message_bytes` ([`gsio_relay_core::config::Limits::anonymous_frame_bytes`]):
//!   a larger one is refused from its header, before any of its body is read;
//! - **all connections together** hold at most `limits.partial_messages_budget_bytes` of
//!   unfinished messages beyond [`ALLOWANCE`] each ([`PartialMessages`]): the connection whose
//!   bytes would go over it is refused before they are handed on.
//!
//! tungstenite buffers a frame until it is whole and cannot change its limits after the
//! handshake, so the bounds sit under it: [`Guarded`] wraps the TCP stream, follows the
//! WebSocket framing of what the client sends (headers only: the bytes pass through untouched)
//! and hands tungstenite only bytes the bounds allow. A refusal is an I/O error carrying a
//! [`Refusal`], which the front turns into the core's input
//! ([`gsio_relay_core::Input::OversizedAnonymousFrame`],
//! [`gsio_relay_core::Input::OverMemoryBudget`]); the core decides how the connection ends.
//!
//! Bytes allowed are decided when tungstenite asks for them, not when they arrive: a client that
//! sends its first envelope (which gives it its id) and a large second one at once has the
//! second one's header held back until the first has been read and its id bound, and is then
//! judged as the peer it has become. Bytes held back this way ([`Guarded`]'s stash) are at most
//! one read of tungstenite's (its read buffer, 2 KiB) or of the handshake's.
//!
//! The common case costs a few comparisons per frame: a peer whose messages stay within
//! [`ALLOWANCE`] never touches the shared counter, and the limits in force (which a reload may
//! change) are read only for a frame of a connection without an id, or for bytes beyond the
//! allowance.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use gsio_relay_core::Input;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::state::Relay;

/// Bytes of one connection's unfinished message (and of a control frame being read) that do not
/// draw on the shared budget: what a peer with ordinary envelopes (a few KiB at most) never
/// exceeds, so the budget never refuses it. With `max_connections` connections, at most this
/// many bytes each, plus the budget, are held in unfinished messages.
pub const ALLOWANCE: u64 = 16 * 1024;

/// The memory every WebSocket connection's unfinished messages share beyond their [`ALLOWANCE`]:
/// one per relay, taken from and given back by each connection's [`Guarded`] stream.
#[derive(Debug, Default)]
pub struct PartialMessages {
    /// Bytes taken now, by all connections together.
    taken: AtomicU64,
}

impl PartialMessages {
    pub fn new() -> Arc<PartialMessages> {
        Arc::new(PartialMessages::default())
    }

    /// Bytes of unfinished messages beyond the allowances, now.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if the total stays within `budget`.
    fn try_take(&self, bytes: u64, budget: u64) -> bool {
        self.taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                taken.checked_add(bytes).filter(|&total| total <= budget)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.taken.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Why a connection's next bytes are not handed on: it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A frame or message over `limit` from a connection without an id.
    #[error("a frame or message over {limit} bytes before the connection has an id")]
    Anonymous { limit: usize },
    /// The shared budget for unfinished messages is taken.
    #[error("the budget of {budget} bytes for unfinished messages is taken")]
    Budget { budget: u64 },
}

impl Refusal {
    /// The refusal a WebSocket read failed with, if that is why it failed.
    pub fn of(error: &tokio_tungstenite::tungstenite::Error) -> Option<Refusal> {
        match error {
            tokio_tungstenite::tungstenite::Error::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Refusal>())
                .copied(),
            _ => None,
        }
    }

    /// What the core is told.
    pub fn input(self) -> Input {
        match self {
            Refusal::Anonymous { limit } => Input::OversizedAnonymousFrame { limit },
            Refusal::Budget { budget } => Input::OverMemoryBudget { budget },
        }
    }
}

/// The limits in force, read only when a decision needs them (a reload changes them for the next
/// decision).
pub trait Bounds {
    /// `limits.anonymous_message_bytes`.
    fn anonymous_message_bytes(&self) -> usize;
    /// `limits.partial_messages_budget_bytes`.
    fn partial_messages_budget_bytes(&self) -> u64;
}

impl Bounds for Relay {
    fn anonymous_message_bytes(&self) -> usize {
        self.config().limits.anonymous_message_bytes
    }

    fn partial_messages_budget_bytes(&self) -> u64 {
        self.config().limits.partial_messages_budget_bytes
    }
}

/// Where the client's bytes are in the WebSocket framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// In the HTTP upgrade request. `newline`: 1 just after a `\n`, 2 after `\n\r`, else 0; the
    /// request ends at the first empty line (`\n\n` or `\n\r\n`, as HTTP/1 parsers accept).
    Request { newline: u8 },
    /// In a frame header: `have` of its bytes so far.
    Header { have: usize },
    /// In a frame's payload.
    Payload {
        remaining: u64,
        control: bool,
        fin: bool,
    },
}

/// Follows the framing of one connection's incoming bytes and decides which may be handed on:
/// the pure part of [`Guarded`].
#[derive(Debug)]
struct Meter {
    position: Position,
    /// The frame header being read (at most 14 bytes: 2, 8 of length, 4 of mask).
    header: [u8; 14],
    /// Payload bytes announced so far by the frames of the data message being read.
    announced: u64,
    /// Payload bytes read so far of the data message being read (all its frames).
    message: u64,
    /// Payload bytes read so far of the control frame being read.
    control: u64,
    /// Taken from the shared budget for this connection: `message + control` beyond
    /// [`ALLOWANCE`].
    taken: u64,
    /// No id yet: the anonymous limit applies.
    anonymous: bool,
    /// The hard frame limit the connection was accepted with: the anonymous limit never goes
    /// beyond it.
    hard_frame_bytes: usize,
}

impl Meter {
    fn new(hard_frame_bytes: usize) -> Meter {
        Meter {
            position: Position::Request { newline: 0 },
            header: [0; 14],
            announced: 0,
            message: 0,
            control: 0,
            taken: 0,
            anonymous: true,
            hard_frame_bytes,
        }
    }

    /// How many of `bytes` (the next bytes from the client) may be handed on now, counted as
    /// read; and if not all, why the next one may not.
    fn admit(
        &mut self,
        bytes: &[u8],
        bounds: &dyn Bounds,
        budget: &PartialMessages,
    ) -> (usize, Option<Refusal>) {
        let mut at = 0;
        while at < bytes.len() {
            match self.position {
                Position::Request { newline } => {
                    let b = bytes[at];
                    at += 1;
                    self.position = match (newline, b) {
                        (1 | 2, b'\n') => Position::Header { have: 0 },
                        (_, b'\n') => Position::Request { newline: 1 },
                        (1, b'\r') => Position::Request { newline: 2 },
                        _ => Position::Request { newline: 0 },
                    };
                }
                Position::Header { have } => {
                    let b = bytes[at];
                    self.header[have] = b;
                    if have + 1 < header_len(&self.header[..=have]) {
                        at += 1;
                        self.position = Position::Header { have: have + 1 };
                        continue;
                    }
                    // The header's last byte: the frame is judged before it is handed on.
                    if let Err(refusal) = self.begin_frame(bounds) {
                        return (at, Some(refusal));
                    }
                    at += 1;
                    if let Position::Payload {
                        remaining: 0,
                        control,
                        fin,
                    } = self.position
                    {
                        self.end_frame(control, fin, bounds, budget);
                    }
                }
                Position::Payload {
                    remaining,
                    control,
                    fin,
                } => {
                    let n =
                        (bytes.len() - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let (message, frame) = if control {
                        (self.message, self.control + n as u64)
                    } else {
                        (self.message + n as u64, self.control)
                    };
                    if let Err(refusal) = self.settle(message + frame, bounds, budget) {
                        return (at, Some(refusal));
                    }
                    (self.message, self.control) = (message, frame);
                    at += n;
                    let remaining = remaining - n as u64;
                    self.position = Position::Payload {
                        remaining,
                        control,
                        fin,
                    };
                    if remaining == 0 {
                        self.end_frame(control, fin, bounds, budget);
                    }
                }
            }
        }
        (at, None)
    }

    /// A complete header in `self.header`: refused, or the frame begins.
    fn begin_frame(&mut self, bounds: &dyn Bounds) -> Result<(), Refusal> {
        let first = self.header[0];
        let fin = first & 0x80 != 0;
        let control = first & 0x08 != 0;
        let continuation = first & 0x0f == 0;
        let length = payload_len(&self.header);
        let announced = if control {
            length
        } else if continuation {
            self.announced.saturating_add(length)
        } else {
            length
        };
        if self.anonymous {
            let limit = bounds.anonymous_message_bytes().min(self.hard_frame_bytes);
            if announced > limit as u64 {
                return Err(Refusal::Anonymous { limit });
            }
        }
        if !control {
            if !continuation {
                // A new message (after an unfinished one, tungstenite ends the connection).
                self.message = 0;
            }
            self.announced = announced;
        }
        self.position = Position::Payload {
            remaining: length,
            control,
            fin,
        };
        Ok(())
    }

    /// The end of a frame's payload.
    fn end_frame(
        &mut self,
        control: bool,
        fin: bool,
        bounds: &dyn Bounds,
        budget: &PartialMessages,
    ) {
        if control {
            self.control = 0;
        } else if fin {
            self.message = 0;
            self.announced = 0;
        }
        // Only gives back: nothing can be refused.
        let _ = self.settle(self.message + self.control, bounds, budget);
        self.position = Position::Header { have: 0 };
    }

    /// Takes from or gives back to the budget so that this connection holds what `pending`
    /// bytes beyond the allowance need; refused when the budget cannot give it.
    fn settle(
        &mut self,
        pending: u64,
        bounds: &dyn Bounds,
        budget: &PartialMessages,
    ) -> Result<(), Refusal> {
        let needed = pending.saturating_sub(ALLOWANCE);
        if needed > self.taken {
            let limit = bounds.partial_messages_budget_bytes();
            if !budget.try_take(needed - self.taken, limit) {
                return Err(Refusal::Budget { budget: limit });
            }
        } else if needed < self.taken {
            budget.give_back(self.taken - needed);
        }
        self.taken = needed;
        Ok(())
    }
}

/// The length of the frame header that starts with `start` (at least its first byte): 2, plus
/// 2 or 8 bytes of extended length, plus 4 of mask; 2 until the second byte is known.
fn header_len(start: &[u8]) -> usize {
    let Some(&second) = start.get(1) else {
        return 2;
    };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
}

/// The payload length a complete header announces.
fn payload_len(header: &[u8; 14]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
        short => u64::from(short),
    }
}

/// A client's TCP stream, read through its memory bounds (see the module's docs). Writes pass
/// through.
pub struct Guarded<S> {
    inner: S,
    meter: Meter,
    /// Read from the client but not handed on yet: what followed a refused header or payload
    /// bytes in the same read, kept to be judged again on the next read.
    stash: Vec<u8>,
    budget: Arc<PartialMessages>,
    /// The limits in force (the relay's configuration).
    bounds: Arc<dyn Bounds + Send + Sync>,
}

impl<S> Guarded<S> {
    /// `inner`, before the WebSocket handshake, for a connection accepted with
    /// `hard_frame_bytes` as its hard frame limit.
    pub fn new(
        inner: S,
        hard_frame_bytes: usize,
        budget: Arc<PartialMessages>,
        bounds: Arc<dyn Bounds + Send + Sync>,
    ) -> Guarded<S> {
        Guarded {
            inner,
            meter: Meter::new(hard_frame_bytes),
            stash: Vec::new(),
            budget,
            bounds,
        }
    }

    /// The hard frame limit this connection was accepted with.
    pub fn hard_frame_bytes(&self) -> usize {
        self.meter.hard_frame_bytes
    }

    /// The connection has an id: the anonymous limit no longer applies.
    pub fn identified(&mut self) {
        self.meter.anonymous = false;
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.budget.give_back(self.meter.taken);
    }
}

fn refused(refusal: Refusal) -> io::Error {
    io::Error::other(refusal)
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.stash.is_empty() && buf.remaining() > 0 {
            let offered = this.stash.len().min(buf.remaining());
            let (n, refusal) =
                this.meter
                    .admit(&this.stash[..offered], &*this.bounds, &this.budget);
            if n == 0 {
                if let Some(refusal) = refusal {
                    return Poll::Ready(Err(refused(refusal)));
                }
            }
            buf.put_slice(&this.stash[..n]);
            this.stash.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[start..];
        let (n, refusal) = this.meter.admit(read, &*this.bounds, &this.budget);
        if n < read.len() {
            this.stash.extend_from_slice(&read[n..]);
            buf.set_filled(start + n);
            if n == 0 {
                if let Some(refusal) = refusal {
                    return Poll::Ready(Err(refused(refusal)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        anonymous: usize,
        budget: u64,
    }

    impl Bounds for Fixed {
        fn anonymous_message_bytes(&self) -> usize {
            self.anonymous
        }
        fn partial_messages_budget_bytes(&self) -> u64 {
            self.budget
        }
    }

    const REQUEST: &[u8] = b"GET /?node_id=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";

    /// A masked client frame header: `first` is the FIN/opcode byte.
    fn header(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(first: u8, len: usize) -> Vec<u8> {
        let mut f = header(first, len as u64);
        f.resize(f.len() + len, b'x');
        f
    }

    /// Feeds `bytes` in chunks of `chunk`, as tungstenite's reads would, re-offering what was
    /// not admitted; returns the bytes admitted and the refusal, if any.
    fn feed(
        meter: &mut Meter,
        bytes: &[u8],
        chunk: usize,
        bounds: &Fixed,
        budget: &PartialMessages,
    ) -> (usize, Option<Refusal>) {
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + chunk).min(bytes.len());
            let (n, refusal) = meter.admit(&bytes[at..end], bounds, budget);
            at += n;
            if let Some(refusal) = refusal {
                return (at, Some(refusal));
            }
        }
        (at, None)
    }

    #[test]
    fn the_request_ends_at_the_first_empty_line_however_lines_end() {
        let bounds = Fixed {
            anonymous: 100,
            budget: 1 << 20,
        };
        let budget = PartialMessages::default();
        for request in [
            &b"GET / HTTP/1.1\r\nA: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\nA: b\n\n",
            b"GET / HTTP/1.1\r\nA: b\n\r\n",
        ] {
            for chunk in [1, 3, 4096] {
                let mut meter = Meter::new(1 << 20);
                let mut bytes = request.to_vec();
                bytes.extend(frame(0x81, 10));
                // A frame over the anonymous limit right after: refused at its header's last
                // byte, so the request was followed exactly.
                let big = header(0x81, 101);
                bytes.extend(&big);
                let (n, refusal) = feed(&mut meter, &bytes, chunk, &bounds, &budget);
                assert_eq!(refusal, Some(Refusal::Anonymous { limit: 100 }));
                assert_eq!(n, bytes.len() - 1, "{request:?} in chunks of {chunk}");
            }
        }
    }

    /// Anonymous: the limit counts a fragmented message's frames together, control frames on
    /// their own; once identified, only the hard limit (tungstenite's) applies.
    #[test]
    fn anonymous_frames_and_messages_over_the_limit_are_refused_from_their_header() {
        let bounds = Fixed {
            anonymous: 1000,
            budget: 1 << 30,
        };
        let budget = PartialMessages::default();
        let cases: &[(&[(u8, usize)], bool)] = &[
            (&[(0x81, 1000)], false),
            (&[(0x81, 1001)], true),
            (&[(0x82, 1001)], true),
            (&[(0x01, 600), (0x80, 400)], false),
            (&[(0x01, 600), (0x89, 5), (0x80, 401)], true),
            (&[(0x81, 1000), (0x81, 1000)], false),
        ];
        for (frames, refused) in cases {
            let mut meter = Meter::new(1 << 20);
            let mut bytes = REQUEST.to_vec();
            for &(first, len) in *frames {
                bytes.extend(frame(first, len));
            }
            let (n, refusal) = feed(&mut meter, &bytes, 2048, &bounds, &budget);
            assert_eq!(refusal.is_some(), *refused, "{frames:?}");
            if *refused {
                assert_eq!(refusal, Some(Refusal::Anonymous { limit: 1000 }));
                let last = frames.last().unwrap().1;
                assert!(n < bytes.len() - last, "{frames:?}: its body was handed on");
            }
            // The same frames from an identified connection pass.
            let mut meter = Meter::new(1 << 20);
            meter.anonymous = false;
            assert_eq!(
                feed(&mut meter, &bytes, 2048, &bounds, &budget),
                (bytes.len(), None)
            );
        }
        // Never above the hard limit the connection was accepted with.
        let mut meter = Meter::new(500);
        let mut bytes = REQUEST.to_vec();
        bytes.extend(header(0x81, 501));
        let (_, refusal) = feed(&mut meter, &bytes, 2048, &bounds, &budget);
        assert_eq!(refusal, Some(Refusal::Anonymous { limit: 500 }));
    }

    /// A refused header is judged again when offered again: a connection that got its id in
    /// between passes.
    #[test]
    fn a_held_back_header_is_judged_again() {
        let bounds = Fixed {
            anonymous: 100,
            budget: 1 << 30,
        };
        let budget = PartialMessages::default();
        let mut meter = Meter::new(1 << 20);
        let mut bytes = REQUEST.to_vec();
        bytes.extend(frame(0x81, 50));
        bytes.extend(frame(0x81, 5000));
        let (n, refusal) = meter.admit(&bytes, &bounds, &budget);
        assert!(refusal.is_some());
        assert_eq!(meter.admit(&bytes[n..], &bounds, &budget), (0, refusal));
        meter.anonymous = false;
        assert_eq!(
            meter.admit(&bytes[n..], &bounds, &budget),
            (bytes.len() - n, None)
        );
    }

    /// Only bytes beyond the allowance draw on the budget; they are given back when the message
    /// (or control frame) ends, or when the connection goes; the connection whose bytes would
    /// go over the budget is refused before they are handed on, and others are not.
    #[test]
    fn unfinished_messages_share_the_budget_beyond_the_allowance() {
        let bounds = Fixed {
            anonymous: 1 << 20,
            budget: 100_000,
        };
        let budget = Arc::new(PartialMessages::default());
        let opened = || {
            let mut meter = Meter::new(1 << 30);
            assert_eq!(
                meter.admit(REQUEST, &bounds, &budget),
                (REQUEST.len(), None)
            );
            meter
        };
        // Small messages, one after another: nothing taken.
        let mut small = opened();
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend(frame(0x81, ALLOWANCE as usize));
        }
        assert_eq!(
            feed(&mut small, &bytes, 2048, &bounds, &budget),
            (bytes.len(), None)
        );
        assert_eq!(budget.taken(), 0);

        // An unfinished 110 000-byte message holds what is beyond the allowance.
        let mut a = opened();
        let head = header(0x81, 110_000);
        let body = vec![b'x'; 90_000];
        let part = [&head[..], &body[..]].concat();
        assert_eq!(
            feed(&mut a, &part, 2048, &bounds, &budget),
            (part.len(), None)
        );
        assert_eq!(budget.taken(), 90_000 - ALLOWANCE);
        // A second one cannot get all it needs: refused before the bytes that would go over.
        let mut b = opened();
        let (n, refusal) = feed(&mut b, &part, 2048, &bounds, &budget);
        assert_eq!(refusal, Some(Refusal::Budget { budget: 100_000 }));
        assert!(n < part.len());
        assert!(budget.taken() <= 100_000 && b.taken > 0);
        // Meanwhile a small message from a third connection passes.
        let mut c = opened();
        let ping = frame(0x81, 1000);
        assert_eq!(
            feed(&mut c, &ping, 2048, &bounds, &budget),
            (ping.len(), None)
        );
        // `b` goes (what dropping its stream does), `a` finishes: both shares come back.
        budget.give_back(std::mem::take(&mut b.taken));
        let rest = vec![b'x'; 20_000];
        assert_eq!(
            feed(&mut a, &rest, 2048, &bounds, &budget),
            (rest.len(), None)
        );
        assert_eq!(budget.taken(), 0);

        // Fragments count together; a ping in between is counted on its own.
        let mut d = opened();
        let mut bytes = frame(0x01, 40_000);
        bytes.extend(frame(0x89, 100));
        bytes.extend(frame(0x00, 40_000));
        assert_eq!(
            feed(&mut d, &bytes, 2048, &bounds, &budget),
            (bytes.len(), None)
        );
        assert_eq!(budget.taken(), 80_000 - ALLOWANCE);
        let end = frame(0x80, 0);
        assert_eq!(
            feed(&mut d, &end, 2048, &bounds, &budget),
            (end.len(), None)
        );
        assert_eq!(budget.taken(), 0);
    }

    /// Whatever a client sends (here: a request, then pseudo-random bytes, in chunks of every
    /// size), the meter neither panics nor hands on more than it was given, and what it took
    /// from the budget is within the budget.
    #[test]
    fn any_bytes_are_metered_without_panicking() {
        let bounds = Fixed {
            anonymous: 300,
            budget: 40_000,
        };
        let budget = PartialMessages::default();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..200 {
            let mut bytes = REQUEST.to_vec();
            for _ in 0..4096 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push((state >> 24) as u8);
            }
            let mut meter = Meter::new(1 << 20);
            meter.anonymous = round % 2 == 0;
            let chunk = 1 + round % 97;
            let (n, _) = feed(&mut meter, &bytes, chunk, &bounds, &budget);
            assert!(n <= bytes.len());
            assert!(budget.taken() <= 40_000);
            budget.give_back(std::mem::take(&mut meter.taken));
        }
        assert_eq!(budget.taken(), 0);
    }

    /// The stream: refusals are I/O errors carrying the [`Refusal`], bytes before them are
    /// handed on first, and dropping the stream gives its share of the budget back.
    #[tokio::test]
    async fn the_stream_hands_on_what_is_admitted_then_fails_with_the_refusal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bounds: Arc<dyn Bounds + Send + Sync> = Arc::new(Fixed {
            anonymous: 1 << 20,
            budget: 1 << 20,
        });
        let budget = PartialMessages::new();
        let (mut client, server) = tokio::io::duplex(1 << 22);
        let mut guarded = Guarded::new(server, 1 << 30, budget.clone(), bounds);
        guarded.identified();
        let mut sent = REQUEST.to_vec();
        sent.extend(header(0x81, 4 << 20));
        sent.resize(sent.len() + (2 << 20), b'x');
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 2048];
        let error = loop {
            match guarded.read(&mut chunk).await {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(error) => break error,
            }
        };
        let refusal = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<Refusal>())
            .copied();
        assert_eq!(refusal, Some(Refusal::Budget { budget: 1 << 20 }));
        assert_eq!(got[..], sent[..got.len()]);
        assert!(got.len() as u64 <= (1 << 20) + ALLOWANCE + REQUEST.len() as u64 + 14);
        assert!(budget.taken() > 0);
        drop(guarded);
        assert_eq!(budget.taken(), 0);
    }
}
