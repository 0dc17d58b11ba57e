//! Peak memory (max RSS) of one process holding 1,000,000 benchmark records
//! in a memory-backed engine, written one put at a time as an application
//! would. Its own process, so no other benchmark's allocations count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use syncforge::{ConflictStrategy, MemoryBackend, SyncEngine};

use support::Person;

const RECORDS: usize = 1_000_000;

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`: skip the
    // million records there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = support::peak_rss_bytes();
    let held = rt.block_on(async {
        let engine = SyncEngine::builder()
            .client_id("memory")
            .conflict_strategy(ConflictStrategy::Crdt)
            .backend(MemoryBackend::new())
            .build()
            .await
            .unwrap();
        for i in 0..RECORDS {
            engine.put("people", &Person::nth(i)).await.unwrap();
        }
        engine
    });
    let count = rt.block_on(held.get("people", "person-00999999")).unwrap();
    assert!(count.is_some());
    match (before, support::peak_rss_bytes()) {
        (Some(before), Some(peak)) => {
            println!(
                "peak RSS holding {RECORDS} records: {} MiB (process start: {} MiB)",
                peak / (1 << 20),
                before / (1 << 20)
            );
            support::report_value("peak_rss_1m", peak as f64);
        }
        _ => eprintln!("peak RSS is not available on this platform (/proc/self/status)"),
    }
    drop(held);
}
