//! The signals that stop a long-running command (`serve`, `watch`).

use anyhow::{Context as _, Result};

/// Ctrl-C, or on Unix also SIGTERM (what service managers send), listened
/// for from [`listen`](Self::listen) on.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    // Held for the command's life: on Windows a Ctrl-C that finds no
    // listener alive ends the process, as one between two waits would.
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl StopSignals {
    /// Starts listening: a signal from now on ends the process no more,
    /// and is kept for [`next`](Self::next).
    pub(crate) fn listen() -> Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt()).context("cannot wait for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot wait for SIGTERM")?,
            })
        }
        #[cfg(windows)]
        Ok(StopSignals {
            ctrl_c: tokio::signal::windows::ctrl_c().context("cannot wait for Ctrl-C")?,
        })
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(windows)]
        self.ctrl_c.recv().await;
        Ok(())
    }
}
