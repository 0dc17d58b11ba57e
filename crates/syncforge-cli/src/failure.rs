//! How a failed command ends: its exit code and its message.

use std::io::{self, Write};
use std::process::ExitCode;

/// Exit code of a failure at run time (a store that cannot be reached,
/// malformed input, an unknown record, ...).
pub(crate) const RUNTIME_FAILURE: u8 = 1;
/// Exit code of a command line that cannot be run as given (clap uses it too).
pub(crate) const USAGE_ERROR: u8 = 2;
/// Exit code of a sync that synced every change but records the receiving
/// end refused (too large for a sync server): told apart from a sync that
/// did not happen, since such a record is refused again at every run until
/// it shrinks or the server takes more.
const REFUSED_RECORDS: u8 = 3;

/// Records the receiving end of a sync refused while every other change
/// went through: the command exits with code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// An argument that cannot be used as given: the command exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

/// Stdout was closed by its reader (`syncforge export .. | head`): a
/// command that only reads stops, and that is the reader's choice, not a
/// failure. (A command that writes finishes its writes instead: see
/// [`Output::new`](crate::output::Output::new).)
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub(crate) struct StdoutClosed;

/// A usage error (exit code 2) with this message.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Prints `error` with its causes as one block on stderr and returns the
/// exit code it calls for.
pub(crate) fn report(error: &anyhow::Error) -> ExitCode {
    match exit_code(error) {
        0 => ExitCode::SUCCESS,
        code => {
            // Nothing more can be done when stderr itself is gone.
            let _ = io::stderr().lock().write_all(message(error).as_bytes());
            ExitCode::from(code)
        }
    }
}

/// The exit code `error` calls for. A closed stdout ([`StdoutClosed`]) is
/// the reader's choice, not a failure: 0, and nothing is printed. Any other
/// broken pipe (a server that hung up mid-request) is a failure.
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    let mut causes = error.chain();
    if causes.clone().any(|cause| cause.is::<StdoutClosed>()) {
        0
    } else if causes.clone().any(|cause| cause.is::<Usage>()) {
        USAGE_ERROR
    } else if causes.any(|cause| cause.is::<Refused>()) {
        REFUSED_RECORDS
    } else {
        RUNTIME_FAILURE
    }
}

/// `error: <what failed>` and one `caused by:` line per cause. A cause whose
/// text the line above already contains (errors that print their source in
/// their own message) is left out.
fn message(error: &anyhow::Error) -> String {
    let mut block = String::new();
    let mut previous = String::new();
    for (depth, cause) in error.chain().enumerate() {
        let text = cause.to_string();
        if depth > 0 && previous.contains(&text) {
            continue;
        }
        let label = if depth == 0 { "error" } else { "  caused by" };
        block.push_str(&format!("{label}: {text}\n"));
        previous = text;
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_names_each_cause_once() {
        let inner = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let error = anyhow::Error::new(inner)
            .context("storage unavailable (redis): connection refused")
            .context("cannot open the store redis://127.0.0.1:1");
        assert_eq!(
            message(&error),
            "error: cannot open the store redis://127.0.0.1:1\n  \
             caused by: storage unavailable (redis): connection refused\n"
        );
    }

    #[test]
    fn usage_errors_are_told_apart() {
        assert_eq!(
            exit_code(&usage("bad").context("while reading SRC")),
            USAGE_ERROR
        );
        assert_eq!(
            exit_code(&anyhow::anyhow!("no such record")),
            RUNTIME_FAILURE
        );
        let closed = anyhow::Error::new(StdoutClosed).context("while exporting notes");
        assert_eq!(exit_code(&closed), 0);
        let refused = anyhow::Error::new(Refused("1 record".to_owned())).context("syncing");
        assert_eq!(exit_code(&refused), REFUSED_RECORDS);
        // A connection the server closed is no reader's choice.
        let hung_up = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("cannot push to http://127.0.0.1:1");
        assert_eq!(exit_code(&hung_up), RUNTIME_FAILURE);
    }
}
