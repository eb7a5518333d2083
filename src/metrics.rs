//! The relay's metrics: counted where things happen, at a cost the hot path does not notice,
//! and read at scrape time ([`crate::admin`] serves them).
//!
//! # Where counting happens, and what it costs
//! - **Per message** (routed, delivered, by `message_type`, by mode) and **per `Error`
//!   envelope** (by code): the core tells each connection's [`ConnMeter`] as it routes
//!   ([`gsio_relay_core::Meter`]), which adds to one of [`SHARDS`] cache-line-aligned blocks of
//!   relaxed atomics, chosen by connection id. A routed message costs three relaxed
//!   `fetch_add`s on its connection's shard (mode, type, deliveries) and one string comparison
//!   (the type against the one its connection used last). Connections on different cores mostly
//!   write different shards, so the counters do not bounce between cores the way one shared
//!   counter would; no lock is taken.
//! - **Per connection** (accepted, open by front): two relaxed atomics at open and one at
//!   close.
//! - **At scrape time** (peers connected, their queue depths): read from the peer table, under
//!   its read lock, once per scrape.
//!
//! The shards are summed when read, so every counter moves while traffic flows, not only when a
//! connection ends.
//!
//! # Bounded labels
//! `message_type` is chosen by the network. [`Metrics`] counts by type only the types
//! `[routing.rules]` names (the core hands over the rule's key, never the envelope's text) and
//! lumps every other type as `other`, so no sender can grow the number of series.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use gsio_relay_core::{ErrorCode, Meter, RelayConfig, Route, RouteMode};

/// Which front a connection came through (a metrics label, and the console's column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Ws,
    Grpc,
}

impl Front {
    pub const ALL: [Front; 2] = [Front::Ws, Front::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Front::Ws => "ws",
            Front::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Blocks of per-message counters. A power of two well above the core count, so that two busy
/// connections rarely share one.
pub const SHARDS: usize = 16;

/// The `message_type` label of every type the rules do not name.
pub const OTHER_TYPE: &str = "other";

const CODES: usize = ErrorCode::ALL.len();

/// One block of per-message counters, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    routed: [AtomicU64; RouteMode::ALL.len()],
    delivered: AtomicU64,
    errors: [AtomicU64; CODES],
    /// By `TypeLabels::names` index (see [`Shard::by_type`]).
    by_type: Box<[Line]>,
}

/// Sixteen counters on cache lines no other shard writes.
#[repr(align(128))]
#[derive(Default)]
struct Line([AtomicU64; 16]);

impl Shard {
    fn new(types: usize) -> Shard {
        Shard {
            routed: Default::default(),
            delivered: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            by_type: (0..types.div_ceil(16)).map(|_| Line::default()).collect(),
        }
    }

    fn by_type(&self, index: usize) -> &AtomicU64 {
        &self.by_type[index / 16].0[index % 16]
    }
}

/// Everything the relay counts, shared by every connection.
pub struct Metrics {
    shards: Box<[Shard]>,
    /// How [`Counting`] labels types.
    labels: TypeLabels,
    /// Connections open now, by [`Front`] (WebSocket connections past their handshake, gRPC
    /// `Exchange` streams), named or not yet.
    open: [AtomicI64; 2],
    /// Connections accepted since start, by [`Front`].
    accepted: [AtomicU64; 2],
    /// Connections refused by the per-address limits (`too_many_connections_from_address`),
    /// by [`Front`].
    refused: [AtomicU64; 2],
    /// Connections closed by a deadline, by [`Deadline`].
    timed_out: [AtomicU64; 2],
}

/// A deadline that closes connections (`[limits]`: `handshake_timeout_ms`, `pong_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A WebSocket client that did not complete its upgrade in time.
    Handshake,
    /// A WebSocket peer that answered no ping in time (`idle_timeout`).
    Idle,
}

impl Deadline {
    pub const ALL: [Deadline; 2] = [Deadline::Handshake, Deadline::Idle];

    pub fn as_str(self) -> &'static str {
        match self {
            Deadline::Handshake => "handshake",
            Deadline::Idle => "idle",
        }
    }
}

/// Summed over the shards: what a scrape or the console reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// By [`RouteMode::ALL`] order.
    pub routed: [u64; RouteMode::ALL.len()],
    pub delivered: u64,
    /// By [`ErrorCode::ALL`] order.
    pub errors: [u64; CODES],
    /// `(label, count)`, in [`Metrics`]' label order, `other` last.
    pub by_type: Vec<(String, u64)>,
    /// By [`Front::ALL`] order.
    pub open: [i64; 2],
    pub accepted: [u64; 2],
    /// By [`Front::ALL`] order.
    pub refused: [u64; 2],
    /// By [`Deadline::ALL`] order.
    pub timed_out: [u64; 2],
}

impl Metrics {
    pub fn new(config: &RelayConfig) -> Metrics {
        let labels = TypeLabels::new(config);
        Metrics {
            shards: (0..SHARDS)
                .map(|_| Shard::new(labels.names.len()))
                .collect(),
            labels,
            open: Default::default(),
            accepted: Default::default(),
            refused: Default::default(),
            timed_out: Default::default(),
        }
    }

    /// A connection on `front` was refused by the per-address limits.
    pub(crate) fn refused(&self, front: Front) {
        self.refused[front.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed by `deadline`.
    pub(crate) fn timed_out(&self, deadline: Deadline) {
        self.timed_out[deadline as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection on `front` opened; its meter writes shard `conn % SHARDS`.
    pub(crate) fn opened(&self, front: Front, conn: u64) -> ConnMeter {
        self.accepted[front.index()].fetch_add(1, Ordering::Relaxed);
        self.open[front.index()].fetch_add(1, Ordering::Relaxed);
        ConnMeter {
            shard: (conn % SHARDS as u64) as usize,
            last_type: self.labels.other,
        }
    }

    /// A connection on `front` ended.
    pub(crate) fn closed(&self, front: Front) {
        self.open[front.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// The counting side of `meter`, for one call into the core.
    pub(crate) fn meter<'m>(&'m self, meter: &'m mut ConnMeter) -> Counting<'m> {
        Counting {
            shard: &self.shards[meter.shard],
            labels: &self.labels,
            last_type: &mut meter.last_type,
        }
    }

    pub fn totals(&self) -> Totals {
        let sum = |get: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|shard| get(shard).load(Ordering::Relaxed))
                .sum()
        };
        Totals {
            routed: std::array::from_fn(|i| sum(&|s| &s.routed[i])),
            delivered: sum(&|s| &s.delivered),
            errors: std::array::from_fn(|i| sum(&|s| &s.errors[i])),
            by_type: self
                .labels
                .names
                .iter()
                .enumerate()
                .map(|(i, label)| (label.to_string(), sum(&|s| s.by_type(i))))
                .collect(),
            open: std::array::from_fn(|i| self.open[i].load(Ordering::Relaxed)),
            accepted: std::array::from_fn(|i| self.accepted[i].load(Ordering::Relaxed)),
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
            timed_out: std::array::from_fn(|i| self.timed_out[i].load(Ordering::Relaxed)),
        }
    }
}

/// The `message_type` labels: the types `[routing.rules]` names at start, sorted (the rules'
/// own order), then [`OTHER_TYPE`] (unless a rule is named that: its count and the rest's then
/// share the one series, rather than two series having one label).
struct TypeLabels {
    names: Box<[Box<str>]>,
    /// How many of `names` are rules (sorted, searched).
    rules: usize,
    /// The index of [`OTHER_TYPE`] in `names`.
    other: usize,
}

impl TypeLabels {
    fn new(config: &RelayConfig) -> TypeLabels {
        let mut names: Vec<Box<str>> = config
            .routing
            .rules
            .keys()
            .map(|key| Box::from(key.as_str()))
            .collect();
        let rules = names.len();
        let other = match names.binary_search_by(|name| (**name).cmp(OTHER_TYPE)) {
            Ok(index) => index,
            Err(_) => {
                names.push(Box::from(OTHER_TYPE));
                rules
            }
        };
        TypeLabels {
            names: names.into(),
            rules,
            other,
        }
    }
}

/// One connection's place in [`Metrics`]: which shard it writes, and the label index of the
/// type it routed last (most connections send few types, so this saves the search).
pub struct ConnMeter {
    shard: usize,
    last_type: usize,
}

/// [`Meter`] for one call into the core: the connection's shard and label cache.
pub(crate) struct Counting<'m> {
    shard: &'m Shard,
    labels: &'m TypeLabels,
    last_type: &'m mut usize,
}

impl Counting<'_> {
    /// The label index of `rule` (a `[routing.rules]` key, or `None`): the last one this
    /// connection used if it is the same, else a binary search of the sorted rule types; a rule
    /// not among them (possible only once rules can change while running) counts as `other`.
    fn type_index(&mut self, rule: Option<&str>) -> usize {
        let labels = self.labels;
        let Some(rule) = rule else {
            return labels.other;
        };
        if *labels.names[*self.last_type] == *rule {
            return *self.last_type;
        }
        let index = labels.names[..labels.rules]
            .binary_search_by(|label| (**label).cmp(rule))
            .unwrap_or(labels.other);
        *self.last_type = index;
        index
    }
}

impl Meter for Counting<'_> {
    fn routed(&mut self, route: Route<'_>, delivered: u64) {
        let index = self.type_index(route.rule);
        let shard = self.shard;
        shard.routed[route.mode as usize].fetch_add(1, Ordering::Relaxed);
        shard.by_type(index).fetch_add(1, Ordering::Relaxed);
        shard.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    fn rejected(&mut self, code: ErrorCode) {
        self.shard.errors[code as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_discriminants_index_their_all_lists() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, i, "{code:?}");
        }
        for (i, mode) in RouteMode::ALL.into_iter().enumerate() {
            assert_eq!(mode as usize, i, "{mode:?}");
        }
        for (i, front) in Front::ALL.into_iter().enumerate() {
            assert_eq!(front.index(), i, "{front:?}");
        }
    }

    /// Counted by rule, summed over shards, `other` for everything the rules do not name
    /// (including a rule that is not among the labels), whatever each connection's cache holds.
    #[test]
    fn types_are_counted_by_rule_and_the_rest_as_other() {
        let config = RelayConfig::from_toml_str(
            "[routing.rules]\nPing = \"echo\"\nSync = \"directed\"\nAsk = \"auto\"\n",
            "t.toml",
        )
        .unwrap();
        let metrics = Metrics::new(&config);
        let mut meters = [metrics.opened(Front::Ws, 1), metrics.opened(Front::Grpc, 2)];
        let route = |rule, mode| Route { rule, mode };
        for (conn, rule, mode, delivered) in [
            (0, Some("Ping"), RouteMode::Echo, 1),
            (0, Some("Ping"), RouteMode::Echo, 1),
            (0, Some("Sync"), RouteMode::Directed, 1),
            (1, None, RouteMode::Broadcast, 3),
            (1, Some("Ask"), RouteMode::Broadcast, 3),
            (1, Some("NotARule"), RouteMode::Broadcast, 0),
            (1, Some("Ping"), RouteMode::Echo, 1),
        ] {
            metrics
                .meter(&mut meters[conn])
                .routed(route(rule, mode), delivered);
        }
        metrics
            .meter(&mut meters[0])
            .rejected(ErrorCode::UnknownRecipient);
        metrics.closed(Front::Ws);
        let totals = metrics.totals();
        let by_type: Vec<(&str, u64)> = totals
            .by_type
            .iter()
            .map(|(label, n)| (label.as_str(), *n))
            .collect();
        assert_eq!(
            by_type,
            [("Ask", 1), ("Ping", 3), ("Sync", 1), ("other", 2)]
        );
        assert_eq!(totals.routed, [3, 3, 1]);
        assert_eq!(totals.delivered, 10);
        assert_eq!(totals.errors[ErrorCode::UnknownRecipient as usize], 1);
        assert_eq!(totals.errors.iter().sum::<u64>(), 1);
        assert_eq!((totals.open, totals.accepted), ([0, 1], [1, 1]));
    }

    /// A rule named `other` shares the one `other` series with the unnamed types.
    #[test]
    fn a_rule_named_other_is_not_a_second_series() {
        let config =
            RelayConfig::from_toml_str("[routing.rules]\nother = \"echo\"\nz = \"echo\"\n", "t")
                .unwrap();
        let metrics = Metrics::new(&config);
        let mut a = metrics.opened(Front::Ws, 1);
        for rule in [Some("other"), None, Some("z"), Some("other")] {
            metrics.meter(&mut a).routed(
                Route {
                    rule,
                    mode: RouteMode::Echo,
                },
                1,
            );
        }
        let totals = metrics.totals();
        assert_eq!(
            totals.by_type,
            [("other".to_owned(), 3), ("z".to_owned(), 1)]
        );
    }
}
