//! Tracing: every sync, peer sync and retry shows up as a span with its
//! collection, counts and duration, without any custom logging.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde_json::json;
use syncforge::{ConflictStrategy, MemoryBackend, StorageBackend, SyncEngine};
use syncforge_testkit::faults::{FaultyBackend, Operation};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use crate::support::engine;

type Fields = BTreeMap<String, String>;

/// A subscriber that keeps every span's name and fields, and every event's
/// fields.
#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<BTreeMap<u64, (String, Fields)>>,
    events: Mutex<Vec<Fields>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        self.spans
            .lock()
            .insert(id, (attrs.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().get_mut(&span.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        self.events.lock().push(fields);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Keeps nothing; installed as the process-wide default so that no callsite
/// is ever registered against "no subscriber".
struct Sink;

impl Subscriber for Sink {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// tracing caches each callsite's interest for the whole process, computed
/// against the subscriber of whichever thread reaches it first. A test running
/// in parallel without a subscriber would pin the engine's spans to "never"
/// and blind the capture below. With an interested global default, every
/// thread's first look sees an interested subscriber.
fn install_global_sink() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a global default exists already, which serves as well.
        let _ = tracing::subscriber::set_global_default(Sink);
    });
}

impl Capture {
    fn named(&self, name: &str) -> Vec<Fields> {
        self.spans
            .lock()
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// A store holding a stamp far ahead of this machine's clock (written by a
/// co-writer whose clock ran fast) moved the clock of every engine opening
/// it past that stamp, silently: their writes were then refused by every
/// peer as stamped ahead, with nothing saying why.
#[tokio::test]
async fn opening_a_store_holding_a_stamp_far_ahead_warns() {
    install_global_sink();
    let store = Arc::new(MemoryBackend::new());
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let fast = SyncEngine::builder()
        .client_id("fast")
        .backend(store.clone())
        .time_source(Arc::new(syncforge::ManualTime::new(now + 3_600_000)))
        .build()
        .await
        .unwrap();
    fast.put("notes", &json!({"id": "n1"})).await.unwrap();
    let capture = Arc::new(Capture::default());
    let _guard = tracing::subscriber::set_default(capture.clone());
    let _opened = SyncEngine::builder()
        .client_id("slow")
        .backend(store)
        .build()
        .await
        .unwrap();
    let events = capture.events.lock();
    let warned = events.iter().find(|fields| {
        fields
            .get("message")
            .is_some_and(|message| message.contains("max_clock_drift"))
    });
    let warned = warned.unwrap_or_else(|| panic!("no warning among {events:?}"));
    assert!(
        warned["ahead_ms"].parse::<u64>().unwrap() > 3_000_000,
        "{warned:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn syncs_peer_syncs_and_retries_are_spans() {
    install_global_sink();
    let capture = Arc::new(Capture::default());
    let _guard = tracing::subscriber::set_default(capture.clone());

    let flaky = Arc::new(
        FaultyBackend::new(Arc::new(MemoryBackend::new()), 5, 0.0, Duration::ZERO)
            .failing_only(&[Operation::GetMany]),
    );
    let store: Arc<dyn StorageBackend> = flaky.clone();
    let local = SyncEngine::builder()
        .client_id("local")
        .backend(store)
        .max_retries(20)
        .build()
        .await
        .unwrap();
    let remote = engine("remote", ConflictStrategy::Timestamp).await;
    for i in 0..3 {
        remote
            .put("notes", &json!({"id": format!("n{i}")}))
            .await
            .unwrap();
    }

    flaky.set_failure_rate(0.6);
    let _ = local
        .sync("notes", remote.get_all("notes").await.unwrap())
        .await
        .unwrap();
    flaky.set_failure_rate(0.0);
    let _ = local.sync_with(&remote, "notes").await.unwrap();

    let syncs = capture.named("sync");
    let first = syncs
        .iter()
        .find(|f| f.get("added").map(String::as_str) == Some("3"))
        .expect("a sync span with its counts");
    assert_eq!(first["collection"], "notes");
    assert_eq!(first["records"], "3");
    assert!(first.contains_key("duration_ms"));

    let retries = capture.named("retry");
    assert!(flaky.injected_failures() > 0);
    assert!(!retries.is_empty(), "retries show as spans");
    assert!(
        retries
            .iter()
            .all(|f| f["operation"] == "get_many" && f.contains_key("retries")),
        "{retries:?}"
    );

    let peer = capture.named("sync_with");
    assert_eq!(peer.len(), 1);
    assert_eq!(peer[0]["peer"], "remote");
    assert_eq!(peer[0]["pushed"], "3");
    assert!(peer[0].contains_key("duration_ms"));
}
