//! Project automation for syncforge, run as `cargo xtask <command>` from
//! anywhere in the workspace (the alias lives in `.cargo/config.toml`).
//!
//! * `ci` — everything CI checks, in order, stopping at the first failure.
//! * `deny` — the offline `cargo deny` checks (bans, licenses, sources).
//! * `bench` — the benchmarks, summed up in one table against the targets.
//! * `services` — the test services, in the foreground until Enter.
//!
//! Plain `std` is enough here: three commands do not earn an argument parser.

// A command-line tool talks to its user through stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod ci;
mod cmd;
mod deny;
mod services;

use std::process::ExitCode;

const HELP: &str = "\
Project automation for syncforge.

Usage: cargo xtask <COMMAND>

Commands:
  ci     Run every CI check: fmt, clippy, docs, feature combinations (each
         without warnings) of the facade, the Redis store, the HTTP crate
         and the CLI,
         then the workspace tests (doc tests included). Stops at the first
         failing step. Sets SYNCFORGE_REQUIRE_SERVICES=1, and PROPTEST_CASES=4000
         unless it is already set.
  deny   Run `cargo deny check bans licenses sources` (needs cargo-deny).
  bench  Run the benchmarks (core workloads, peak memory, filesystem backend,
         Redis and S3 backends against the test servers, which it starts if
         needed, peers) and print a table of medians against the targets.
         `--quick` runs few samples and skips the peers (everyday use);
         without it, enough for numbers worth reporting. glibc's malloc
         is backed by transparent huge pages for the runs
         (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, unless GLIBC_TUNABLES is
         set); `--default-malloc` measures with malloc as it comes.
         `--profile ROW` records a callgrind profile of one W1-W3 row
         (w1_put, w2_sync_empty, w3_sync_crdt, each also _10k or _1m), of
         one of their floors (baseline_put, baseline_lookup, likewise) or
         of twenty rounds of W4 or of its floor (w4_incremental or
         baseline_replace, each _1k or _1m) and prints its instructions
         per record; `--profile ROW --cache` also simulates a 32 MiB
         last-level cache and prints the lines read from and written to
         memory per record.
  services
         Start the services the tests need (a standalone Redis on port 6391,
         a 3-master Redis Cluster on 7001-7003, moto as the S3-compatible
         server) unless they already run,
         print the variables to export for a plain `cargo test`, and stop
         what was started when Enter is pressed.
  help   Print this help.
";

/// A command given on the command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Ci,
    Deny,
    Bench {
        quick: bool,
        /// Whether glibc's malloc is asked for transparent huge pages.
        huge_pages: bool,
    },
    /// `bench --profile ROW [--cache]`: a callgrind profile of one
    /// workload row.
    Profile {
        row: String,
        /// Whether the profile simulates the cache (`--cache`).
        cache: bool,
    },
    Services,
    Help,
}

/// Why the command line was not understood.
#[derive(Debug, PartialEq, Eq)]
enum UsageError {
    MissingCommand,
    UnknownCommand(String),
    UnexpectedArgument {
        command: &'static str,
        argument: String,
    },
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsageError::MissingCommand => write!(f, "no command given"),
            UsageError::UnknownCommand(name) => write!(f, "unknown command `{name}`"),
            UsageError::UnexpectedArgument { command, argument } => {
                write!(f, "`{command}` does not take `{argument}`")
            }
        }
    }
}

fn parse(args: &[String]) -> Result<Command, UsageError> {
    let (first, rest) = args.split_first().ok_or(UsageError::MissingCommand)?;
    let (command, name) = match (first.as_str(), rest) {
        ("bench", [flag, row, options @ ..])
            if flag == "--profile" && (options.is_empty() || options == ["--cache"]) =>
        {
            return Ok(Command::Profile {
                row: row.clone(),
                cache: !options.is_empty(),
            })
        }
        ("bench", flags) => return bench_flags(flags),
        ("ci", _) => (Command::Ci, "ci"),
        ("deny", _) => (Command::Deny, "deny"),
        ("services", _) => (Command::Services, "services"),
        ("help" | "-h" | "--help", _) => return Ok(Command::Help),
        (other, _) => return Err(UsageError::UnknownCommand(other.to_owned())),
    };
    match rest.first() {
        Some(argument) => Err(UsageError::UnexpectedArgument {
            command: name,
            argument: argument.clone(),
        }),
        None => Ok(command),
    }
}

/// `bench`'s flags, `--quick` and `--default-malloc`, each at most once.
fn bench_flags(flags: &[String]) -> Result<Command, UsageError> {
    let (mut quick, mut huge_pages) = (false, true);
    for flag in flags {
        match flag.as_str() {
            "--quick" if !quick => quick = true,
            "--default-malloc" if huge_pages => huge_pages = false,
            _ => {
                return Err(UsageError::UnexpectedArgument {
                    command: "bench",
                    argument: flag.clone(),
                })
            }
        }
    }
    Ok(Command::Bench { quick, huge_pages })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("xtask: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        Command::Help => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Command::Ci => ci::run(),
        Command::Deny => deny::run(),
        Command::Bench { quick, huge_pages } => bench::run(quick, huge_pages),
        Command::Profile { row, cache } => bench::profile(&row, cache),
        Command::Services => services::run_in_foreground(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn known_commands_parse() {
        assert_eq!(parse(&args(&["ci"])), Ok(Command::Ci));
        assert_eq!(parse(&args(&["deny"])), Ok(Command::Deny));
        assert_eq!(parse(&args(&["services"])), Ok(Command::Services));
        assert_eq!(
            parse(&args(&["bench"])),
            Ok(Command::Bench {
                quick: false,
                huge_pages: true
            })
        );
        assert_eq!(
            parse(&args(&["bench", "--quick"])),
            Ok(Command::Bench {
                quick: true,
                huge_pages: true
            })
        );
        assert_eq!(
            parse(&args(&["bench", "--default-malloc", "--quick"])),
            Ok(Command::Bench {
                quick: true,
                huge_pages: false
            })
        );
        assert_eq!(
            parse(&args(&["bench", "--profile", "w3_sync_crdt"])),
            Ok(Command::Profile {
                row: "w3_sync_crdt".to_owned(),
                cache: false
            })
        );
        assert_eq!(
            parse(&args(&[
                "bench",
                "--profile",
                "baseline_put_10k",
                "--cache"
            ])),
            Ok(Command::Profile {
                row: "baseline_put_10k".to_owned(),
                cache: true
            })
        );
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
    }

    #[test]
    fn unknown_or_missing_command_is_a_usage_error() {
        assert_eq!(parse(&[]), Err(UsageError::MissingCommand));
        assert_eq!(
            parse(&args(&["bench-all"])),
            Err(UsageError::UnknownCommand("bench-all".to_owned()))
        );
    }

    #[test]
    fn stray_arguments_are_refused_not_ignored() {
        assert_eq!(
            parse(&args(&["bench", "--fast"])),
            Err(UsageError::UnexpectedArgument {
                command: "bench",
                argument: "--fast".to_owned()
            })
        );
        assert_eq!(
            parse(&args(&["bench", "--quick", "--quick"])),
            Err(UsageError::UnexpectedArgument {
                command: "bench",
                argument: "--quick".to_owned()
            })
        );
        assert_eq!(
            parse(&args(&["bench", "--profile", "w1_put", "--quick"])),
            Err(UsageError::UnexpectedArgument {
                command: "bench",
                argument: "--profile".to_owned()
            })
        );
        assert_eq!(
            parse(&args(&["ci", "--quick"])),
            Err(UsageError::UnexpectedArgument {
                command: "ci",
                argument: "--quick".to_owned()
            })
        );
    }
}
