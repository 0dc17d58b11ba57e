//! The external services the tests talk to, started for `cargo xtask ci`
//! (and `cargo xtask services`) when they are not already running, and
//! stopped afterwards — exactly what was started, nothing else.
//!
//! Each service lives in a module of its own and is described by a
//! [`Service`]: how to tell it already runs, how to start it under the
//! workspace's `target/services/` directory, and which environment variables
//! tell the tests where to find it. Tests read those variables through
//! `syncforge_testkit::services`; with `SYNCFORGE_REQUIRE_SERVICES=1` (set by
//! `cargo xtask ci`) a test whose service is unreachable fails instead of
//! skipping.

mod moto;
mod redis;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// One service the tests need.
pub(crate) trait Service {
    /// A short name for messages (`"redis"`, `"redis-cluster"`, `"s3"`).
    fn name(&self) -> &'static str;

    /// The environment variables that tell the tests where the service is,
    /// as they are when the service runs (whether started here or not).
    fn env(&self) -> Vec<(&'static str, String)>;

    /// Whether the service already answers where [`env`](Self::env) says.
    fn is_running(&self) -> bool;

    /// Starts the service, using `dir` (created, empty or not) for its files,
    /// and waits until it answers. The returned handle stops it.
    fn start(&self, dir: &Path) -> Result<Started, String>;
}

/// A service this run started: dropping it stops the service.
pub(crate) struct Started {
    name: &'static str,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Started {
    /// A started service, stopped by `stop`.
    pub(crate) fn new(name: &'static str, stop: impl FnOnce() + Send + 'static) -> Self {
        Started {
            name,
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            eprintln!("--> stopping {}", self.name);
            stop();
        }
    }
}

/// The services this run started, in the order it started them: kept where
/// the handler of an interrupting signal finds them too.
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

/// The services this run started; a panic while they were held leaves
/// them as they were.
fn started() -> std::sync::MutexGuard<'static, Vec<Started>> {
    STARTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held while services are stopped: a second caller (the main thread
/// unwinding from the command the signal also ended, while the signal's
/// handler stops them) waits until every one is stopped. Without it the
/// main thread returned from `main` while the handler was still stopping
/// the cluster, and the process ended with its nodes running.
static STOPPING: Mutex<()> = Mutex::new(());

/// Stops every service this run started, in reverse order.
fn stop_started() {
    let _stopping = STOPPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        // Taken out before it stops, so that the lock is not held meanwhile.
        let last = started().pop();
        match last {
            Some(started) => drop(started),
            None => return,
        }
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP, stops what this run started and exits:
/// otherwise the Redis servers, daemons of their own, outlive the run and
/// keep its ports. (The command running at the time gets Ctrl-C from the
/// terminal itself.)
fn stop_started_on_signals() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            eprintln!("--> interrupted: stopping the services this run started");
            stop_started();
            // And the servers of a service that was still starting.
            redis::stop_launched();
            std::process::exit(130);
        });
        if let Err(error) = installed {
            eprintln!("--> cannot stop services on interruption: {error}");
        }
    });
}

/// The services of one run: the environment for the tests; those this run
/// started are stopped when this is dropped, in reverse order.
pub(crate) struct Services {
    env: Vec<(&'static str, String)>,
}

impl Services {
    /// The environment variables to pass to the tests.
    pub(crate) fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        stop_started();
    }
}

/// Every service the tests use.
fn all() -> Vec<Box<dyn Service>> {
    vec![
        Box::new(moto::Moto),
        Box::new(redis::Standalone),
        Box::new(redis::Cluster),
    ]
}

/// Where services keep their files: `target/services/<name>`.
fn service_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/services")).join(name)
}

/// Makes every service available: those already running are used as they
/// are, the others are started. On an error, what was started is stopped.
pub(crate) fn ensure_all() -> Result<Services, String> {
    require_tools()?;
    stop_started_on_signals();
    let mut services = Services { env: Vec::new() };
    for service in all() {
        if service.is_running() {
            eprintln!("--> {} already runs; using it", service.name());
        } else {
            eprintln!("--> starting {}", service.name());
            let dir = service_dir(service.name());
            let started = service
                .start(&dir)
                .map_err(|reason| format!("could not start {}: {reason}", service.name()))?;
            self::started().push(started);
        }
        services.env.extend(service.env());
    }
    Ok(services)
}

/// Programs the tests run besides the services (certificates for the TLS
/// test, a terminal for the progress-bar test, signals for the server's):
/// checked before anything starts, so that a missing one is named at once
/// rather than by a failing test after the build.
fn require_tools() -> Result<(), String> {
    for (tool, args, install) in [
        ("openssl", &["version"][..], "apt-get install openssl"),
        ("script", &["--version"][..], "apt-get install bsdutils"),
        ("kill", &["-l"][..], "apt-get install procps"),
        // Bounds each redis-cli check.
        ("timeout", &["--version"][..], "apt-get install coreutils"),
    ] {
        let found = std::process::Command::new(tool)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            return Err(format!(
                "`{tool}` not found; the tests run it (Debian: {install})"
            ));
        }
    }
    Ok(())
}

/// `cargo xtask services`: starts what is missing, prints the variables to
/// export for a plain `cargo test`, and stops what it started on Enter.
pub(crate) fn run_in_foreground() -> Result<(), String> {
    let services = ensure_all()?;
    println!("# services are up; in another shell:");
    for (name, value) in services.env() {
        println!("export {name}='{value}'");
    }
    println!("# press Enter to stop the services this command started");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    drop(services);
    Ok(())
}
