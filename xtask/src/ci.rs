//! `cargo xtask ci`: every check CI runs, in order, stopping at the first
//! failure. `.ci/run` runs exactly this, so a green local run means a green CI.

use std::ffi::OsString;
use std::time::Instant;

use crate::cmd::Cargo;
use crate::services;

/// Services are required in every `ci` run, whatever the caller's
/// environment says: a test that needs a missing one fails instead of
/// skipping (`ci` starts those that are not running, see [`services`]).
const REQUIRE_SERVICES: (&str, &str) = ("SYNCFORGE_REQUIRE_SERVICES", "1");

/// Cases per property test unless the caller set a count: more than a plain
/// `cargo test` runs (1,000 for the core crate's properties, proptest's 256
/// for the others).
const PROPTEST_CASES: (&str, &str) = ("PROPTEST_CASES", "4000");

/// A named group of commands that pass or fail together.
struct Step {
    name: &'static str,
    commands: Vec<Cargo>,
    /// Whether the commands talk to external services (started first).
    needs_services: bool,
}

fn steps(test_env: &[(&'static str, OsString)]) -> Vec<Step> {
    let with_env = |command: Cargo| {
        test_env
            .iter()
            .fold(command.locked(), |command, (name, value)| {
                command.env(name, value.clone())
            })
    };
    // Plain `cargo test` runs unit, integration and doc tests alike.
    let tests = with_env(Cargo::new(&["test", "--workspace", "--all-features"]));
    // Any crate of a program can turn on serde_json's `preserve_order` or
    // `arbitrary_precision`, and Cargo then turns it on for every crate:
    // serde_json's map then keeps insertion order, and its numbers their
    // text (`-0` an integer), neither of which the canonical form may follow.
    let other_serde_json_builds = with_env(Cargo::new(&[
        "test",
        "-p",
        "syncforge-core",
        "--features",
        "serde_json/preserve_order,serde_json/arbitrary_precision",
    ]));
    vec![
        Step {
            name: "fmt",
            commands: vec![Cargo::new(&["fmt", "--all", "--", "--check"])],
            needs_services: false,
        },
        Step {
            name: "clippy",
            commands: vec![Cargo::new(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])
            .locked()],
            needs_services: false,
        },
        Step {
            // Rustdoc's own lints (broken links, bad code blocks) are errors,
            // on every feature, as docs.rs would build the crates.
            name: "docs",
            commands: vec![
                Cargo::new(&["doc", "--workspace", "--no-deps", "--all-features"])
                    .locked()
                    .env("RUSTDOCFLAGS", "-D warnings".into()),
            ],
            needs_services: false,
        },
        Step {
            // Each feature set must build on its own, without warnings (code
            // used only under another feature is dead here), not only the
            // union `--all-features` that clippy and the tests see. Library
            // and binary targets only (cargo's default): the tests'
            // dev-dependencies turn the features back on.
            name: "feature combinations",
            commands: [
                &["-p", "syncforge", "--no-default-features"][..],
                &[
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--features",
                    "fs",
                ],
                &[
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--features",
                    "redis",
                ],
                &[
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--features",
                    "s3",
                ],
                &[
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--features",
                    "http-server",
                ],
                &[
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--features",
                    "http-client",
                ],
                &["-p", "syncforge"],
                &["-p", "syncforge-backend-redis", "--no-default-features"],
                &["-p", "syncforge-http", "--no-default-features"],
                &[
                    "-p",
                    "syncforge-http",
                    "--no-default-features",
                    "--features",
                    "client",
                ],
                &[
                    "-p",
                    "syncforge-http",
                    "--no-default-features",
                    "--features",
                    "server",
                ],
                &["-p", "syncforge-cli", "--no-default-features"],
                &[
                    "-p",
                    "syncforge-cli",
                    "--no-default-features",
                    "--features",
                    "fs",
                ],
                &[
                    "-p",
                    "syncforge-cli",
                    "--no-default-features",
                    "--features",
                    "fs,http",
                ],
                // The shared suite, as a backend crate outside this
                // workspace depends on it (it used `tokio::join!` without
                // the feature that defines it).
                &["-p", "syncforge-testkit"],
            ]
            .into_iter()
            .map(|combination| {
                Cargo::new(&[&["clippy"][..], combination, &["--", "-D", "warnings"]].concat())
                    .locked()
            })
            .collect(),
            needs_services: false,
        },
        Step {
            name: "tests (unit, integration, doc)",
            commands: vec![
                tests,
                other_serde_json_builds,
                // The facade's unit tests, engine tests and doc examples once
                // more with only the memory backend, as `cargo test -p
                // syncforge` builds it: what a build without a backend's
                // feature says about that backend (FeatureDisabled, naming
                // the feature), and the tests written for such a build.
                // (Cargo runs doc tests alone or not at all.)
                with_env(memory_only_facade(&["--lib", "--test", "engine"])),
                with_env(memory_only_facade(&["--doc"])),
                // The tests written for a build without the memory backend
                // (a `memory:` URL names its feature), and for a CLI
                // without the s3 and redis backends (a URL of a kind not
                // built in names its feature), by its exact name. Compiled
                // by no other step.
                with_env(Cargo::new(&[
                    "test",
                    "-p",
                    "syncforge",
                    "--no-default-features",
                    "--lib",
                ])),
                with_env(Cargo::new(&[
                    "test",
                    "-p",
                    "syncforge-cli",
                    "--no-default-features",
                    "--features",
                    "fs,http",
                    "--test",
                    "cli",
                    "--",
                    "--exact",
                    "errors::a_kind_not_built_in_names_its_feature",
                ])),
            ],
            needs_services: true,
        },
    ]
}

/// `cargo test` of the facade's `targets` with only the memory backend.
fn memory_only_facade(targets: &[&'static str]) -> Cargo {
    let facade = [
        "test",
        "-p",
        "syncforge",
        "--no-default-features",
        "--features",
        "memory",
    ];
    Cargo::new(&[&facade[..], targets].concat())
}

/// The test environment: services required, and the property cases that
/// `lookup` finds set, or the default. Cases that are not a positive number
/// are refused: with none, every property would pass without a case run.
fn test_env(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(&'static str, OsString)>, String> {
    let (require, required) = REQUIRE_SERVICES;
    let (cases, default_cases) = PROPTEST_CASES;
    let chosen = lookup(cases).unwrap_or_else(|| default_cases.into());
    // Passed on as read here: the tests would not read " 100000" at all.
    let count = chosen
        .to_str()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&count| count > 0);
    let Some(count) = count else {
        return Err(format!(
            "{cases}={chosen:?}: give a positive number of cases (every property would pass \
             with none run), or leave it unset for {default_cases}"
        ));
    };
    Ok(vec![
        (require, required.into()),
        (cases, count.to_string().into()),
    ])
}

/// Runs every step; the error names the step that failed and why.
pub(crate) fn run() -> Result<(), String> {
    let started = Instant::now();
    let steps = steps(&test_env(|name| std::env::var_os(name))?);
    let total = steps.len();
    // Started before the first step that needs them, stopped when `run` returns.
    let mut running: Option<services::Services> = None;
    for (index, step) in steps.into_iter().enumerate() {
        let number = index + 1;
        eprintln!("\n==> [{number}/{total}] {}", step.name);
        if step.needs_services && running.is_none() {
            running = Some(services::ensure_all().map_err(|reason| {
                format!("ci step {number}/{total} ({}) failed: {reason}", step.name)
            })?);
        }
        for mut command in step.commands {
            if step.needs_services {
                for (name, value) in running.iter().flat_map(services::Services::env) {
                    command = command.env(name, value.into());
                }
            }
            eprintln!("--> {command}");
            command.run().map_err(|reason| {
                format!("ci step {number}/{total} ({}) failed: {reason}", step.name)
            })?;
        }
    }
    eprintln!(
        "\n==> xtask ci: all {total} steps passed in {}s",
        started.elapsed().as_secs()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_env_fills_in_defaults() {
        let env = test_env(|_| None).unwrap();
        assert_eq!(
            env,
            vec![
                ("SYNCFORGE_REQUIRE_SERVICES", OsString::from("1")),
                ("PROPTEST_CASES", OsString::from("4000")),
            ]
        );
    }

    #[test]
    fn test_env_keeps_the_callers_cases_but_always_requires_services() {
        let env = test_env(|name| match name {
            "PROPTEST_CASES" => Some(OsString::from("100000")),
            _ => Some(OsString::from("0")),
        })
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("SYNCFORGE_REQUIRE_SERVICES", OsString::from("1")),
                ("PROPTEST_CASES", OsString::from("100000")),
            ]
        );
    }

    #[test]
    fn cases_are_passed_on_as_read() {
        let env = test_env(|name| (name == "PROPTEST_CASES").then(|| " 100000 ".into())).unwrap();
        assert_eq!(env[1], ("PROPTEST_CASES", OsString::from("100000")));
    }

    #[test]
    fn no_cases_or_no_number_of_cases_is_refused() {
        for cases in ["0", "", "many", "-3"] {
            let refused = test_env(|name| (name == "PROPTEST_CASES").then(|| cases.into()));
            assert!(refused.is_err(), "{cases:?}");
        }
    }

    #[test]
    fn lint_and_test_steps_cover_the_whole_workspace() {
        let steps = steps(&test_env(|_| None).unwrap());
        let shown: Vec<String> = steps
            .iter()
            .flat_map(|step| step.commands.iter().map(ToString::to_string))
            .collect();
        assert!(shown.contains(&"cargo fmt --all -- --check".to_owned()));
        assert!(shown.contains(
            &"cargo clippy --locked --workspace --all-targets --all-features -- -D warnings"
                .to_owned()
        ));
        assert!(shown.contains(
            &"SYNCFORGE_REQUIRE_SERVICES=1 PROPTEST_CASES=4000 cargo test --locked --workspace --all-features"
                .to_owned()
        ));
        assert!(shown.contains(
            &"SYNCFORGE_REQUIRE_SERVICES=1 PROPTEST_CASES=4000 cargo test --locked -p syncforge-core \
              --features serde_json/preserve_order,serde_json/arbitrary_precision"
                .to_owned()
        ));
        // The tests that only a build without a backend's feature compiles.
        for without in [
            "-p syncforge --no-default-features --lib",
            "-p syncforge-cli --no-default-features --features fs,http --test cli",
        ] {
            assert!(
                shown
                    .iter()
                    .any(|command| command.contains("cargo test") && command.contains(without)),
                "{without}: {shown:?}"
            );
        }
    }
}
