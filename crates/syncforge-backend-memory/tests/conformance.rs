//! The shared backend conformance suite, run against `MemoryBackend`.

use std::sync::Arc;

use syncforge_backend_memory::MemoryBackend;
use syncforge_core::{async_trait, StorageBackend};
use syncforge_testkit::{run_conformance, StoreFactory};

/// Hands out clones: each is another handle on the same data, as a second
/// engine in the same process would hold.
struct SharedMemory(MemoryBackend);

#[async_trait]
impl StoreFactory for SharedMemory {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    run_conformance(&SharedMemory(MemoryBackend::new())).await;
}

/// The memory store answers the calls a store that can answer at once
/// answers (the suite also passes a store that declines them, as the
/// trait allows): an engine's puts and reads take the quick way through
/// it, and a store that fell back to declining would still conform.
#[tokio::test]
async fn the_memory_store_answers_at_once() {
    use syncforge_core::{CollectionName, IfAbsent, Record, RecordId, Write, WriteOutcome};

    let store = MemoryBackend::new();
    let notes = CollectionName::new("notes").unwrap();
    let record = |id: &str| {
        Record::from_json(serde_json::json!({
            "id": id, "_version": 1, "_timestamp": 1, "_deleted": false, "_clientId": "a"
        }))
    };
    let (one, two) = (RecordId::new("one").unwrap(), RecordId::new("two").unwrap());
    let inserted = store.insert_if_absent_now(&notes, &one, &mut || record("one"));
    assert!(
        matches!(inserted, Some(Ok(IfAbsent::Inserted { .. }))),
        "{inserted:?}"
    );
    let inserted = store
        .insert_if_absent(&notes, &two, &mut || record("two"))
        .await;
    assert!(
        matches!(inserted, Some(Ok(IfAbsent::Inserted { .. }))),
        "{inserted:?}"
    );
    let found = store.get_now(&notes, &one);
    assert!(matches!(found, Some(Ok(Some(_)))), "{found:?}");
    let put = store.put_now(&notes, &Write::create(record("three").unwrap()));
    assert!(
        matches!(put, Some(Ok(WriteOutcome::Written { .. }))),
        "{put:?}"
    );
}
