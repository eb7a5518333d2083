//! Connections per client address: how many one address holds, and how fast it opens new ones.
//!
//! Every front asks an [`AddressTable`] before it serves a new connection
//! ([`AddressTable::admit`]) and tells it when the connection ends ([`AddressTable::release`]).
//! The table decides; the front only carries the decision out (the native WebSocket front
//! answers HTTP 429, the gRPC front closes the TCP connection, the Worker answers 429). Like the
//! rest of the core it reads no clock: `now` is passed in, any monotonic time since a fixed
//! start.
//!
//! # What is counted
//! - **Live connections** per address, against `limits.max_connections_per_ip`.
//! - **New connections** per address, by a token bucket: `new_connections_per_ip_burst` tokens,
//!   refilled at `new_connections_per_ip_per_second`; each admitted connection takes one. A
//!   refused connection takes none, so a client that keeps trying is admitted as soon as the
//!   bucket allows.
//!
//! The limits are passed to every call, so a reload of `relay.toml` applies to the next
//! connection.
//!
//! # Addresses
//! [`AddressKey`] is what one client is: an IPv4 address (an IPv4-mapped IPv6 address counts as
//! its IPv4 address), or an IPv6 address's /64 prefix, because one IPv6 host (one home or one
//! VM) is usually handed a whole /64 and can pick any address in it.
//!
//! # Bounded memory
//! An entry exists only while its address holds a connection or its bucket is still refilling:
//! it is removed when its last connection ends and its bucket is full, and entries that became
//! removable since are swept whenever the table has doubled since the last sweep (amortised
//! O(1) per admission). So the table holds at most the addresses with a live connection plus
//! those admitted within the last `burst / per_second` seconds (5 s with the defaults). Every
//! entry also stands for a connection that was admitted and completed a TCP handshake (or, on
//! the edge, came through Cloudflare, which sets the address): a client cannot add entries by
//! spoofing source addresses. And [`AddressTable::new`] takes a hard `capacity`: at it, entries
//! with no live connection are dropped (those addresses forget their recent rate, the only way
//! the table ever errs, towards admitting), and only a table whose every entry holds a live
//! connection refuses a new address. The native relay sizes it to the connections it can hold at
//! all, so that never happens there.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::config::Limits;
use crate::RelayError;

/// One client, as the limits count it: an IPv4 address or an IPv6 /64 prefix (see the module's
/// docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(_) => AddressKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    AddressKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The per-address limits of `relay.toml`'s `[limits]` that one admission is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimits {
    /// Live connections per address; 0: no limit.
    pub max_connections: u32,
    /// New connections per second per address; 0: no limit.
    pub per_second: u32,
    /// New connections at once per address, above the rate.
    pub burst: u32,
}

impl AddressLimits {
    pub fn of(limits: &Limits) -> AddressLimits {
        AddressLimits {
            max_connections: limits.max_connections_per_ip,
            per_second: limits.new_connections_per_ip_per_second,
            burst: limits.new_connections_per_ip_burst,
        }
    }

    /// A full bucket, in millionths of a connection.
    fn full(&self) -> u64 {
        u64::from(self.burst) * MICRO
    }
}

/// Millionths of a token: one new connection costs [`MICRO`], and a second at `per_second`
/// refills `per_second * MICRO`, i.e. `per_second` per microsecond, in integers.
const MICRO: u64 = 1_000_000;

/// The smallest size at which the table sweeps: below it, sweeping costs more than it saves.
const MIN_SWEEP: usize = 64;

/// Why a connection was refused (the message of a `too_many_connections_from_address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds `limit` connections already.
    Connections { limit: u32 },
    /// The address opened new connections faster than `per_second` (after its burst).
    Rate { per_second: u32 },
    /// The table holds `capacity` addresses, each with a live connection.
    Addresses { capacity: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Connections { limit } => write!(
                f,
                "this address holds its limit of {limit} connections (limits.max_connections_per_ip)"
            ),
            Refusal::Rate { per_second } => write!(
                f,
                "this address opens connections faster than {per_second} a second \
                 (limits.new_connections_per_ip_per_second); try again later"
            ),
            Refusal::Addresses { capacity } => write!(
                f,
                "the relay tracks its limit of {capacity} client addresses; try again later"
            ),
        }
    }
}

impl From<Refusal> for RelayError {
    fn from(refusal: Refusal) -> RelayError {
        RelayError::TooManyConnectionsFromAddress(refusal)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    live: u32,
    /// Tokens in millionths, as of `at`.
    tokens: u64,
    at: Duration,
}

impl Entry {
    /// Refills the bucket up to `now`.
    fn refill(&mut self, now: Duration, limits: &AddressLimits) {
        let full = limits.full();
        if limits.per_second == 0 {
            self.tokens = full;
        } else if now > self.at {
            let micros = u64::try_from((now - self.at).as_micros()).unwrap_or(u64::MAX);
            let gained = micros.saturating_mul(u64::from(limits.per_second));
            self.tokens = self.tokens.saturating_add(gained).min(full);
        } else {
            // A lowered burst applies at once.
            self.tokens = self.tokens.min(full);
        }
        self.at = self.at.max(now);
    }

    /// No connection, and nothing to remember about its rate.
    fn removable(&mut self, now: Duration, limits: &AddressLimits) -> bool {
        self.refill(now, limits);
        self.live == 0 && self.tokens >= limits.full()
    }
}

/// Live connections and new-connection buckets, by [`AddressKey`]. Not thread-safe: a front
/// keeps it behind its own lock (the native relay), or in its single-threaded Durable Object.
#[derive(Debug)]
pub struct AddressTable {
    entries: HashMap<AddressKey, Entry>,
    /// At most this many addresses (see the module's docs).
    capacity: usize,
    /// The next sweep happens when the table grows past this.
    sweep_at: usize,
}

impl AddressTable {
    /// A table of at most `capacity` addresses.
    pub fn new(capacity: usize) -> AddressTable {
        AddressTable {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Admits a new connection from `ip` at `now`, or says why not. An admitted connection must
    /// be [`released`](AddressTable::release) when it ends.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        now: Duration,
        limits: &AddressLimits,
    ) -> Result<(), Refusal> {
        let key = AddressKey::of(ip);
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.sweep_at.min(self.capacity) {
                self.sweep(now, limits);
            }
            if self.entries.len() >= self.capacity {
                // Forget the rate of addresses that hold no connection, rather than refuse.
                self.entries.retain(|_, entry| entry.live > 0);
                if self.entries.len() >= self.capacity {
                    return Err(Refusal::Addresses {
                        capacity: self.capacity,
                    });
                }
            }
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            live: 0,
            tokens: limits.full(),
            at: now,
        });
        entry.refill(now, limits);
        if limits.max_connections != 0 && entry.live >= limits.max_connections {
            return Err(Refusal::Connections {
                limit: limits.max_connections,
            });
        }
        if limits.per_second != 0 {
            if entry.tokens < MICRO {
                let per_second = limits.per_second;
                if entry.live == 0 && entry.tokens >= limits.full() {
                    // A burst of 0 with a rate on cannot be configured; nothing to remember.
                    self.entries.remove(&key);
                }
                return Err(Refusal::Rate { per_second });
            }
            entry.tokens -= MICRO;
        }
        entry.live += 1;
        Ok(())
    }

    /// Counts a live connection from `ip` that was admitted before this table existed (the
    /// Worker rebuilding a room's table from its sockets after an eviction): no token taken,
    /// never refused. Its rate history is gone with the old table.
    pub fn restore(&mut self, ip: IpAddr, now: Duration, limits: &AddressLimits) {
        let entry = self.entries.entry(AddressKey::of(ip)).or_insert(Entry {
            live: 0,
            tokens: limits.full(),
            at: now,
        });
        entry.live = entry.live.saturating_add(1);
    }

    /// A connection admitted from `ip` ended.
    pub fn release(&mut self, ip: IpAddr, now: Duration, limits: &AddressLimits) {
        let key = AddressKey::of(ip);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.live = entry.live.saturating_sub(1);
            if entry.removable(now, limits) {
                self.entries.remove(&key);
            }
        }
    }

    /// Live connections from `ip`'s address now.
    pub fn live(&self, ip: IpAddr) -> u32 {
        self.entries
            .get(&AddressKey::of(ip))
            .map_or(0, |entry| entry.live)
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry with nothing to remember, and schedules the next sweep for when the
    /// table has doubled.
    fn sweep(&mut self, now: Duration, limits: &AddressLimits) {
        self.entries
            .retain(|_, entry| !entry.removable(now, limits));
        self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const fn limits(max_connections: u32, per_second: u32, burst: u32) -> AddressLimits {
        AddressLimits {
            max_connections,
            per_second,
            burst,
        }
    }

    #[test]
    fn keys_are_ipv4_addresses_and_ipv6_slash_64s() {
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::1", "::/64"),
        ];
        for (address, key) in table {
            assert_eq!(AddressKey::of(ip(address)).to_string(), key, "{address}");
        }
    }

    /// Each step: (address, `true` to admit / `false` to release, when in ms, expected).
    fn run(limits: AddressLimits, steps: &[(&str, bool, u64, Result<(), Refusal>)]) {
        let mut table = AddressTable::new(1000);
        for (n, (address, admit, at, expected)) in steps.iter().enumerate() {
            if *admit {
                let got = table.admit(ip(address), ms(*at), &limits);
                assert_eq!(got, *expected, "step {n}: admit {address} at {at} ms");
            } else {
                table.release(ip(address), ms(*at), &limits);
            }
        }
    }

    #[test]
    fn live_connections_per_address_are_limited() {
        let over = Err(Refusal::Connections { limit: 2 });
        run(
            limits(2, 0, 0),
            &[
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, over),
                // Another address is not affected.
                ("10.0.0.2", true, 0, Ok(())),
                // IPv4-mapped is the same address.
                ("::ffff:10.0.0.1", true, 0, over),
                // One ends: one more fits, and only one.
                ("10.0.0.1", false, 5, Ok(())),
                ("10.0.0.1", true, 5, Ok(())),
                ("10.0.0.1", true, 5, over),
                // One IPv6 /64 is one address.
                ("2001:db8::1", true, 0, Ok(())),
                ("2001:db8::2", true, 0, Ok(())),
                (
                    "2001:db8::3",
                    true,
                    0,
                    Err(Refusal::Connections { limit: 2 }),
                ),
                ("2001:db8:0:1::3", true, 0, Ok(())),
            ],
        );
    }

    #[test]
    fn new_connections_per_address_are_a_token_bucket() {
        let fast = Err(Refusal::Rate { per_second: 10 });
        run(
            limits(0, 10, 3),
            &[
                // The burst at once, then refused.
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, fast),
                // Closing does not give tokens back.
                ("10.0.0.1", false, 1, Ok(())),
                ("10.0.0.1", true, 1, fast),
                // One token every 100 ms.
                ("10.0.0.1", true, 99, fast),
                ("10.0.0.1", true, 100, Ok(())),
                ("10.0.0.1", true, 100, fast),
                // A refused attempt costs nothing: the next token still comes at 200 ms.
                ("10.0.0.1", true, 150, fast),
                ("10.0.0.1", true, 200, Ok(())),
                // Refill stops at the burst.
                ("10.0.0.1", true, 10_000, Ok(())),
                ("10.0.0.1", true, 10_000, Ok(())),
                ("10.0.0.1", true, 10_000, Ok(())),
                ("10.0.0.1", true, 10_000, fast),
                // Another address has its own bucket.
                ("10.0.0.2", true, 10_000, Ok(())),
            ],
        );
    }

    #[test]
    fn both_limits_apply_and_zero_turns_each_off() {
        run(
            limits(1, 1, 5),
            &[
                ("10.0.0.1", true, 0, Ok(())),
                ("10.0.0.1", true, 0, Err(Refusal::Connections { limit: 1 })),
                ("10.0.0.1", false, 0, Ok(())),
                ("10.0.0.1", true, 0, Ok(())),
            ],
        );
        let mut table = AddressTable::new(10);
        for _ in 0..10_000 {
            table
                .admit(ip("10.0.0.1"), ms(0), &limits(0, 0, 0))
                .unwrap();
        }
        assert_eq!(table.live(ip("10.0.0.1")), 10_000);
    }

    /// A reload's limits apply to the next admission: a lowered burst at once, a raised limit too.
    #[test]
    fn changed_limits_apply_to_the_next_connection() {
        let mut table = AddressTable::new(10);
        let a = ip("10.0.0.1");
        table.admit(a, ms(0), &limits(1, 10, 10)).unwrap();
        assert!(table.admit(a, ms(0), &limits(1, 10, 10)).is_err());
        table.admit(a, ms(0), &limits(2, 10, 10)).unwrap();
        // 8 tokens left; a burst of 1 leaves 1.
        table.admit(a, ms(0), &limits(0, 10, 1)).unwrap();
        assert_eq!(
            table.admit(a, ms(0), &limits(0, 10, 1)),
            Err(Refusal::Rate { per_second: 10 })
        );
    }

    #[test]
    fn entries_go_once_idle_and_refilled() {
        let l = limits(0, 10, 2);
        let mut table = AddressTable::new(1000);
        let a = ip("10.0.0.1");
        table.admit(a, ms(0), &l).unwrap();
        assert_eq!(table.len(), 1);
        // Released before its bucket refilled: remembered (its rate still counts).
        table.release(a, ms(50), &l);
        assert_eq!(table.len(), 1);
        // Released after: gone at once.
        table.admit(a, ms(1_000), &l).unwrap();
        table.release(a, ms(2_000), &l);
        assert!(table.is_empty());
        // Without a rate, an address is forgotten with its last connection.
        table.admit(a, ms(0), &limits(5, 0, 0)).unwrap();
        table.release(a, ms(0), &limits(5, 0, 0));
        assert!(table.is_empty());
        // A release for an unknown address (never admitted) changes nothing.
        table.release(ip("10.0.0.9"), ms(0), &l);
        assert!(table.is_empty());
    }

    /// Many addresses that connect once and leave: the table stays near the number that are
    /// still refilling, never the number seen.
    #[test]
    fn many_addresses_do_not_grow_the_table() {
        let l = limits(10, 10, 1);
        let mut table = AddressTable::new(1_000_000);
        let mut largest = 0;
        for n in 0..100_000u32 {
            let at = ms(u64::from(n));
            let address = IpAddr::from(n.to_be_bytes());
            table.admit(address, at, &l).unwrap();
            table.release(address, at, &l);
            largest = largest.max(table.len());
        }
        // One address a millisecond, each refilled 100 ms later: about 100 refilling at once,
        // and a sweep when the table doubles.
        assert!(largest <= 2 * 100 + MIN_SWEEP, "{largest}");
    }

    #[test]
    fn at_capacity_idle_addresses_are_forgotten_and_live_ones_refuse() {
        let l = limits(10, 1, 1);
        let mut table = AddressTable::new(3);
        let addr = |n: u8| IpAddr::from([10, 0, 0, n]);
        for n in 1..=3 {
            table.admit(addr(n), ms(0), &l).unwrap();
        }
        // Three live: a fourth address is refused, a known one is still counted.
        assert_eq!(
            table.admit(addr(4), ms(0), &l),
            Err(Refusal::Addresses { capacity: 3 })
        );
        assert_eq!(
            table.admit(addr(1), ms(0), &l),
            Err(Refusal::Rate { per_second: 1 })
        );
        // One leaves, its bucket still empty: it is forgotten to make room.
        table.release(addr(3), ms(1), &l);
        assert_eq!(table.len(), 3);
        table.admit(addr(4), ms(1), &l).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table.live(addr(3)), 0);
    }

    #[test]
    fn restored_connections_count_but_take_no_token() {
        let l = limits(2, 1, 1);
        let mut table = AddressTable::new(10);
        let a = ip("10.0.0.1");
        table.restore(a, ms(0), &l);
        table.restore(a, ms(0), &l);
        assert_eq!(table.live(a), 2);
        assert_eq!(
            table.admit(a, ms(0), &l),
            Err(Refusal::Connections { limit: 2 })
        );
        table.release(a, ms(0), &l);
        table.admit(a, ms(0), &l).unwrap();
    }

    #[test]
    fn refusals_name_the_setting() {
        let texts = [
            (
                Refusal::Connections { limit: 7 },
                "limits.max_connections_per_ip",
            ),
            (
                Refusal::Rate { per_second: 7 },
                "limits.new_connections_per_ip_per_second",
            ),
            (Refusal::Addresses { capacity: 7 }, "7 client addresses"),
        ];
        for (refusal, needle) in texts {
            let error = RelayError::from(refusal);
            assert_eq!(error.code().as_str(), "too_many_connections_from_address");
            assert!(error.to_string().contains(needle), "{error}");
        }
    }
}
