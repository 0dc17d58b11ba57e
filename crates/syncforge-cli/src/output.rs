//! What commands print on stdout: the human form, or JSON with `--json`.

use std::io::{self, BufWriter, Stdout, Write};

use anyhow::Result;
use serde_json::Value;
use syncforge::Record;

use crate::failure::StdoutClosed;

/// Stdout, buffered, in the form the command line asked for.
pub(crate) struct Output {
    json: bool,
    out: BufWriter<Stdout>,
    /// Whether the command's work outlives its reader (see [`new`](Self::new)).
    keeps_working: bool,
    /// Set once the reader of a command that keeps working has gone.
    closed: bool,
}

impl Output {
    /// Stdout for a command. When its reader closes its end, a command that
    /// only reads stops there ([`StdoutClosed`], exit 0: `export | head`),
    /// but one that writes (`keeps_working`) finishes its writes and prints
    /// nothing more: stopping would leave them half done.
    pub(crate) fn new(json: bool, keeps_working: bool) -> Output {
        Output {
            json,
            out: BufWriter::new(io::stdout()),
            keeps_working,
            closed: false,
        }
    }

    /// Whether `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// One line of text.
    pub(crate) fn line(&mut self, text: &str) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = writeln!(self.out, "{text}");
        self.written(result)
    }

    /// A JSON value: pretty in the human form, one compact line with `--json`.
    pub(crate) fn value(&mut self, value: &Value) -> Result<()> {
        let text = if self.json {
            value.to_string()
        } else {
            // A `Value` always serialises; the fallback is the compact form.
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        };
        self.line(&text)
    }

    /// A record in its canonical JSON form, pretty or compact.
    pub(crate) fn record(&mut self, record: &Record) -> Result<()> {
        if self.json {
            self.line(&record.to_json_string())
        } else {
            self.value(&record.to_json())
        }
    }

    /// Pushes out what is buffered: before waiting, and at the end.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.out.flush();
        self.written(result)
    }

    /// A write to stdout as the command sees it: a reader that closed its
    /// end is [`StdoutClosed`], or nothing for a command that keeps working;
    /// anything else a failure.
    fn written(&mut self, result: io::Result<()>) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                if self.keeps_working {
                    self.closed = true;
                    Ok(())
                } else {
                    Err(anyhow::Error::new(StdoutClosed))
                }
            }
            Err(error) => Err(anyhow::Error::new(error).context("cannot write to stdout")),
        }
    }
}

/// Resolves once nothing can read this process's standard output any more:
/// the reader of its pipe went away (`syncforge watch ... | head -n 1`), or
/// its terminal hung up. A command that prints only now and then (a watch
/// of a quiet collection) would otherwise notice only when it next prints.
/// Never resolves where that cannot be told: a file, or not on Unix.
pub(crate) async fn reader_gone() {
    #[cfg(unix)]
    {
        let (gone, told) = tokio::sync::oneshot::channel();
        // A thread of its own, left blocked in `poll` until the process
        // ends: a blocking task of the runtime would hold up its shutdown.
        let watching = std::thread::Builder::new()
            .name("stdout-watch".to_owned())
            .spawn(move || {
                if hung_up(&io::stdout()) {
                    let _ = gone.send(());
                }
            });
        if watching.is_ok() && told.await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Waits until `out` reports an error or a hang-up (`poll` reports those
/// whatever it is asked for): true then, false if it cannot be waited on.
/// An invalid descriptor (`NVAL`) says nothing of a reader: macOS answers
/// that for every terminal and device it cannot poll.
#[cfg(unix)]
fn hung_up(out: &impl std::os::fd::AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [PollFd::new(out, PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) => {
                let [fd] = &fds;
                let revents = fd.revents();
                if revents.contains(PollFlags::NVAL) {
                    return false;
                }
                if revents.intersects(PollFlags::ERR | PollFlags::HUP) {
                    return true;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}
