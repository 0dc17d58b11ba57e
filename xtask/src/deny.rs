//! `cargo xtask deny`: the dependency policy in `deny.toml`.
//!
//! Only the checks that work offline run here. The advisories check fetches
//! the RustSec database from GitHub, which not every build machine can reach;
//! run `cargo deny check advisories` where it can.

use crate::cmd::Cargo;

/// Runs `cargo deny check bans licenses sources`, or explains how to install
/// cargo-deny when it is missing.
pub(crate) fn run() -> Result<(), String> {
    // Asking cargo itself finds cargo-deny wherever cargo would (PATH or
    // $CARGO_HOME/bin), so this check agrees with the real run below.
    if Cargo::new(&["deny", "--version"]).run().is_err() {
        return Err("cargo-deny is not installed; install it with \
                    `cargo install --locked cargo-deny` and run `cargo xtask deny` again"
            .to_owned());
    }
    let check = Cargo::new(&["deny", "check", "bans", "licenses", "sources"]);
    eprintln!("==> {check}");
    check.run()
}
