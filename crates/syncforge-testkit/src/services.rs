//! Finding the external services a backend's tests talk to (a Redis server,
//! an S3-compatible endpoint), and skipping or failing when one is missing.
//!
//! Tests name a service by an environment variable holding its address
//! (`cargo xtask ci` sets them for the services it starts) with a default
//! for a developer's machine. When the service does not answer:
//!
//! * with `SYNCFORGE_REQUIRE_SERVICES=1` (set by `cargo xtask ci`) the test
//!   fails, naming the service and the variable;
//! * otherwise the test prints a visible `SKIPPED` line on stderr and
//!   returns, so a plain `cargo test` passes on a machine without services.
//!
//! ```no_run
//! use syncforge_testkit::services::{address, available};
//!
//! # async fn probe(_: &str) -> bool { true }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let url = address("SYNCFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
//! if !available("redis", "SYNCFORGE_TEST_REDIS_URL", &url, probe(&url).await) {
//!     return; // skipped, and said so
//! }
//! // ... talk to the server at `url`
//! # }
//! ```

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variable that turns a missing service from a skip into a failure.
pub const REQUIRE_SERVICES_ENV: &str = "SYNCFORGE_REQUIRE_SERVICES";

/// The address of a service: the value of `variable`, or `default` when it
/// is unset or empty.
pub fn address(variable: &str, default: &str) -> String {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether something listens at the host and port of `endpoint`, an
/// `http://` or `https://` URL (a host name resolved, and the scheme's port
/// taken when it names none), each address given 2 seconds to answer.
/// Blocks its thread that long at most an address.
pub fn listens(endpoint: &str) -> bool {
    let (rest, default_port) = match endpoint.strip_prefix("https://") {
        Some(rest) => (rest, 443),
        None => (endpoint.strip_prefix("http://").unwrap_or(endpoint), 80),
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let addresses = host
        .to_socket_addrs()
        .or_else(|_| (host, default_port).to_socket_addrs());
    addresses.is_ok_and(|mut addresses| {
        addresses
            .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok())
    })
}

/// What `program --version` prints, when the program is there and
/// answers; `None` otherwise. Tests that start a server of their own (a
/// private `redis-server`) ask first whether its binary is installed.
pub fn version_of(program: &str) -> Option<String> {
    let output = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether services are required: `SYNCFORGE_REQUIRE_SERVICES` set to
/// anything but nothing, `0`, `false` or `no`. A value meant as "yes"
/// (`true`, `1 `) must not let a missing service skip its tests unseen.
pub fn required() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|value| means_yes(&value))
}

/// Whether a setting's value asks for it (see [`required`]).
fn means_yes(value: &str) -> bool {
    let value = value.trim();
    !(value.is_empty()
        || value == "0"
        || value.eq_ignore_ascii_case("false")
        || value.eq_ignore_ascii_case("no"))
}

/// Decides what a test does about service `name` at `address` (taken from
/// `variable`), given whether it answered a probe: returns `true` when the
/// test can go on; prints a skip line and returns `false` when it should
/// return early.
///
/// # Panics
///
/// When the service did not answer and services are [`required`].
pub fn available(name: &str, variable: &str, address: &str, answered: bool) -> bool {
    if answered {
        return true;
    }
    assert!(
        !required(),
        "{name} is required ({REQUIRE_SERVICES_ENV}=1) but does not answer at {address}; \
         start it (`cargo xtask ci` starts it itself) or point {variable} at one"
    );
    // Written to the process's stderr itself: the test harness captures
    // `eprintln!` and shows it only for a failing test, and a skip passes.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name} does not answer at {address} (set {variable}, or run `cargo xtask ci`, \
         which starts it)"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::{listens, means_yes};

    /// An endpoint named by host name was never probed (only addresses
    /// parsed): an S3 server at `localhost` was reported as not answering.
    #[test]
    fn an_endpoint_is_probed_by_host_name_or_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for endpoint in [
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}/"),
            format!("https://localhost:{port}/bucket"),
        ] {
            assert!(listens(&endpoint), "{endpoint}");
        }
        // Port 0 is never listened at; a freed port may be taken again.
        assert!(!listens("http://127.0.0.1:0"));
    }

    #[test]
    fn a_require_setting_meant_as_yes_requires() {
        for yes in ["1", "true", "TRUE", "yes", "1 ", "on"] {
            assert!(means_yes(yes), "{yes:?}");
        }
        for no in ["", " ", "0", "false", "False", "no"] {
            assert!(!means_yes(no), "{no:?}");
        }
    }
}
