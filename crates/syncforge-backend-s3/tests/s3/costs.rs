//! Requests counted with a wrapper store: a sync into an empty collection
//! costs about one request per record, and an incremental read grows with
//! the change, not the collection.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::ObjectStore;
use serde_json::json;
use syncforge_backend_s3::S3Backend;
use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Hlc, Record, RecordId, StorageBackend, Write,
};

use crate::wrapper::Wrapped;

fn record(clock: &mut Hlc, id: &str, n: i64) -> Record {
    Record::create(
        Content::from_value(json!({"id": id, "n": n})).unwrap(),
        clock.now().unwrap(),
    )
}

/// What the engine's sync does per batch: one get_many, one put_batch.
async fn sync_in(backend: &S3Backend, collection: &CollectionName, records: &[Record]) {
    for batch in records.chunks(100) {
        let ids: Vec<RecordId> = batch.iter().map(|r| r.id().clone()).collect();
        let found = backend.get_many(collection, &ids).await.unwrap();
        let writes: Vec<Write> = batch
            .iter()
            .zip(found)
            .map(|(r, found)| match found {
                Some(stored) => Write::replace(r.clone(), stored.token),
                None => Write::create(r.clone()),
            })
            .collect();
        backend.put_batch(collection, &writes).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_into_an_empty_collection_costs_at_most_1_2_requests_per_record() {
    let counted = Arc::new(Wrapped::new(Arc::new(InMemory::new())));
    let backend = S3Backend::from_store(counted.clone(), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let records: Vec<Record> = (0..1000)
        .map(|i| record(&mut clock, &format!("r{i:04}"), i))
        .collect();
    sync_in(
        &backend,
        &CollectionName::new("readings").unwrap(),
        &records,
    )
    .await;
    let per_record = counted.requests() as f64 / 1000.0;
    assert!(per_record <= 1.2, "{per_record} requests per record");
}

/// A feed of whole batches, read a page of 100 at a time as a peer sync
/// reads it: each page reads the entries it needs and the records it
/// returns. Each page fetched as many entries as it had room for changes
/// (64 at once) and read the record of every item in them, 64 reads a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_the_feed_reads_about_one_record_per_change() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = CollectionName::new("batches").unwrap();
    let writer = S3Backend::from_store(Arc::clone(&memory), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let records: Vec<Record> = (0..2000)
        .map(|i| record(&mut clock, &format!("r{i:04}"), i))
        .collect();
    sync_in(&writer, &collection, &records).await;

    let counted = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let reader = S3Backend::from_store(counted.clone(), "dse").unwrap();
    let first = reader
        .changes(&collection, Cursor::START, 100.try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(first.len(), 100);
    assert!(first.more);
    assert!(
        counted.requests() <= 110,
        "{} requests for the first page",
        counted.requests()
    );
    let mut seen: Vec<RecordId> = first
        .changes
        .iter()
        .map(|c| c.record.id().clone())
        .collect();
    let mut after = first.next;
    for pages in 0.. {
        assert!(pages < 100_000, "the feed did not end within 100,000 pages");
        let page = reader
            .changes(&collection, after, 100.try_into().unwrap())
            .await
            .unwrap();
        seen.extend(page.changes.iter().map(|c| c.record.id().clone()));
        after = page.next;
        if !page.more {
            break;
        }
    }
    let expected: Vec<RecordId> = records.iter().map(|r| r.id().clone()).collect();
    assert_eq!(seen, expected, "every record once, in the order written");
    let per_change = counted.requests() as f64 / 2000.0;
    assert!(per_change <= 1.2, "{per_change} requests per change");
}

/// A feed entry holding a whole batch of 1,000 writes, read a page of 100
/// changes at a time: the entry is fetched once, not once a page (ten
/// times its size, which grows with the batch, for the same changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_read_a_page_at_a_time_is_fetched_once() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = CollectionName::new("batches").unwrap();
    let writer = S3Backend::from_store(Arc::clone(&memory), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let writes: Vec<Write> = (0..1000)
        .map(|i| Write::create(record(&mut clock, &format!("r{i:04}"), i)))
        .collect();
    writer.put_batch(&collection, &writes).await.unwrap();

    let (counted, entry_reads) = Wrapped::new(Arc::clone(&memory)).counting_gets("/f/");
    let reader = S3Backend::from_store(Arc::new(counted), "dse").unwrap();
    let mut after = Cursor::START;
    let mut seen = 0;
    for pages in 0.. {
        assert!(pages < 100_000, "the feed did not end within 100,000 pages");
        let page = reader
            .changes(&collection, after, 100.try_into().unwrap())
            .await
            .unwrap();
        seen += page.len();
        after = page.next;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, 1000);
    let reads = entry_reads.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reads, 1, "the entry was fetched {reads} times");
}

/// Requests a reader at the end of the feed spends to read 10 changes, in a
/// collection of `size` records.
async fn incremental_cost(size: usize) -> (u64, u64) {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = CollectionName::new("big").unwrap();
    let writer = S3Backend::from_store(Arc::clone(&memory), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let records: Vec<Record> = (0..size)
        .map(|i| record(&mut clock, &format!("r{i:05}"), 0))
        .collect();
    sync_in(&writer, &collection, &records).await;
    let mut end = Cursor::START;
    for pages in 0.. {
        assert!(pages < 100_000, "the feed did not end within 100,000 pages");
        let page = writer
            .changes(&collection, end, 1000.try_into().unwrap())
            .await
            .unwrap();
        end = page.next;
        if !page.more {
            break;
        }
    }
    let changed: Vec<Record> = (0..10)
        .map(|i| record(&mut clock, &format!("r{:05}", i * size / 10), 1))
        .collect();
    let counted_writer = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let writer = S3Backend::from_store(counted_writer.clone(), "dse").unwrap();
    sync_in(&writer, &collection, &changed).await;
    let counted_reader = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let reader = S3Backend::from_store(counted_reader.clone(), "dse").unwrap();
    let page = reader
        .changes(&collection, end, 100.try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert!(!page.more);
    (counted_writer.requests(), counted_reader.requests())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_cost_grows_with_the_change_not_the_collection() {
    let (write_small, read_small) = incremental_cost(300).await;
    let (write_large, read_large) = incremental_cost(3000).await;
    assert_eq!(
        read_small, read_large,
        "reading 10 changes of 300 vs of 3,000 records"
    );
    assert!(read_small <= 16, "{read_small} requests to read 10 changes");
    // The writer's get_many may need one more listing in the larger collection.
    assert!(
        write_large <= write_small + 2,
        "{write_small} vs {write_large}"
    );
    // 10 reads and 10 writes, a listing, and a fresh handle's first batch:
    // newest stamp (3), finding the feed's head (2), claim, horizon, and
    // the handle's one try of the store's conditional writes (4).
    assert!(
        write_large <= 34,
        "{write_large} requests to write 10 changes"
    );
}
