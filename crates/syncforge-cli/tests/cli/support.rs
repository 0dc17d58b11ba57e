//! Running the binary and reading what it printed.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use syncforge_testkit::processes;

/// What one run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts success and returns the run.
    #[track_caller]
    pub(crate) fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Asserts the exit code and returns the run.
    #[track_caller]
    pub(crate) fn fails(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        self
    }

    /// Stdout as JSON Lines.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Stdout as one JSON value.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap()
    }
}

/// The binary, without the environment variables it reads.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncforge"));
    // The variables the binary reads, unset: a developer's own token or
    // log level must not change what the tests see.
    command
        .args(args)
        .env_remove("SYNCFORGE_CLIENT_ID")
        .env_remove("SYNCFORGE_TOKEN")
        .env_remove("SYNCFORGE_LOG");
    command
}

/// Runs the binary with `args` and no input.
pub(crate) fn syncforge(args: &[&str]) -> Run {
    syncforge_with(args, "")
}

/// Runs the binary with `args`, `stdin` on its standard input.
pub(crate) fn syncforge_with(args: &[&str], stdin: &str) -> Run {
    run(command(args), stdin)
}

/// Runs the binary with `args` and the environment variables `env`.
pub(crate) fn syncforge_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = command(args);
    command.envs(env.iter().copied());
    run(command, "")
}

/// `command` started with `stdin` written to its standard input, which is
/// then closed, and its stdout and stderr piped.
pub(crate) fn spawned(mut command: Command, stdin: &str) -> Child {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    match input.write_all(stdin.as_bytes()) {
        // A command may end without reading its input (a usage error found
        // first), closing its end of the pipe before this write.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    drop(input);
    child
}

/// Runs `command` (made by [`command`]) to its end, with no input.
pub(crate) fn run_command(command: Command) -> Run {
    run(command, "")
}

/// Runs `command` to its end, `stdin` on its standard input.
fn run(command: Command, stdin: &str) -> Run {
    let child = spawned(command, stdin);
    // No command of these tests runs near this long; a hung one is killed.
    let output = processes::finish(child, Duration::from_secs(120)).unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs the shell command line `line` on a pseudo-terminal (script(1),
/// from util-linux, whose `-e` passes the exit code on), within the bound
/// every run has: its stdout holds what the terminal showed.
pub(crate) fn on_a_terminal(line: &str) -> Run {
    let mut script = Command::new("script");
    script
        .args(["-qec", line, "/dev/null"])
        .env_remove("SYNCFORGE_CLIENT_ID");
    let run = run(script, "");
    // 127: no script(1) on this machine.
    assert_ne!(
        run.code, 127,
        "script(1) runs the command on a terminal: {run:?}"
    );
    run
}

/// A path argument.
pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `n` JSON Lines documents `{"id": "<prefix><i>", "n": i}`.
pub(crate) fn docs(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"id\": \"{prefix}{i:05}\", \"n\": {i}}}\n"))
        .collect()
}

/// The export of a collection.
pub(crate) fn export(store: &Path, collection: &str) -> String {
    syncforge(&["export", arg(store), collection]).ok().stdout
}

/// The counts of a summary line printed with `--json`.
pub(crate) fn counts(line: &Value) -> [u64; 5] {
    ["added", "updated", "deleted", "unchanged", "conflicts"].map(|key| line[key].as_u64().unwrap())
}

/// The binary started with `args` (a watch), the first line it said on
/// stderr (where it starts), and the rest of its stderr, kept open.
pub(crate) fn watching(
    args: &[&str],
) -> (Child, String, std::io::BufReader<std::process::ChildStderr>) {
    let mut watcher = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (said, stderr) = syncforge_testkit::processes::read_line(
        std::io::BufReader::new(watcher.stderr.take().unwrap()),
        Duration::from_secs(60),
    )
    .unwrap();
    (watcher, said, stderr)
}

/// Stops `child` as a service manager does (SIGTERM), and waits for it;
/// one that does not stop within a minute fails here, killed.
pub(crate) fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    processes::wait(child, Duration::from_secs(60)).unwrap()
}

/// A child process killed if its test ends early (a watch would otherwise
/// go on retrying for good, a server go on running).
#[cfg(any(feature = "http", feature = "redis"))]
pub(crate) struct KilledOnDrop(pub(crate) Option<Child>);

#[cfg(any(feature = "http", feature = "redis"))]
impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
