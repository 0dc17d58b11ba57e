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
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output {
            json,
            out: BufWriter::new(io::stdout()),
        }
    }

    /// Whether `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// One line of text.
    pub(crate) fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").map_err(written)
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
        self.out.flush().map_err(written)
    }
}

/// A failed write to stdout as the command reports it: a reader that closed
/// its end is [`StdoutClosed`], anything else a failure.
fn written(error: io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(error).context("cannot write to stdout")
    }
}
