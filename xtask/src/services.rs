//! External services the test suite needs (a database server, an object
//! store), kept running for the duration of the test step of `cargo xtask ci`.
//!
//! Tests that need such a service skip themselves when it is unreachable,
//! unless `SYNCFORGE_REQUIRE_SERVICES=1` (which `ci` sets) turns that into a
//! failure. So `ci` has to provide every service a test needs:
//! [`start_needed`] starts each one that is not already running, and dropping
//! the returned [`Services`] stops exactly the processes it started, never a
//! server the developer already had running.

use std::process::Child;

/// The service processes xtask started; dropping this stops them.
#[derive(Default)]
pub(crate) struct Services {
    started: Vec<Child>,
}

/// Starts what the tests need and is not already running.
///
/// No test needs an external service yet, so nothing is started.
pub(crate) fn start_needed() -> Services {
    Services::default()
}

impl Drop for Services {
    fn drop(&mut self) {
        for process in &mut self.started {
            eprintln!("--> stopping service process {}", process.id());
            // Best effort: the process may have exited on its own, and a
            // failure to stop it must not mask the outcome of the tests.
            if let Err(error) = process.kill() {
                eprintln!("xtask: could not stop process {}: {error}", process.id());
            }
            let _reaped = process.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_services_stops_the_processes_xtask_started() {
        let process = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let proc_entry = std::path::PathBuf::from(format!("/proc/{}", process.id()));
        assert!(proc_entry.exists());

        drop(Services {
            started: vec![process],
        });

        // Killed and reaped: the process table no longer has it.
        assert!(!proc_entry.exists());
    }
}
