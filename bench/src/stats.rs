//! Counting what arrived and summarising a run: per-receiver [`Tally`] (received, distinct,
//! duplicates, gaps, late), [`Latency`] histograms, and the [`RunResult`] printed as a table and
//! as one JSON line.
//!
//! Loss is always *expected minus what arrived*, counted by sequence number: a receiver expects
//! every message its sender reported as sent (sequence numbers `0..expected`), and a number that
//! never arrived is lost. A duplicate is counted on its own and never stands in for a lost
//! message; gaps and late (out-of-order) arrivals are reported beside them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// What one receiver saw of one sender's sequence (seq 0, 1, 2, ... in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages with a bench stamp, duplicates included.
    pub received: u64,
    /// Sequence numbers that arrived more than once: each extra copy counts one.
    pub duplicates: u64,
    /// Sequence numbers skipped over when they were due (a later one came first).
    pub gaps: u64,
    /// Sequence numbers that arrived after a later one (out of order, first copy).
    pub late: u64,
    /// The sequence number expected next: every number below it arrived, but those in `missing`.
    next_seq: u64,
    /// Skipped sequence numbers still not arrived, as ranges `start -> end` (end exclusive).
    /// Empty while messages arrive in order, so the common case costs no allocation.
    missing: BTreeMap<u64, u64>,
}

impl Tally {
    pub fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next_seq {
            self.next_seq = seq.saturating_add(1);
        } else if seq > self.next_seq {
            self.gaps += seq - self.next_seq;
            self.missing.insert(self.next_seq, seq);
            self.next_seq = seq.saturating_add(1);
        } else if self.fill(seq) {
            self.late += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Takes `seq` out of the missing ranges; false when it was not missing (it arrived before).
    fn fill(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        true
    }

    /// Distinct sequence numbers received.
    pub fn distinct(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Sequence numbers in `0..expected` that never arrived.
    pub fn lost(&self, expected: u64) -> u64 {
        let skipped: u64 = self
            .missing
            .iter()
            .map(|(&start, &end)| end.min(expected).saturating_sub(start))
            .sum();
        skipped + expected.saturating_sub(self.next_seq)
    }

    /// Distinct sequence numbers at or beyond `expected`: messages its sender never reported
    /// as sent.
    pub fn unexpected(&self, expected: u64) -> u64 {
        self.distinct() - (expected - self.lost(expected))
    }
}

/// Latencies in microseconds (3 significant digits), plus the exact maximum in nanoseconds.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    max_ns: u64,
}

/// The largest latency the histogram holds (longer ones are clamped; `max` stays exact).
const LATENCY_MAX_US: u64 = 120_000_000;

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid bounds"),
            max_ns: 0,
        }
    }
}

impl Latency {
    pub fn record_ns(&mut self, ns: u64) {
        self.max_ns = self.max_ns.max(ns);
        self.hist
            .saturating_record((ns / 1_000).clamp(1, LATENCY_MAX_US));
    }

    pub fn merge(&mut self, other: &Latency) {
        self.max_ns = self.max_ns.max(other.max_ns);
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// p50, p99 and max in milliseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(LatencySummary {
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            max_ms: self.max_ns as f64 / 1e6,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// CPU and memory of one process over a run (from /proc).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// CPU time over wall time, in percent of one core (up to 100 × cores).
    pub cpu_pct: f64,
    /// CPU seconds used over the run.
    pub cpu_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// The process's peak RSS so far (VmHWM).
    pub rss_peak_kib: u64,
}

impl ProcUsage {
    /// What several processes that do one target's work used together (two relays and their
    /// nats-server): CPU and RSS added up, peaks too (an upper bound of the joint peak). `None`
    /// if any of them could not be measured, so that a partial sum never passes for the whole.
    pub fn sum(parts: &[Option<ProcUsage>]) -> Option<ProcUsage> {
        if parts.is_empty() {
            return None;
        }
        parts.iter().try_fold(ProcUsage::default(), |total, part| {
            let part = (*part)?;
            Some(ProcUsage {
                cpu_pct: total.cpu_pct + part.cpu_pct,
                cpu_s: total.cpu_s + part.cpu_s,
                rss_before_kib: total.rss_before_kib + part.rss_before_kib,
                rss_after_kib: total.rss_after_kib + part.rss_after_kib,
                rss_peak_kib: total.rss_peak_kib + part.rss_peak_kib,
            })
        })
    }
}

/// One traffic run against one target.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub scenario: &'static str,
    /// "max" or "fixed".
    pub mode: &'static str,
    /// "relay" or "floor".
    pub target: &'static str,
    /// "ws", "grpc" or "bridge" (gRPC and WebSocket peers paired).
    pub transport: &'static str,
    pub senders: usize,
    pub receivers: usize,
    /// The requested rate in deliveries/s (fixed mode).
    pub target_rate: Option<f64>,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    /// Expected sequence numbers that never arrived.
    pub lost: u64,
    /// Extra copies of sequence numbers that had arrived already.
    pub duplicates: u64,
    /// Sequence numbers no sender reported as sent.
    pub unexpected: u64,
    pub gaps: u64,
    pub late: u64,
    /// From the first send to the last delivery.
    pub elapsed_s: f64,
    pub latency: Option<LatencySummary>,
    /// Error envelopes (or error statuses) received by any client.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Connections that ended before the run did.
    pub disconnects: u64,
    pub first_disconnect: Option<String>,
    /// Warnings the relay logged during the run (e.g. slow consumers).
    pub server_warnings: u64,
    /// The server's CPU and RSS: the one process's, or the sum of a target's processes.
    pub server: Option<ProcUsage>,
    /// Each process of a target made of several (two relays and nats-server), by name, so that
    /// each relay's memory can be read apart; empty for a target of one process.
    pub server_processes: Vec<(&'static str, ProcUsage)>,
    pub client: ProcUsage,
}

impl RunResult {
    /// Delivered messages per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.received as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// CPU time a process spent per delivered message, in microseconds.
    pub fn cpu_us_per_delivery(&self, usage: &ProcUsage) -> Option<f64> {
        (self.received > 0).then(|| usage.cpu_s * 1e6 / self.received as f64)
    }

    pub fn to_json(&self) -> Value {
        let usage = |u: &ProcUsage| {
            json!({
                "cpu_pct": round(u.cpu_pct, 1),
                "cpu_s": round(u.cpu_s, 3),
                "rss_before_kib": u.rss_before_kib,
                "rss_after_kib": u.rss_after_kib,
                "rss_peak_kib": u.rss_peak_kib,
            })
        };
        json!({
            "scenario": self.scenario,
            "mode": self.mode,
            "target": self.target,
            "transport": self.transport,
            "senders": self.senders,
            "receivers": self.receivers,
            "target_rate": self.target_rate,
            "sent": self.sent,
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "gaps": self.gaps,
            "late": self.late,
            "elapsed_s": round(self.elapsed_s, 3),
            "delivered_per_s": round(self.rate(), 0),
            "latency_ms": self.latency.map(|l| json!({
                "p50": round(l.p50_ms, 3), "p99": round(l.p99_ms, 3), "max": round(l.max_ms, 3)
            })),
            "errors": self.errors,
            "first_error": self.first_error,
            "disconnects": self.disconnects,
            "first_disconnect": self.first_disconnect,
            "server_warnings": self.server_warnings,
            "server": self.server.as_ref().map(usage),
            "server_processes": (!self.server_processes.is_empty()).then(|| {
                self.server_processes
                    .iter()
                    .map(|(name, u)| {
                        let mut line = usage(u);
                        line["name"] = json!(name);
                        line
                    })
                    .collect::<Vec<_>>()
            }),
            "server_cpu_us_per_delivery": self
                .server
                .and_then(|s| self.cpu_us_per_delivery(&s))
                .map(|us| round(us, 3)),
            "client": usage(&self.client),
        })
    }
}

pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// A table: one column per run, then one column per later run comparing it to the first (the
/// baseline), e.g. relay ÷ floor. Ratios are shown on the rows where they mean something.
pub fn print_table(title: &str, runs: &[&RunResult], labels: &[&str]) {
    assert_eq!(runs.len(), labels.len());
    println!("\n{title}");
    let mut header = format!("  {:<28}", "");
    for label in labels {
        header.push_str(&format!("{label:>14}"));
    }
    for label in labels.iter().skip(1) {
        header.push_str(&format!("{:>18}", format!("{label}/{}", labels[0])));
    }
    println!("{header}");

    let row = |name: &str, values: Vec<Option<f64>>, places: usize, ratio: bool| {
        let mut line = format!("  {name:<28}");
        for value in &values {
            match value {
                Some(v) => line.push_str(&format!("{:>14}", fmt_num(*v, places))),
                None => line.push_str(&format!("{:>14}", "-")),
            }
        }
        if ratio {
            for value in values.iter().skip(1) {
                match (values[0], value) {
                    (Some(first), Some(v)) if first != 0.0 => {
                        line.push_str(&format!("{:>18.2}", v / first))
                    }
                    _ => line.push_str(&format!("{:>18}", "")),
                }
            }
        }
        println!("{line}");
    };
    let all = |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().map(|r| f(r)).collect();
    row("delivered msgs/s", all(&|r| Some(r.rate())), 0, true);
    if runs.iter().any(|r| r.target_rate.is_some()) {
        row("requested msgs/s", all(&|r| r.target_rate), 0, false);
    }
    row("sent", all(&|r| Some(r.sent as f64)), 0, false);
    row(
        "expected deliveries",
        all(&|r| Some(r.expected as f64)),
        0,
        false,
    );
    row("received", all(&|r| Some(r.received as f64)), 0, false);
    row(
        "LOST (expected, never came)",
        all(&|r| Some(r.lost as f64)),
        0,
        false,
    );
    row(
        "duplicates / unexpected",
        all(&|r| Some((r.duplicates + r.unexpected) as f64)),
        0,
        false,
    );
    row(
        "gaps / late seq",
        all(&|r| Some((r.gaps + r.late) as f64)),
        0,
        false,
    );
    row(
        "latency p50 ms",
        all(&|r| r.latency.map(|l| l.p50_ms)),
        3,
        true,
    );
    row(
        "latency p99 ms",
        all(&|r| r.latency.map(|l| l.p99_ms)),
        3,
        true,
    );
    row(
        "latency max ms",
        all(&|r| r.latency.map(|l| l.max_ms)),
        3,
        true,
    );
    row("errors received", all(&|r| Some(r.errors as f64)), 0, false);
    row(
        "disconnects",
        all(&|r| Some(r.disconnects as f64)),
        0,
        false,
    );
    row(
        "server warnings logged",
        all(&|r| Some(r.server_warnings as f64)),
        0,
        false,
    );
    row(
        "server CPU % (1 core=100)",
        all(&|r| r.server.map(|s| s.cpu_pct)),
        0,
        true,
    );
    row(
        "server CPU us per delivery",
        all(&|r| r.server.and_then(|s| r.cpu_us_per_delivery(&s))),
        3,
        true,
    );
    row(
        "server RSS MiB at end",
        all(&|r| r.server.map(|s| mib(s.rss_after_kib))),
        1,
        true,
    );
    row(
        "server RSS MiB peak",
        all(&|r| r.server.map(|s| mib(s.rss_peak_kib))),
        1,
        true,
    );
    row(
        "bench client CPU %",
        all(&|r| Some(r.client.cpu_pct)),
        0,
        false,
    );
    for (run, label) in runs.iter().zip(labels) {
        if let Some(error) = &run.first_error {
            println!("  {label}: first error: {error}");
        }
        if let Some(reason) = &run.first_disconnect {
            println!("  {label}: first disconnect: {reason}");
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A number with thousands separators (integers) or fixed decimals.
pub fn fmt_num(value: f64, places: usize) -> String {
    if places > 0 {
        return format!("{value:.places$}");
    }
    let rounded = value.round();
    let negative = rounded < 0.0;
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seqs: &[u64]) -> Tally {
        let mut tally = Tally::default();
        for &seq in seqs {
            tally.record(seq);
        }
        tally
    }

    #[test]
    fn in_order_delivery_has_no_loss() {
        let tally = seen(&(0..100).collect::<Vec<_>>());
        assert_eq!((tally.received, tally.distinct()), (100, 100));
        assert_eq!((tally.gaps, tally.late, tally.duplicates), (0, 0, 0));
        assert_eq!((tally.lost(100), tally.unexpected(100)), (0, 0));
        assert!(tally.missing.is_empty());
    }

    #[test]
    fn a_missing_middle_is_a_gap_and_a_loss() {
        let tally = seen(&[0, 1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(tally.received, 8);
        assert_eq!((tally.gaps, tally.late, tally.duplicates), (2, 0, 0));
        assert_eq!(tally.lost(10), 2);
    }

    #[test]
    fn a_missing_tail_is_a_loss_without_a_gap() {
        let tally = seen(&[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(tally.gaps, 0);
        assert_eq!(tally.lost(10), 3);
    }

    /// Counting arrivals alone, four arrived for four expected: no loss. By sequence number, 2
    /// never came and 1 came twice.
    #[test]
    fn a_duplicate_never_hides_a_loss() {
        let tally = seen(&[0, 1, 1, 3]);
        assert_eq!((tally.received, tally.distinct()), (4, 3));
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.lost(4), 1);
        // A whole run of copies: still every missing number is lost.
        let tally = seen(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((tally.duplicates, tally.lost(10)), (9, 9));
    }

    #[test]
    fn a_late_arrival_fills_its_gap_and_is_not_a_duplicate() {
        let tally = seen(&[0, 3, 1, 4, 2]);
        assert_eq!((tally.gaps, tally.late, tally.duplicates), (2, 2, 0));
        assert_eq!(tally.lost(5), 0);
        assert!(tally.missing.is_empty(), "{tally:?}");
        // A copy of a late one is a duplicate; the number still missing is lost.
        let tally = seen(&[0, 5, 3, 3, 1]);
        assert_eq!((tally.gaps, tally.late, tally.duplicates), (4, 2, 1));
        assert_eq!(tally.lost(6), 2);
        assert_eq!(tally.missing, BTreeMap::from([(2, 3), (4, 5)]));
    }

    #[test]
    fn numbers_the_sender_never_reported_are_unexpected_not_lost() {
        let tally = seen(&[0, 1, 2, 7, 9]);
        assert_eq!(tally.lost(3), 0);
        assert_eq!(tally.unexpected(3), 2);
        // Beyond what was expected, skipped numbers are not lost either.
        assert_eq!(tally.lost(8), 4);
        assert_eq!(tally.unexpected(8), 1);
        // A wild number costs one range, not memory for every number skipped.
        let tally = seen(&[0, u64::MAX - 1]);
        assert_eq!((tally.lost(10), tally.unexpected(10)), (9, 1));
        assert_eq!(tally.missing.len(), 1);
    }

    #[test]
    fn nothing_received_loses_everything() {
        assert_eq!(Tally::default().lost(250), 250);
        assert_eq!(Tally::default().lost(0), 0);
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut latency = Latency::default();
        // 1..=100 ms
        for ms in 1..=100u64 {
            latency.record_ns(ms * 1_000_000);
        }
        let s = latency.summary().unwrap();
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(latency.count(), 100);
    }

    #[test]
    fn merged_histograms_count_everything_and_keep_the_max() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for _ in 0..99 {
            a.record_ns(1_000_000);
        }
        b.record_ns(7_654_321);
        a.merge(&b);
        assert_eq!(a.count(), 100);
        let s = a.summary().unwrap();
        assert!((s.p50_ms - 1.0).abs() < 0.01);
        assert_eq!(s.max_ms, 7.654321);
    }

    #[test]
    fn tiny_and_huge_latencies_are_clamped_but_the_max_is_exact() {
        let mut latency = Latency::default();
        latency.record_ns(10);
        latency.record_ns(1_000_000_000_000);
        assert_eq!(latency.count(), 2);
        assert_eq!(latency.summary().unwrap().max_ms, 1e6);
        assert!(Latency::default().summary().is_none());
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(fmt_num(0.0, 0), "0");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(1000.0, 0), "1,000");
        assert_eq!(fmt_num(1234567.4, 0), "1,234,567");
        assert_eq!(fmt_num(-1234.0, 0), "-1,234");
        assert_eq!(fmt_num(1.23456, 3), "1.235");
    }

    /// BENCHMARKS.md: "CPU µs per delivery = server CPU time ÷ messages received".
    #[test]
    fn cpu_per_delivery_is_cpu_time_over_messages_received() {
        let run = RunResult {
            received: 2_000_000,
            ..json_line_run()
        };
        let usage = ProcUsage {
            cpu_s: 3.0,
            ..ProcUsage::default()
        };
        assert_eq!(run.cpu_us_per_delivery(&usage), Some(1.5));
        let nothing = RunResult {
            received: 0,
            ..json_line_run()
        };
        assert_eq!(nothing.cpu_us_per_delivery(&usage), None);
    }

    fn json_line_run() -> RunResult {
        RunResult {
            scenario: "fanout",
            mode: "max",
            target: "relay",
            transport: "ws",
            senders: 1,
            receivers: 2,
            sent: 10,
            expected: 20,
            received: 19,
            lost: 1,
            gaps: 1,
            elapsed_s: 0.5,
            ..RunResult::default()
        }
    }

    /// A target of several processes reports their sum as its server, and each on its own.
    #[test]
    fn several_processes_add_up_and_are_each_reported() {
        let part = |cpu_s: f64, rss: u64| ProcUsage {
            cpu_pct: cpu_s * 10.0,
            cpu_s,
            rss_before_kib: rss / 2,
            rss_after_kib: rss,
            rss_peak_kib: rss * 2,
        };
        let total = ProcUsage::sum(&[Some(part(1.0, 100)), Some(part(0.5, 30))]).unwrap();
        assert_eq!((total.cpu_s, total.cpu_pct), (1.5, 15.0));
        assert_eq!(
            (
                total.rss_before_kib,
                total.rss_after_kib,
                total.rss_peak_kib
            ),
            (65, 130, 260)
        );
        assert!(ProcUsage::sum(&[Some(part(1.0, 100)), None]).is_none());
        assert!(ProcUsage::sum(&[]).is_none());
        let run = RunResult {
            server: Some(total),
            server_processes: vec![("relay-0", part(1.0, 100)), ("nats-server", part(0.5, 30))],
            ..json_line_run()
        };
        let line = run.to_json();
        assert_eq!(line["server"]["rss_after_kib"], 130);
        assert_eq!(line["server_processes"][1]["name"], "nats-server");
        assert_eq!(line["server_processes"][1]["rss_after_kib"], 30);
        assert!(json_line_run().to_json()["server_processes"].is_null());
    }

    #[test]
    fn the_json_line_carries_loss_and_rate() {
        let run = json_line_run();
        let line = run.to_json();
        assert_eq!(line["lost"], 1);
        assert_eq!(line["delivered_per_s"], 38.0);
        assert_eq!(line["target"], "relay");
        assert!(!line.to_string().contains('\n'));
    }
}
