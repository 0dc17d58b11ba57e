//! Running cargo the way every xtask command needs it: from the workspace
//! root, with the same cargo that runs xtask, output streamed to the terminal.

use std::ffi::OsString;
use std::fmt;
use std::process::Command;

/// The workspace root, so commands behave the same from any subdirectory.
const WORKSPACE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// One cargo invocation, shown to the user exactly as it is run.
pub(crate) struct Cargo {
    args: Vec<String>,
    envs: Vec<(&'static str, OsString)>,
}

impl Cargo {
    /// `cargo <args>`.
    pub(crate) fn new(args: &[&'static str]) -> Self {
        Cargo {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            envs: Vec::new(),
        }
    }

    /// Refuses to run when `Cargo.lock` is out of date, instead of updating
    /// it (`--locked`, right after the subcommand): a lockfile that does
    /// not match the manifests fails CI instead of being resolved anew.
    pub(crate) fn locked(mut self) -> Self {
        let at = self.args.len().min(1);
        self.args.insert(at, "--locked".to_owned());
        self
    }

    /// Appends an argument made at run time.
    pub(crate) fn arg(mut self, arg: String) -> Self {
        self.args.push(arg);
        self
    }

    /// Sets an environment variable for this invocation only.
    pub(crate) fn env(mut self, name: &'static str, value: OsString) -> Self {
        self.envs.push((name, value));
        self
    }

    /// Runs to completion; the error says what was run and how it ended.
    pub(crate) fn run(&self) -> Result<(), String> {
        // `CARGO` is set when xtask runs through `cargo xtask`, and using it
        // keeps the toolchain the user picked (rustup override, `+nightly`).
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let status = Command::new(cargo)
            .args(&self.args)
            .envs(self.envs.iter().map(|(name, value)| (name, value)))
            .current_dir(WORKSPACE_ROOT)
            .status()
            .map_err(|error| format!("could not start `{self}`: {error}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{self}` failed ({status})"))
        }
    }
}

impl fmt::Display for Cargo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.envs {
            write!(f, "{name}={} ", value.to_string_lossy())?;
        }
        write!(f, "cargo {}", self.args.join(" "))
    }
}
