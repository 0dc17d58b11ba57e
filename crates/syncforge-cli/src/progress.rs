//! Progress bars on stderr, drawn only when stderr is a terminal, fed by the
//! engine's `sync:progress` events.

use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use parking_lot::Mutex;
use syncforge::{EventKind, ListenerId, SyncEngine, SyncEvent};

/// Draws bars or not, for the whole command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    enabled: bool,
}

impl Progress {
    /// Bars are drawn when stderr is a terminal and `--no-progress` was not given.
    pub(crate) fn new(no_progress: bool) -> Progress {
        Progress {
            enabled: !no_progress && std::io::stderr().is_terminal(),
        }
    }

    /// Whether bars are drawn: work done only for a bar (counting what a
    /// sync will send) is skipped otherwise.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// A bar for `label`, `total` records long, or a counter when the total
    /// is not known; a hidden one when bars are off.
    pub(crate) fn bar(&self, label: &str, total: Option<u64>) -> Bar {
        if !self.enabled {
            return Bar {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{prefix:>16} [{bar:30}] {pos}/{len} records  {rate}  ETA {eta}"
        } else {
            "{prefix:>16} {pos} records  {rate}"
        };
        // The templates are constants: they parse, and the default is a fine fallback.
        let style = ProgressStyle::with_template(template)
            .map(|style| {
                style.progress_chars("=> ").with_key(
                    "rate",
                    |state: &ProgressState, out: &mut dyn fmt::Write| {
                        // Whole records per second; nothing to do when the terminal is gone.
                        let _ = write!(out, "{:.0}/s", state.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        Bar { bar }
    }
}

/// One collection's bar (hidden when bars are off).
#[derive(Clone)]
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// `count` more records done; the bar grows when the work outgrows the
    /// estimate it started with.
    pub(crate) fn advance(&self, count: u64) {
        let position = self.bar.position() + count;
        if self.bar.length().is_some_and(|length| position > length) {
            self.bar.set_length(position);
        }
        self.bar.set_position(position);
    }

    /// The work is done: the bar shows it complete and stays on screen.
    pub(crate) fn finish(&self) {
        if let Some(length) = self.bar.length() {
            self.bar.set_position(length);
        }
        self.bar.finish();
    }

    /// The work failed: the bar stays where it was.
    pub(crate) fn abandon(&self) {
        self.bar.abandon();
    }

    /// Moves the bar on each batch `engine` applies while the returned guard
    /// lives.
    pub(crate) fn follow(&self, engine: &SyncEngine) -> Following {
        // Each sync reports `done` from its own start: remember where the
        // current one is, reset when the next one starts.
        let done_in_sync = Arc::new(Mutex::new(0usize));
        let reset = done_in_sync.clone();
        let events = engine.events();
        let started = events.on(EventKind::SyncStart, move |_| *reset.lock() = 0);
        let bar = self.clone();
        let progressed = events.on(EventKind::SyncProgress, move |event| {
            if let SyncEvent::SyncProgress { done, .. } = event {
                let mut seen = done_in_sync.lock();
                bar.advance(done.saturating_sub(*seen) as u64);
                *seen = *done;
            }
        });
        Following {
            engine: engine.clone(),
            listeners: vec![started, progressed],
        }
    }
}

/// Event handlers on an engine, removed when this is dropped.
pub(crate) struct Following {
    engine: SyncEngine,
    listeners: Vec<ListenerId>,
}

impl Following {
    /// Handlers on `engine`, removed when the result is dropped.
    pub(crate) fn new(engine: &SyncEngine, listeners: Vec<ListenerId>) -> Following {
        Following {
            engine: engine.clone(),
            listeners,
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        for id in self.listeners.drain(..) {
            self.engine.events().off(id);
        }
    }
}
