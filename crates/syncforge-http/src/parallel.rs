//! Per-record work spread over the machine's cores: a push or a feed page of
//! thousands of records is written or read as JSON in chunks, in order, on
//! tokio's blocking threads (the async workers stay free meanwhile).

use std::sync::OnceLock;

/// Fewest records worth a thread of their own.
const RECORDS_PER_THREAD: usize = 128;
/// Most threads one batch of records is spread over.
const MAX_THREADS: usize = 8;

/// Bytes of input from which even a single chunk is worked on a blocking
/// thread: a few large records take milliseconds to decode, which an async
/// worker must not spend (every request waiting on it would wait too).
const BLOCKING_BYTES: usize = 1 << 20;

/// `work` applied to `items` split, in order, into one chunk per thread
/// (each chunk with the index of its first item); a single chunk when there
/// are too few items to share, run right here unless `bytes` says the
/// items' input or output is [`BLOCKING_BYTES`] long or more (asked only
/// then: a count that walks the items is paid only for a few). A chunk
/// whose task failed (panicked) is `Err`.
pub(crate) async fn in_chunks<T, R>(
    items: Vec<T>,
    bytes: impl FnOnce(&[T]) -> usize,
    work: impl Fn(Vec<T>, usize) -> R + Send + Sync + Clone + 'static,
) -> Vec<Result<R, tokio::task::JoinError>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let threads = (items.len() / RECORDS_PER_THREAD).clamp(1, threads());
    if threads == 1 {
        if bytes(&items) < BLOCKING_BYTES {
            return vec![Ok(work(items, 0))];
        }
        return vec![tokio::task::spawn_blocking(move || work(items, 0)).await];
    }
    let per_chunk = items.len().div_ceil(threads);
    let mut tasks = Vec::with_capacity(threads);
    let mut rest = items;
    let mut first = 0;
    while !rest.is_empty() {
        let tail = rest.split_off(per_chunk.min(rest.len()));
        let chunk = std::mem::replace(&mut rest, tail);
        let work = work.clone();
        let offset = first;
        first += chunk.len();
        tasks.push(tokio::task::spawn_blocking(move || work(chunk, offset)));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await);
    }
    outcomes
}

/// The bytes of `records`' visible field names and values: less than their
/// JSON text, which holds each of them at least once.
pub(crate) fn values_bytes<'a>(
    records: impl IntoIterator<Item = &'a syncforge_core::Record>,
) -> usize {
    records
        .into_iter()
        .flat_map(syncforge_core::Record::fields)
        .map(|(name, value)| name.len() + value.as_str().len())
        .sum()
}

/// The machine's cores, at most [`MAX_THREADS`].
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(MAX_THREADS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One large record was decoded on the async worker that took the
    /// request (fewer than 256 records were never spread), holding up every
    /// request waiting on that worker for the length of the decode.
    #[tokio::test(flavor = "current_thread")]
    async fn a_single_chunk_of_large_input_runs_off_the_async_worker() {
        let here = std::thread::current().id();
        let on_thread = |_: Vec<u8>, _| std::thread::current().id();
        let light = in_chunks(vec![1], |_| BLOCKING_BYTES - 1, on_thread).await;
        assert_eq!(light.into_iter().next().unwrap().unwrap(), here);
        let heavy = in_chunks(vec![1], |_| BLOCKING_BYTES, on_thread).await;
        assert_ne!(heavy.into_iter().next().unwrap().unwrap(), here);
    }

    /// A page or push of a few large records was written as JSON on the
    /// async worker (the size of what is written was taken as unknown):
    /// their values' bytes, a lower bound, send it to a blocking thread.
    #[tokio::test(flavor = "current_thread")]
    async fn a_few_large_records_are_written_off_the_async_worker() {
        use syncforge_core::{Content, Record, Stamp};
        let here = std::thread::current().id();
        let text = "x".repeat(BLOCKING_BYTES);
        let large = Record::create(
            Content::from_value(serde_json::json!({"id": "r", "text": text})).unwrap(),
            Stamp::new(1, 0, "c").unwrap(),
        );
        let values = values_bytes([&large]);
        assert!(values >= BLOCKING_BYTES, "{values}");
        assert!(values < large.to_json_string().len(), "{values}");
        let on_thread = |_: Vec<Record>, _| std::thread::current().id();
        let written = in_chunks(vec![large], |records| values_bytes(records), on_thread).await;
        assert_ne!(written.into_iter().next().unwrap().unwrap(), here);
    }
}
