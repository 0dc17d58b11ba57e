//! `cargo xtask bench [--quick]`: runs the benchmarks and prints one table of
//! what they measured against the project's targets.
//!
//! The bench binaries (criterion, in `crates/syncforge/benches`, in the
//! backends' and `syncforge-http`'s `benches`, and in the separate
//! `benches/peers` workspace) append their figures of this run to
//! `summary.tsv` in the output directory; this module clears that file first,
//! runs them, then reads it back. So every figure in the table comes from the
//! run that printed it. `--quick` keeps criterion's samples few; the full
//! mode is for numbers worth reporting.
//!
//! Peers (`crdts`, `automerge`) live in their own workspace so that neither CI
//! nor users ever compile them unless they ask for the benchmarks.
//!
//! The Redis rows run against the standalone test server, started here like
//! for `cargo xtask ci` when it is not running (and stopped afterwards), and
//! the same run measures `redis-benchmark -q -P 100 -t hset` on that server,
//! the ceiling the sync row is judged against.
//!
//! The S3 rows run against moto, started the same way. Against it they count
//! requests per record (moto serves one request at a time, so its rate would
//! measure moto); the latency rows time the same workloads on an in-memory
//! store whose every request waits 20 ms.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::cmd::Cargo;
use crate::services;

/// The peers workspace, built only here.
const PEERS_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/peers/Cargo.toml");

/// The bench runs, in order: the core workloads, peak memory, the
/// filesystem backend, sync over HTTP, the Redis and S3 backends, and (full
/// mode only: building `automerge` and its documents alone takes minutes) the
/// peers comparison.
fn runs(quick: bool) -> Vec<Cargo> {
    let mut runs = vec![
        Cargo::new(&["bench", "-p", "syncforge", "--bench", "workloads"]),
        Cargo::new(&["bench", "-p", "syncforge", "--bench", "peak_memory"]),
        Cargo::new(&["bench", "-p", "syncforge", "--bench", "fs"]),
        Cargo::new(&[
            "bench",
            "-p",
            "syncforge-http",
            "--features",
            "server,client",
            "--bench",
            "http",
        ]),
        Cargo::new(&["bench", "-p", "syncforge-backend-redis", "--bench", "redis"]),
        Cargo::new(&["bench", "-p", "syncforge-backend-s3", "--bench", "s3"]),
    ];
    if !quick {
        // The peers workspace builds into this workspace's target directory,
        // so the two share what they compiled and nothing lands in the tree.
        runs.push(
            Cargo::new(&[
                "bench",
                "--manifest-path",
                PEERS_MANIFEST,
                "--bench",
                "peers",
            ])
            .env("CARGO_TARGET_DIR", target_dir().into_os_string()),
        );
    }
    // A stale lockfile (this workspace's or the peers') fails the run
    // instead of being resolved anew.
    runs.into_iter().map(Cargo::locked).collect()
}

/// How a row is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// A reference figure, judged by nothing.
    None,
    /// At least this many records per second.
    RatePerSec(f64),
    /// Time per record at most `factor` times that of row `of`.
    WithinTimeOf { of: &'static str, factor: f64 },
    /// Row `ours` at least `factor` times faster per record than this row.
    OursFasterBy { ours: &'static str, factor: f64 },
    /// At least `factor` times faster per record than row `than`.
    FasterThan { than: &'static str, factor: f64 },
    /// A size in bytes of at most this.
    BytesAtMost(f64),
    /// A reference figure in bytes per record, judged by nothing.
    BytesPerRecord,
    /// The rate as a share of row `of`'s rate (a reference, not judged).
    ShareOf { of: &'static str },
    /// At most this many requests per record.
    RequestsAtMost(f64),
    /// Requests per record at most `factor` times those of row `of`.
    RequestsWithinOf { of: &'static str, factor: f64 },
    /// One iteration (the whole workload) in at most this many seconds.
    SecondsAtMost(f64),
    /// The time per record this row adds to row `small` (the same work on a
    /// smaller collection), set beside the time row `floor` adds to row
    /// `floor_small` (a reference, not judged).
    GrowthAgainst {
        small: &'static str,
        floor: &'static str,
        floor_small: &'static str,
    },
}

/// A row of the table: the key the bench binaries write, its label and target.
struct RowSpec {
    key: &'static str,
    label: &'static str,
    target: Target,
}

const MIB: f64 = 1024.0 * 1024.0;

const ROWS: &[RowSpec] = &[
    RowSpec {
        key: "baseline_hashmap",
        label: "baseline: 100k ready records into a HashMap",
        target: Target::None,
    },
    RowSpec {
        key: "w1_put",
        label: "W1 put 100k into an empty collection",
        target: Target::RatePerSec(2.2e6),
    },
    RowSpec {
        key: "baseline_put",
        label: "baseline: 100k structs as serde_json text into a HashMap (W1's floor)",
        target: Target::None,
    },
    RowSpec {
        key: "w1_put",
        label: "W1 put, rate as a share of its floor's",
        target: Target::ShareOf { of: "baseline_put" },
    },
    RowSpec {
        key: "w2_sync_empty",
        label: "W2 sync 100k into an empty store",
        target: Target::RatePerSec(3e6),
    },
    RowSpec {
        key: "w3_sync_crdt",
        label: "W3 CRDT sync 100k, 10k changed per side",
        target: Target::RatePerSec(5.5e6),
    },
    RowSpec {
        key: "baseline_lookup",
        label: "baseline: 100k incoming records looked up, versions compared (W3's floor)",
        target: Target::None,
    },
    RowSpec {
        key: "w3_sync_crdt",
        label: "W3 CRDT sync, rate as a share of its floor's",
        target: Target::ShareOf {
            of: "baseline_lookup",
        },
    },
    RowSpec {
        key: "baseline_hashmap_10k",
        label: "baseline: 10k ready records into a HashMap",
        target: Target::None,
    },
    RowSpec {
        key: "baseline_hashmap_1m",
        label: "baseline: 1M ready records into a HashMap (held to the 1M rows' 2x)",
        target: Target::WithinTimeOf {
            of: "baseline_hashmap_10k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "w1_put_10k",
        label: "W1 put 10k",
        target: Target::None,
    },
    RowSpec {
        key: "w1_put_1m",
        label: "W1 put 1M",
        target: Target::WithinTimeOf {
            of: "w1_put_10k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "w2_sync_empty_10k",
        label: "W2 sync 10k into an empty store",
        target: Target::None,
    },
    RowSpec {
        key: "w2_sync_empty_1m",
        label: "W2 sync 1M into an empty store",
        target: Target::WithinTimeOf {
            of: "w2_sync_empty_10k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "w3_sync_crdt_10k",
        label: "W3 CRDT sync 10k, 1k changed per side",
        target: Target::None,
    },
    RowSpec {
        key: "w3_sync_crdt_1m",
        label: "W3 CRDT sync 1M, 100k changed per side",
        target: Target::WithinTimeOf {
            of: "w3_sync_crdt_10k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "w2_sync_empty_1m",
        label: "W2: time 1M records add to a record, against what they add to its floor",
        target: Target::GrowthAgainst {
            small: "w2_sync_empty_10k",
            floor: "baseline_hashmap_1m",
            floor_small: "baseline_hashmap_10k",
        },
    },
    RowSpec {
        key: "baseline_lookup_10k",
        label: "baseline: 10k incoming records looked up, versions compared",
        target: Target::None,
    },
    RowSpec {
        key: "baseline_lookup_1m",
        label: "baseline: 1M incoming records looked up, versions compared",
        target: Target::None,
    },
    RowSpec {
        key: "w3_sync_crdt_1m",
        label: "W3: time 1M records add to a record, against what they add to its floor",
        target: Target::GrowthAgainst {
            small: "w3_sync_crdt_10k",
            floor: "baseline_lookup_1m",
            floor_small: "baseline_lookup_10k",
        },
    },
    RowSpec {
        key: "w4_incremental_1k",
        label: "W4 100 changes via feed+sync, 1k records",
        target: Target::None,
    },
    RowSpec {
        key: "w4_incremental_1m",
        label: "W4 100 changes via feed+sync, 1M records",
        target: Target::WithinTimeOf {
            of: "w4_incremental_1k",
            factor: 1.5,
        },
    },
    RowSpec {
        key: "baseline_replace_1k",
        label: "baseline: 100 changed records put in place by id, 1k records (W4's floor)",
        target: Target::None,
    },
    RowSpec {
        key: "baseline_replace_1m",
        label: "baseline: 100 changed records put in place by id, 1M records",
        target: Target::None,
    },
    RowSpec {
        key: "w4_incremental_1m",
        label: "W4: time 1M records add to a change, against what they add to its floor",
        target: Target::GrowthAgainst {
            small: "w4_incremental_1k",
            floor: "baseline_replace_1m",
            floor_small: "baseline_replace_1k",
        },
    },
    RowSpec {
        key: "w1_put_wide_10k_fields",
        label: "put adding 10k new fields to a record (per field)",
        target: Target::None,
    },
    RowSpec {
        key: "w1_put_wide_100k_fields",
        label: "put adding 100k new fields to a record (per field)",
        // n log n per put: a little more per field at 10x the fields; n²
        // would be 10x.
        target: Target::WithinTimeOf {
            of: "w1_put_wide_10k_fields",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "lww_map_set_10k",
        label: "LwwMap built of 10k keys in no order (per key)",
        target: Target::None,
    },
    RowSpec {
        key: "lww_map_set_100k",
        label: "LwwMap built of 100k keys in no order (per key)",
        // log n per key, and more of the tree out of cache at 10x the
        // keys (1.7x on the twenty-fourth machine); a sorted list, which
        // moves every later key, is 14x.
        target: Target::WithinTimeOf {
            of: "lww_map_set_10k",
            factor: 3.0,
        },
    },
    RowSpec {
        key: "record_json_write",
        label: "records written as JSON text (10k)",
        target: Target::None,
    },
    RowSpec {
        key: "record_json_read",
        label: "records read from JSON text, checked (10k)",
        target: Target::None,
    },
    RowSpec {
        key: "peak_rss_1m",
        label: "peak RSS holding 1M records (memory backend)",
        target: Target::BytesAtMost(600.0 * MIB),
    },
    RowSpec {
        key: "fs_put_10k_durable",
        label: "fs: put 10k (quick 200), durable",
        target: Target::None,
    },
    RowSpec {
        key: "fs_put_10k_buffered",
        label: "fs: put 10k (quick 200), buffered",
        target: Target::None,
    },
    RowSpec {
        key: "fs_get_all_10k",
        label: "fs: get_all of 10k (quick 1k)",
        target: Target::None,
    },
    RowSpec {
        key: "fs_sync_10k_durable",
        label: "fs: sync 10k (quick 1k) into empty, durable",
        target: Target::FasterThan {
            than: "fs_put_10k_durable",
            factor: 10.0,
        },
    },
    RowSpec {
        key: "fs_incremental_100_into_100k",
        label: "fs: 100 changes feed+sync into 100k (quick 10k)",
        target: Target::None,
    },
    RowSpec {
        key: "http_push_10k",
        label: "http: push 10k to an empty server (loopback)",
        target: Target::RatePerSec(1e5),
    },
    RowSpec {
        key: "http_push_10k_in_process",
        label: "http: the same push in process (engines only)",
        target: Target::None,
    },
    RowSpec {
        key: "http_push_10k",
        label: "http: push 10k, engines' share of its time",
        target: Target::ShareOf {
            of: "http_push_10k_in_process",
        },
    },
    RowSpec {
        key: "http_pull_10k",
        label: "http: pull 10k from a server (gzip)",
        target: Target::None,
    },
    RowSpec {
        key: "http_round_trip_100_in_1k",
        label: "http: round trip of 100 changes, 1k records",
        target: Target::None,
    },
    RowSpec {
        key: "http_round_trip_100_in_100k",
        label: "http: round trip of 100 changes, 100k (quick 10k)",
        target: Target::WithinTimeOf {
            of: "http_round_trip_100_in_1k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "http_push_bytes_per_record",
        label: "http: bytes on the wire per record pushed",
        target: Target::BytesPerRecord,
    },
    RowSpec {
        key: "http_pull_bytes_per_record",
        label: "http: bytes on the wire per record pulled (gzip)",
        target: Target::BytesPerRecord,
    },
    RowSpec {
        key: "redis_put_10k_one_by_one",
        label: "redis: put 10k (quick 1k) one by one",
        target: Target::RatePerSec(13_200.0),
    },
    RowSpec {
        key: "redis_sync_10k_empty",
        label: "redis: sync 10k (quick 1k) into empty, batches of 100",
        target: Target::RatePerSec(300_000.0),
    },
    RowSpec {
        key: "redis_benchmark_hset",
        label: "redis: redis-benchmark -P 100 -t hset, same server",
        target: Target::None,
    },
    RowSpec {
        key: "redis_sync_10k_empty",
        label: "redis: sync 10k into empty, share of hset",
        target: Target::ShareOf {
            of: "redis_benchmark_hset",
        },
    },
    RowSpec {
        key: "redis_get_all_10k",
        label: "redis: get_all of 10k (quick 1k)",
        target: Target::None,
    },
    RowSpec {
        key: "redis_incremental_100_into_1k",
        label: "redis: 100 changes feed+sync into 1k",
        target: Target::None,
    },
    RowSpec {
        key: "redis_incremental_100_into_100k",
        label: "redis: 100 changes feed+sync into 100k (quick 10k)",
        target: Target::WithinTimeOf {
            of: "redis_incremental_100_into_1k",
            factor: 2.0,
        },
    },
    RowSpec {
        key: "s3_moto_put_1k",
        label: "s3 on moto: put 1k (quick 200), one at a time",
        target: Target::None,
    },
    RowSpec {
        key: "s3_moto_sync_1k_empty",
        label: "s3 on moto: sync 1k into an empty collection",
        target: Target::RequestsAtMost(1.2),
    },
    RowSpec {
        key: "s3_moto_get_all_1k",
        label: "s3 on moto: get_all of 1k",
        target: Target::None,
    },
    RowSpec {
        key: "s3_moto_incremental_100_into_500",
        label: "s3 on moto: sync 100 changes into 500",
        target: Target::None,
    },
    RowSpec {
        key: "s3_moto_incremental_100_into_5k",
        label: "s3 on moto: sync 100 changes into 5k",
        target: Target::RequestsWithinOf {
            of: "s3_moto_incremental_100_into_500",
            factor: 1.1,
        },
    },
    RowSpec {
        key: "s3_moto_feed_100_of_500",
        label: "s3 on moto: read 100 changes, feed of 500",
        target: Target::None,
    },
    RowSpec {
        key: "s3_moto_feed_100_of_5k",
        label: "s3 on moto: read 100 changes, feed of 5k",
        target: Target::RequestsWithinOf {
            of: "s3_moto_feed_100_of_500",
            factor: 1.1,
        },
    },
    RowSpec {
        key: "s3_20ms_put_50",
        label: "s3 at 20 ms/request: put 50, one at a time",
        target: Target::None,
    },
    RowSpec {
        key: "s3_20ms_sync_1k_empty",
        label: "s3 at 20 ms/request: sync 1k into empty",
        target: Target::SecondsAtMost(1.5),
    },
    RowSpec {
        key: "s3_20ms_get_all_1k",
        label: "s3 at 20 ms/request: get_all of 1k",
        target: Target::None,
    },
    RowSpec {
        key: "s3_20ms_incremental_100_into_500",
        label: "s3 at 20 ms/request: 100 changes feed+sync into 500",
        target: Target::None,
    },
    RowSpec {
        key: "s3_20ms_incremental_100_into_5k",
        label: "s3 at 20 ms/request: 100 changes feed+sync into 5k",
        target: Target::SecondsAtMost(0.5),
    },
    RowSpec {
        key: "peers_w3_syncforge",
        label: "peers: W3 merge, syncforge",
        target: Target::None,
    },
    RowSpec {
        key: "peers_w3_crdts",
        label: "peers: W3 merge, crdts (map of LWW registers)",
        target: Target::OursFasterBy {
            ours: "peers_w3_syncforge",
            factor: 10.0,
        },
    },
    RowSpec {
        key: "peers_w3_automerge",
        label: "peers: W3 merge, automerge (map of maps)",
        target: Target::OursFasterBy {
            ours: "peers_w3_syncforge",
            factor: 10.0,
        },
    },
];

/// What the bench binaries reported for one row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measured {
    /// Median nanoseconds per iteration of `records` records.
    Timing { records: f64, median_ns: f64 },
    /// A plain figure (bytes of memory).
    Value(f64),
    /// Requests made per record.
    Requests(f64),
}

impl Measured {
    fn per_second(self) -> Option<f64> {
        match self {
            Measured::Timing { records, median_ns } if median_ns > 0.0 => {
                Some(records * 1e9 / median_ns)
            }
            _ => None,
        }
    }
}

/// Reads `summary.tsv`: `key \t records \t median ns`, `key \t value \t figure`
/// or `key \t requests \t requests per record`. A key reported twice keeps
/// its last figure; malformed lines are named.
fn parse_summary(text: &str) -> Result<HashMap<String, Measured>, String> {
    let mut rows = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("summary line {}: cannot read {line:?}", number + 1);
        let mut parts = line.split('\t');
        let (Some(key), Some(kind), Some(figure), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let figure: f64 = figure.parse().map_err(|_| bad())?;
        let measured = match kind {
            "value" => Measured::Value(figure),
            "requests" => Measured::Requests(figure),
            records => Measured::Timing {
                records: records.parse().map_err(|_| bad())?,
                median_ns: figure,
            },
        };
        rows.insert(key.to_owned(), measured);
    }
    Ok(rows)
}

/// One printed line of the table.
#[derive(Debug, PartialEq)]
struct Line {
    label: &'static str,
    figure: String,
    /// Nanoseconds per record of a timed row.
    per_record: String,
    vs_baseline: String,
    target: String,
    verdict: &'static str,
}

fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "pass"
    } else {
        "MISS"
    }
}

/// Whether `--quick` leaves the row out (the peers comparison).
fn quick_skips(key: &str) -> bool {
    key.starts_with("peers_")
}

/// Builds the table from what was measured. Rows not measured say so.
fn table(measured: &HashMap<String, Measured>) -> Vec<Line> {
    let speed = |key: &str| measured.get(key).and_then(|m| m.per_second());
    let requests = |key: &str| match measured.get(key) {
        Some(Measured::Requests(per_record)) => Some(*per_record),
        _ => None,
    };
    let baseline = speed("baseline_hashmap");
    ROWS.iter()
        .map(|row| {
            let Some(&this) = measured.get(row.key) else {
                return Line {
                    label: row.label,
                    figure: if quick_skips(row.key) {
                        // Also in a full run whose row failed: not judged.
                        "not measured (full mode only)".to_owned()
                    } else {
                        "not measured".to_owned()
                    },
                    per_record: String::new(),
                    vs_baseline: String::new(),
                    target: String::new(),
                    verdict: "-",
                };
            };
            let own = this.per_second();
            let figure = match this {
                Measured::Value(bytes) if row.target == Target::BytesPerRecord => {
                    format!("{bytes:.0} B/record")
                }
                Measured::Value(bytes) => format!("{:.0} MiB", bytes / MIB),
                Measured::Requests(per_record) => format!("{per_record:.2} req/record"),
                Measured::Timing { .. } => own.map_or_else(|| "-".to_owned(), rate),
            };
            let per_record = match this {
                Measured::Timing { records, median_ns } if records > 0.0 => {
                    format!("{:.0} ns", median_ns / records)
                }
                _ => String::new(),
            };
            let vs_baseline = match (own, baseline) {
                (Some(own), Some(base)) => format!("{:.3}x", own / base),
                _ => String::new(),
            };
            let (target, verdict) = judge(row.target, this, own, &speed, &requests);
            Line {
                label: row.label,
                figure,
                per_record,
                vs_baseline,
                target,
                verdict,
            }
        })
        .collect()
}

/// The target text and verdict of one row.
fn judge(
    target: Target,
    this: Measured,
    own: Option<f64>,
    speed: &dyn Fn(&str) -> Option<f64>,
    requests: &dyn Fn(&str) -> Option<f64>,
) -> (String, &'static str) {
    match target {
        Target::None | Target::BytesPerRecord => (String::new(), ""),
        Target::RatePerSec(min) => (
            format!(">= {}", rate(min)),
            own.map_or("-", |own| verdict(own >= min)),
        ),
        Target::BytesAtMost(max) => (
            format!("<= {:.0} MiB", max / MIB),
            match this {
                Measured::Value(bytes) => verdict(bytes <= max),
                Measured::Timing { .. } | Measured::Requests(_) => "-",
            },
        ),
        Target::RequestsAtMost(max) => (
            format!("<= {max} req/record"),
            match this {
                Measured::Requests(per_record) => verdict(per_record <= max),
                Measured::Timing { .. } | Measured::Value(_) => "-",
            },
        ),
        Target::RequestsWithinOf { of, factor } => match (this, requests(of)) {
            (Measured::Requests(per_record), Some(other)) if other > 0.0 => (
                format!(
                    "<= {factor}x req/record of {of} (is {:.2}x)",
                    per_record / other
                ),
                verdict(per_record / other <= factor),
            ),
            _ => (format!("<= {factor}x req/record of {of}"), "-"),
        },
        Target::SecondsAtMost(max) => match this {
            Measured::Timing { median_ns, .. } => (
                format!("<= {max} s a run (is {:.2} s)", median_ns / 1e9),
                verdict(median_ns / 1e9 <= max),
            ),
            Measured::Value(_) | Measured::Requests(_) => (format!("<= {max} s a run"), "-"),
        },
        Target::WithinTimeOf { of, factor } => match (own, speed(of)) {
            // Time per record is the inverse of the rate.
            (Some(own), Some(other)) => (
                format!("<= {factor}x time of {of} (is {:.2}x)", other / own),
                verdict(other / own <= factor),
            ),
            _ => (format!("<= {factor}x time of {of}"), "-"),
        },
        Target::OursFasterBy { ours, factor } => match (own, speed(ours)) {
            (Some(own), Some(ours_speed)) => (
                format!("ours >= {factor}x faster (is {:.1}x)", ours_speed / own),
                verdict(ours_speed / own >= factor),
            ),
            _ => (format!("ours >= {factor}x faster"), "-"),
        },
        Target::ShareOf { of } => match (own, speed(of)) {
            (Some(own), Some(other)) => (format!("{:.1}% of {of}", 100.0 * own / other), ""),
            _ => (format!("share of {of}"), ""),
        },
        Target::GrowthAgainst {
            small,
            floor,
            floor_small,
        } => {
            let ns = |speed: Option<f64>| speed.filter(|s| *s > 0.0).map(|s| 1e9 / s);
            match (
                ns(own),
                ns(speed(small)),
                ns(speed(floor)),
                ns(speed(floor_small)),
            ) {
                (Some(own), Some(small_ns), Some(floor_ns), Some(floor_small_ns)) => {
                    let added = own - small_ns;
                    let floor_added = floor_ns - floor_small_ns;
                    (
                        format!(
                            "{added:+.0} ns over {small}; {floor}: {floor_added:+.0} ns over {floor_small}"
                        ),
                        "",
                    )
                }
                _ => (format!("time added over {small}, against {floor}'s"), ""),
            }
        }
        Target::FasterThan { than, factor } => match (own, speed(than)) {
            (Some(own), Some(other)) => (
                format!(">= {factor}x faster than {than} (is {:.1}x)", own / other),
                verdict(own / other >= factor),
            ),
            _ => (format!(">= {factor}x faster than {than}"), "-"),
        },
    }
}

fn render(lines: &[Line]) -> String {
    let header = Line {
        label: "row",
        figure: "records/s (median)".to_owned(),
        per_record: "per record".to_owned(),
        vs_baseline: "vs baseline".to_owned(),
        target: "target".to_owned(),
        verdict: "result",
    };
    let all: Vec<&Line> = std::iter::once(&header).chain(lines).collect();
    let width = |cell: fn(&Line) -> usize| all.iter().map(|l| cell(l)).max().unwrap_or(0);
    let widths = [
        width(|l| l.label.len()),
        width(|l| l.figure.len()),
        width(|l| l.per_record.len()),
        width(|l| l.vs_baseline.len()),
        width(|l| l.target.len()),
    ];
    let mut out = String::new();
    for line in all {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}\n",
            line.label,
            line.figure,
            line.per_record,
            line.vs_baseline,
            line.target,
            line.verdict,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        ));
    }
    out
}

/// This workspace's target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// Where the bench binaries write their summaries and criterion's data.
fn out_dir() -> PathBuf {
    target_dir().join("syncforge-bench")
}

/// `cargo xtask bench --profile ROW`: one run of a W1 to W3 row (`w1_put`,
/// `w2_sync_empty`, `w3_sync_crdt`) or of a floor they are held to
/// (`baseline_put`, `baseline_lookup`), each also with `_10k` or `_1m`, or
/// twenty rounds of W4 or of its floor (`w4_incremental`, `baseline_replace`,
/// each with `_1k` or `_1m`),
/// under `valgrind --tool=callgrind`, recording only the workload itself
/// (the bench binary's `profiled` function), not its setup. Instruction
/// counts are stable on shared, noisy machines where timings are not: judge
/// small changes by them. Prints the instructions per record and where the
/// profile is, for `callgrind_annotate`.
///
/// With `cache`, the profile also simulates the caches, with a last-level
/// cache of [`SIMULATED_LAST_LEVEL`] whatever the machine has (valgrind
/// reads some processors' shared cache wrong, and a fixed size keeps
/// counts comparable between machines), and prints the lines read from
/// and written to memory per record: what a row larger than the cache
/// waits for, as steady as the instruction count.
pub(crate) fn profile(row: &str, cache: bool) -> Result<(), String> {
    let out = out_dir();
    std::fs::create_dir_all(&out)
        .map_err(|error| format!("cannot create {}: {error}", out.display()))?;
    let file = out.join(format!("callgrind.{row}.out"));
    // A profile left by an earlier run must not pass for this one's.
    match std::fs::remove_file(&file) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {error}", file.display()));
        }
        _ => {}
    }
    let cache_options = if cache {
        format!("'--cache-sim=yes', '--LL={SIMULATED_LAST_LEVEL},16,64', ")
    } else {
        String::new()
    };
    let runner = format!(
        "target.'cfg(all())'.runner = ['valgrind', '--tool=callgrind', {cache_options}\
         '--collect-atstart=no', '--toggle-collect=*profiled*', '--callgrind-out-file={}']",
        file.display()
    );
    Cargo::new(&[
        "bench",
        "-p",
        "syncforge",
        "--bench",
        "workloads",
        "--config",
    ])
    .locked()
    .arg(runner)
    .env("SYNCFORGE_BENCH_PROFILE", OsString::from(row))
    .run()?;
    let text = std::fs::read_to_string(&file)
        .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let totals =
        profile_totals(&text).ok_or_else(|| format!("{} holds no totals", file.display()))?;
    let event = |name: &str| {
        totals
            .iter()
            .find(|(event, _)| event == name)
            .map(|(_, count)| *count)
    };
    let instructions = event("Ir").filter(|count| *count > 0.0).ok_or_else(|| {
        format!(
            "{} counts no instruction: did the workload run inside `profiled`?",
            file.display()
        )
    })?;
    let records = records_of(row) as f64;
    println!(
        "\n{row}: {instructions:.0} instructions, {:.0} per record ({records} records)",
        instructions / records
    );
    if let (Some(reads), Some(writes)) = (event("DLmr"), event("DLmw")) {
        println!(
            "memory (a simulated {} MiB last-level cache): {:.2} lines read and {:.2} written per record",
            SIMULATED_LAST_LEVEL >> 20,
            reads / records,
            writes / records
        );
    }
    println!(
        "profile: {}\nread it with: callgrind_annotate --inclusive=yes {}",
        file.display(),
        file.display()
    );
    Ok(())
}

/// The last-level cache `--profile ROW --cache` simulates, in bytes: the L3
/// of the EPYC machines of this kind (16-way, 64-byte lines).
const SIMULATED_LAST_LEVEL: u64 = 32 << 20;

/// Each event of a callgrind profile with its total: the names of its
/// `events:` line paired with the counts of its `totals:` (or `summary:`)
/// line, which leaves out trailing zeros.
fn profile_totals(text: &str) -> Option<Vec<(String, f64)>> {
    let names = text.lines().find_map(|l| l.strip_prefix("events:"))?;
    let counts = text.lines().find_map(|l| {
        l.strip_prefix("totals:")
            .or_else(|| l.strip_prefix("summary:"))
    })?;
    let mut counts = counts.split_whitespace();
    names
        .split_whitespace()
        .map(|name| {
            let count = counts
                .next()
                .map_or(Some(0.0), |count| count.parse().ok())?;
            Some((name.to_owned(), count))
        })
        .collect()
}

/// Records handled by one run of a row: W1 to W3 and their floors from
/// their size suffix, W4 and its floor twenty rounds of 100 changes.
fn records_of(row: &str) -> usize {
    if row.starts_with("w4_") || row.starts_with("baseline_replace") {
        2_000
    } else if row.ends_with("_10k") {
        10_000
    } else if row.ends_with("_1m") {
        1_000_000
    } else {
        100_000
    }
}

/// What asks glibc's malloc to back its heap with transparent huge pages.
const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// The malloc the bench runs use, as the table's heading names it, and the
/// `GLIBC_TUNABLES` to give them (`None`: the environment's, if any).
///
/// Huge pages by default: a collection of 100,000 records or more is spread
/// over tens to hundreds of megabytes, and with 4 KiB pages nearly every
/// record a sync reads costs a page walk besides its cache miss (W3's
/// lookup-only floor took 40% less time with huge pages on this machine
/// kind, the syncs a quarter to a third less). A deployment holding
/// collections that size should turn them on; `--default-malloc` measures
/// without.
fn malloc(huge_pages: bool) -> (String, Option<&'static str>) {
    match std::env::var_os("GLIBC_TUNABLES") {
        Some(set) => (
            format!("GLIBC_TUNABLES={} as set", set.to_string_lossy()),
            None,
        ),
        None if huge_pages => (
            format!("glibc, transparent huge pages (GLIBC_TUNABLES={HUGE_PAGES_TUNABLE})"),
            Some(HUGE_PAGES_TUNABLE),
        ),
        None => ("glibc as it comes (4 KiB pages)".to_owned(), None),
    }
}

/// Runs every benchmark, then prints the table. A failing bench run stops
/// the command (its figures would be missing anyway).
pub(crate) fn run(quick: bool, huge_pages: bool) -> Result<(), String> {
    let out = out_dir();
    let summary = out.join("summary.tsv");
    match std::fs::remove_file(&summary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot clear {}: {error}", summary.display())),
    }
    let quick_flag = OsString::from(if quick { "1" } else { "0" });
    let (malloc, tunables) = malloc(huge_pages);
    // The Redis rows need the test server; stopped when `run` returns.
    let running = services::ensure_all()?;
    for run in runs(quick) {
        let mut run = run
            .env("SYNCFORGE_BENCH_OUT", out.clone().into_os_string())
            .env("SYNCFORGE_BENCH_QUICK", quick_flag.clone());
        for (name, value) in running.env() {
            run = run.env(name, value.into());
        }
        if let Some(tunables) = tunables {
            run = run.env("GLIBC_TUNABLES", tunables.into());
        }
        eprintln!("==> {run}");
        run.run()?;
    }
    let text = std::fs::read_to_string(&summary)
        .map_err(|error| format!("cannot read {}: {error}", summary.display()))?;
    let measured = parse_summary(&text)?;
    let mode = if quick { "quick" } else { "full" };
    println!("\nsyncforge benchmarks ({mode} mode, medians of this run; malloc: {malloc})\n");
    print!("{}", render(&table(&measured)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each package of a `Cargo.lock` with the names of its dependencies.
    fn locked_dependencies(lock: &str) -> HashMap<&str, std::collections::BTreeSet<&str>> {
        lock.split("[[package]]")
            .filter_map(|package| {
                let name = package
                    .lines()
                    .find_map(|line| line.strip_prefix("name = "))?
                    .trim_matches('"');
                let dependencies = package
                    .split_once("dependencies = [")
                    .map_or("", |(_, rest)| rest.split(']').next().unwrap_or(""))
                    .lines()
                    .filter_map(|line| {
                        line.trim()
                            .trim_end_matches(',')
                            .trim_matches('"')
                            .split(' ')
                            .next()
                    })
                    .filter(|dependency| !dependency.is_empty())
                    .collect();
                Some((name, dependencies))
            })
            .collect()
    }

    /// The names of the dependencies under a manifest's `[section]`.
    fn manifest_dependencies<'a>(
        manifest: &'a str,
        section: &str,
    ) -> std::collections::BTreeSet<&'a str> {
        manifest
            .split_once(&format!("[{section}]"))
            .map_or("", |(_, rest)| rest.split("\n[").next().unwrap_or(""))
            .lines()
            .filter_map(|line| line.split(['.', ' ', '=']).next())
            .filter(|name| !name.is_empty() && !name.starts_with('#'))
            .collect()
    }

    /// The peers workspace, which `cargo xtask bench` builds `--locked`,
    /// has a lock file of its own: a dependency added to the core left it
    /// stale, and a full bench run failed at its last step. The crates it
    /// shares without optional dependencies are locked with the same
    /// dependencies in both, but for the workspace's dev-dependencies; the
    /// facade, whose optional ones the peers do not turn on, with none the
    /// workspace's lock does not give it. Mend with `cargo update -w
    /// --manifest-path benches/peers/Cargo.toml`.
    #[test]
    fn the_peers_lock_file_follows_the_workspace() {
        let workspace = locked_dependencies(include_str!("../../Cargo.lock"));
        let peers = locked_dependencies(include_str!("../../benches/peers/Cargo.lock"));
        for (name, manifest) in [
            (
                "syncforge-core",
                include_str!("../../crates/syncforge-core/Cargo.toml"),
            ),
            (
                "syncforge-backend-memory",
                include_str!("../../crates/syncforge-backend-memory/Cargo.toml"),
            ),
        ] {
            let (Some(peers), Some(workspace)) = (peers.get(name), workspace.get(name)) else {
                panic!("both lock files hold {name}");
            };
            let normal = manifest_dependencies(manifest, "dependencies");
            let dev = manifest_dependencies(manifest, "dev-dependencies");
            let dev_only: std::collections::BTreeSet<&str> =
                dev.difference(&normal).copied().collect();
            let built: std::collections::BTreeSet<&str> =
                workspace.difference(&dev_only).copied().collect();
            assert_eq!(peers, &built, "{name}");
        }
        let (Some(peers), Some(workspace)) = (peers.get("syncforge"), workspace.get("syncforge"))
        else {
            panic!("both lock files hold the facade");
        };
        assert!(
            peers.is_subset(workspace),
            "{:?}",
            peers.difference(workspace).collect::<Vec<_>>()
        );
    }

    fn measured(text: &str) -> HashMap<String, Measured> {
        parse_summary(text).unwrap()
    }

    fn line<'a>(lines: &'a [Line], label_start: &str) -> &'a Line {
        lines
            .iter()
            .find(|l| l.label.starts_with(label_start))
            .unwrap()
    }

    #[test]
    fn summary_lines_parse_and_bad_ones_are_named() {
        let rows = measured("w1_put\t100000\t50000000\npeak_rss_1m\tvalue\t1024\n");
        assert_eq!(
            rows["w1_put"],
            Measured::Timing {
                records: 100_000.0,
                median_ns: 50_000_000.0
            }
        );
        assert_eq!(rows["w1_put"].per_second(), Some(2e6));
        assert_eq!(rows["peak_rss_1m"], Measured::Value(1024.0));
        let error = parse_summary("w1_put\t100000\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        assert!(parse_summary("w1_put\tmany\t5\n").is_err());
    }

    #[test]
    fn rates_are_judged_against_targets_and_the_baseline() {
        // Baseline 10 M/s; W1 2.5 M/s passes 2.2 M/s; W2 1 M/s misses 3 M/s.
        let rows = measured(
            "baseline_hashmap\t100000\t10000000\nw1_put\t100000\t40000000\nw2_sync_empty\t100000\t100000000\n",
        );
        let lines = table(&rows);
        let w1 = line(&lines, "W1 put 100k");
        assert_eq!(
            (
                w1.figure.as_str(),
                w1.per_record.as_str(),
                w1.vs_baseline.as_str(),
                w1.verdict
            ),
            ("2.50 M/s", "400 ns", "0.250x", "pass")
        );
        assert_eq!(line(&lines, "W2").verdict, "MISS");
        assert_eq!(line(&lines, "W3").figure, "not measured");
        assert_eq!(
            line(&lines, "peers: W3 merge, crdts").figure,
            "not measured (full mode only)"
        );
    }

    #[test]
    fn w1_and_w3_are_shown_as_shares_of_their_floors() {
        let rows = measured(
            "w1_put\t100000\t80000000\nbaseline_put\t100000\t40000000\n\
             w3_sync_crdt\t100000\t50000000\nbaseline_lookup\t100000\t20000000\n",
        );
        let lines = table(&rows);
        let w1 = line(&lines, "W1 put, rate as a share of its floor");
        assert_eq!(
            (w1.target.as_str(), w1.verdict),
            ("50.0% of baseline_put", "")
        );
        let w3 = line(&lines, "W3 CRDT sync, rate as a share of its floor");
        assert_eq!(w3.target, "40.0% of baseline_lookup");
    }

    #[test]
    fn a_profile_counts_per_record_by_its_rows_size() {
        assert_eq!(records_of("w3_sync_crdt_10k"), 10_000);
        assert_eq!(records_of("baseline_lookup"), 100_000);
        assert_eq!(records_of("w2_sync_empty_1m"), 1_000_000);
        assert_eq!(records_of("w4_incremental_1m"), 2_000);
        assert_eq!(records_of("baseline_replace_1m"), 2_000);
    }

    #[test]
    fn w4_growth_is_set_beside_its_floors_growth() {
        // Per change: W4 1,000 ns at 1k and 1,500 at 1M; the floor 50 and 450.
        let lines = table(&measured(
            "w4_incremental_1k\t100\t100000\nw4_incremental_1m\t100\t150000\n\
             baseline_replace_1k\t100\t5000\nbaseline_replace_1m\t100\t45000\n",
        ));
        let growth = line(&lines, "W4: time 1M records add");
        assert_eq!(
            (growth.target.as_str(), growth.verdict),
            (
                "+500 ns over w4_incremental_1k; baseline_replace_1m: +400 ns over baseline_replace_1k",
                ""
            )
        );
        let alone = table(&measured("w4_incremental_1m\t100\t150000\n"));
        assert_eq!(
            line(&alone, "W4: time").target,
            "time added over w4_incremental_1k, against baseline_replace_1m's"
        );
    }

    #[test]
    fn relative_targets_compare_rows_of_the_same_run() {
        // 1M-record W4 takes 3x the time of the 1k one: a miss.
        let rows = measured(
            "w4_incremental_1k\t100\t100000\nw4_incremental_1m\t100\t300000\n\
             peers_w3_syncforge\t100000\t10000000\npeers_w3_crdts\t100000\t200000000\n\
             peers_w3_automerge\t100000\t50000000\npeak_rss_1m\tvalue\t536870912\n\
             fs_put_10k_durable\t10000\t1000000000\nfs_sync_10k_durable\t10000\t50000000\n",
        );
        let lines = table(&rows);
        let share = lines
            .iter()
            .find(|l| l.label.contains("share of hset"))
            .unwrap();
        assert_eq!(share.figure, "not measured");
        let w4 = line(&lines, "W4 100 changes via feed+sync, 1M");
        assert_eq!(w4.verdict, "MISS");
        assert!(w4.target.contains("is 3.00x"), "{}", w4.target);
        assert_eq!(line(&lines, "peers: W3 merge, crdts").verdict, "pass");
        assert_eq!(line(&lines, "peers: W3 merge, automerge").verdict, "MISS");
        let fs_sync = line(&lines, "fs: sync 10k");
        assert_eq!(fs_sync.verdict, "pass");
        assert!(fs_sync.target.contains("is 20.0x"), "{}", fs_sync.target);
        let wire = table(&measured("http_push_bytes_per_record\tvalue\t412.4\n"));
        let pushed = line(&wire, "http: bytes on the wire per record pushed");
        assert_eq!(
            (pushed.figure.as_str(), pushed.verdict),
            ("412 B/record", "")
        );
        let memory = line(&lines, "peak RSS");
        assert_eq!(
            (memory.figure.as_str(), memory.verdict),
            ("512 MiB", "pass")
        );
    }

    #[test]
    fn the_redis_sync_row_is_shown_as_a_share_of_redis_benchmark() {
        // hset 1 M/s; sync 250 k/s: 25%, and the sync misses its 300 k/s target.
        let rows = measured(
            "redis_benchmark_hset\t1000000\t1000000000\nredis_sync_10k_empty\t10000\t40000000\n",
        );
        let lines = table(&rows);
        let share = lines
            .iter()
            .find(|l| l.label.contains("share of hset"))
            .unwrap();
        assert_eq!(share.target, "25.0% of redis_benchmark_hset");
        let sync = line(&lines, "redis: sync 10k (quick 1k)");
        assert_eq!((sync.figure.as_str(), sync.verdict), ("250.0 k/s", "MISS"));
    }

    #[test]
    fn request_counts_and_run_times_are_judged() {
        // 1.05 requests per record passes 1.2; into 5k costs 1.3x into 500:
        // a miss; 1.4 s for the 1k sync passes 1.5 s, 0.6 s misses 0.5 s.
        let rows = measured(
            "s3_moto_sync_1k_empty\trequests\t1.05\n\
             s3_moto_incremental_100_into_500\trequests\t2\n\
             s3_moto_incremental_100_into_5k\trequests\t2.6\n\
             s3_20ms_sync_1k_empty\t1000\t1400000000\n\
             s3_20ms_incremental_100_into_5k\t100\t600000000\n",
        );
        assert_eq!(rows["s3_moto_sync_1k_empty"], Measured::Requests(1.05));
        let lines = table(&rows);
        let sync = line(&lines, "s3 on moto: sync 1k");
        assert_eq!(
            (
                sync.figure.as_str(),
                sync.vs_baseline.as_str(),
                sync.verdict
            ),
            ("1.05 req/record", "", "pass")
        );
        let larger = line(&lines, "s3 on moto: sync 100 changes into 5k");
        assert_eq!(larger.verdict, "MISS");
        assert!(larger.target.contains("is 1.30x"), "{}", larger.target);
        let timed = line(&lines, "s3 at 20 ms/request: sync 1k");
        assert_eq!(timed.verdict, "pass");
        assert!(timed.target.contains("is 1.40 s"), "{}", timed.target);
        assert_eq!(
            line(&lines, "s3 at 20 ms/request: 100 changes feed+sync into 5k").verdict,
            "MISS"
        );
        // A relative target without its reference row is not judged.
        let alone = table(&measured("s3_moto_feed_100_of_5k\trequests\t1\n"));
        assert_eq!(
            line(&alone, "s3 on moto: read 100 changes, feed of 5k").verdict,
            "-"
        );
    }

    #[test]
    fn the_table_lines_up() {
        let lines = table(&measured("w1_put\t100000\t50000000\n"));
        let text = render(&lines);
        let verdicts = std::iter::once("result").chain(lines.iter().map(|l| l.verdict));
        // Every column but the last has a fixed width.
        let widths: Vec<usize> = text
            .lines()
            .zip(verdicts)
            .map(|(l, verdict)| l.len() - verdict.len())
            .collect();
        assert_eq!(widths.len(), ROWS.len() + 1);
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn profile_totals_pair_each_event_with_its_count() {
        let cached = "version: 1\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                      fl=(1) a.rs\nsummary: 1500 40 20 4 30 5 1 14 2\n\
                      totals: 1500 40 20 4 30 5 1 14 2\n";
        let totals = profile_totals(cached).unwrap();
        assert_eq!(totals.len(), 9);
        assert_eq!(totals[0], ("Ir".to_owned(), 1500.0));
        assert_eq!(totals[7], ("DLmr".to_owned(), 14.0));
        assert_eq!(totals[8], ("DLmw".to_owned(), 2.0));
        let no_writes = profile_totals("events: Ir DLmr DLmw\ntotals: 151 3\n").unwrap();
        assert_eq!(no_writes[2], ("DLmw".to_owned(), 0.0));
        let plain = profile_totals("events: Ir\nsummary: 4075\n").unwrap();
        assert_eq!(plain, vec![("Ir".to_owned(), 4075.0)]);
        assert_eq!(profile_totals("events: Ir\n"), None);
        assert_eq!(profile_totals("events: Ir\ntotals: many\n"), None);
    }
}
