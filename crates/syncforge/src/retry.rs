//! Retrying transient backend failures with exponential back-off.

use std::future::Future;
use std::time::Duration;

use syncforge_core::{Error, Result};
use tracing::field::Empty;
use tracing::Instrument;

/// First back-off delay; doubled after every failed attempt (100 ms, 200 ms,
/// 400 ms, ...), as in the original library.
pub(crate) const BASE_DELAY: Duration = Duration::from_millis(100);

/// Longest single back-off delay.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Runs `call`, retrying up to `max_retries` times when it fails with a
/// transient error ([`Error::is_transient`]). Bad input and permanent
/// failures are returned at once. Retries run in a `retry` tracing span that
/// records the operation and how many retries it took.
pub(crate) async fn retry_transient<T, F, Fut>(max_retries: u32, what: &str, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retry_transient_now(None, max_retries, what, call).await
}

/// [`retry_transient`] for a backend call that may have answered at once
/// (`get_now`, `put_now`): its answer, `now`, counts as the first attempt and
/// is retried the same way; `None` makes the first attempt through `call`.
pub(crate) async fn retry_transient_now<T, F, Fut>(
    now: Option<Result<T>>,
    max_retries: u32,
    what: &str,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let first = match now {
        Some(answer) => answer,
        None => call().await,
    };
    match first {
        Err(error) if error.is_transient() && max_retries > 0 => {
            // The span exists only once something failed: the common path
            // pays nothing for it.
            let span = tracing::info_span!("retry", operation = what, max_retries, retries = Empty);
            retry_after(error, max_retries, what, call, &span)
                .instrument(span.clone())
                .await
        }
        other => other,
    }
}

async fn retry_after<T, F, Fut>(
    mut error: Error,
    max_retries: u32,
    what: &str,
    mut call: F,
    span: &tracing::Span,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        let delay = backoff(attempt);
        tracing::warn!(
            operation = what,
            attempt = attempt + 1,
            max_retries,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            %error,
            "transient storage failure; retrying"
        );
        let Some(wait) = timer(|| tokio::time::sleep(delay)) else {
            tracing::warn!(
                operation = what,
                %error,
                "cannot wait to retry: the tokio runtime was built without timers (enable_time)"
            );
            return Err(error);
        };
        wait.await;
        attempt += 1;
        span.record("retries", attempt);
        match call().await {
            Err(again) if again.is_transient() && attempt < max_retries => error = again,
            Err(again) if again.is_transient() => {
                tracing::warn!(operation = what, retries = attempt, error = %again, "giving up");
                return Err(again);
            }
            other => return other,
        }
    }
}

/// The timer `make` makes, or `None` on a tokio runtime built without
/// timers, where making one panics: the engine runs on such a runtime, and
/// only what needs a timer is refused there.
pub(crate) fn timer<T>(make: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    std::panic::catch_unwind(make).ok()
}

/// The delay before retry number `attempt + 1`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    BASE_DELAY
        .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(40), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_given_up() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = retry_transient(3, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::unavailable("test", "down"))
        })
        .await;
        assert!(matches!(out, Err(Error::Unavailable { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_is_never_retried() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = retry_transient(3, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::invalid_record(Some("x"), "bad"))
        })
        .await;
        assert!(matches!(out, Err(Error::InvalidRecord { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
