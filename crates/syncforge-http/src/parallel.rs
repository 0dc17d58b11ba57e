//! Per-record work spread over the machine's cores: a push or a feed page of
//! thousands of records is written or read as JSON in chunks, in order, on
//! tokio's blocking threads (the async workers stay free meanwhile).

use std::sync::OnceLock;

/// Fewest records worth a thread of their own.
const RECORDS_PER_THREAD: usize = 128;
/// Most threads one batch of records is spread over.
const MAX_THREADS: usize = 8;

/// `work` applied to `items` split, in order, into one chunk per thread
/// (each chunk with the index of its first item); a single chunk, run right
/// here, when there are too few items to share. A chunk whose task failed
/// (panicked) is `Err`.
pub(crate) async fn in_chunks<T, R>(
    items: Vec<T>,
    work: impl Fn(Vec<T>, usize) -> R + Send + Sync + Clone + 'static,
) -> Vec<Result<R, tokio::task::JoinError>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let threads = (items.len() / RECORDS_PER_THREAD).clamp(1, threads());
    if threads == 1 {
        return vec![Ok(work(items, 0))];
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

/// The machine's cores, at most [`MAX_THREADS`].
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(MAX_THREADS)
    })
}
