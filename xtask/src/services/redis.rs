//! Redis for the tests of `syncforge-backend-redis`: a standalone server on a
//! port of its own and a 3-master Redis Cluster on loopback, both run from
//! the system's `redis-server` and `redis-cli`.
//!
//! The machine's own Redis on 6379 is never used here: tests of a shared
//! server must not flush it, and these servers are ours to start, stop and
//! throw away. Each server keeps its files (pid file, log, cluster nodes
//! file) in a directory of its own under `target/services/`; nothing is
//! persisted (`--save '' --appendonly no`). Stopping sends SIGTERM to
//! exactly the PIDs their pid files name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{Service, Started};

/// Port of the standalone test server.
const STANDALONE_PORT: u16 = 6391;
/// Ports of the cluster's masters (their cluster bus is on port + 10000).
const CLUSTER_PORTS: [u16; 3] = [7001, 7002, 7003];
/// How long a server may take to answer, a cluster to agree.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `redis-cli --cluster create` may take, as `timeout` reads it.
const CLUSTER_CREATE_LIMIT: &str = "60s";

/// The standalone server: `SYNCFORGE_TEST_REDIS_URL`.
pub(crate) struct Standalone;

/// The 3-master cluster: `SYNCFORGE_TEST_REDIS_CLUSTER_URL`.
pub(crate) struct Cluster;

impl Service for Standalone {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "SYNCFORGE_TEST_REDIS_URL",
            format!("redis://127.0.0.1:{STANDALONE_PORT}/0"),
        )]
    }

    fn is_running(&self) -> bool {
        cli(STANDALONE_PORT, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
    }

    fn start(&self, dir: &Path) -> Result<Started, String> {
        require_binaries()?;
        let server = start_server(dir, STANDALONE_PORT, &[])?;
        wait_until(&format!("redis on port {STANDALONE_PORT} answers"), || {
            self.is_running()
        })
        .inspect_err(|_| server.stop())?;
        Ok(Started::new("redis", move || server.stop()))
    }
}

impl Service for Cluster {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let [first, rest @ ..] = CLUSTER_PORTS;
        let nodes: Vec<String> = rest
            .iter()
            .map(|port| format!("node=127.0.0.1:{port}"))
            .collect();
        vec![(
            "SYNCFORGE_TEST_REDIS_CLUSTER_URL",
            format!("redis-cluster://127.0.0.1:{first}?{}", nodes.join("&")),
        )]
    }

    fn is_running(&self) -> bool {
        CLUSTER_PORTS.iter().all(|&port| cluster_ok(port))
    }

    fn start(&self, dir: &Path) -> Result<Started, String> {
        require_binaries()?;
        let mut servers = Vec::new();
        let stop_all = |servers: &[Server]| servers.iter().for_each(Server::stop);
        for port in CLUSTER_PORTS {
            // `--cluster create` wants empty nodes: start from empty directories.
            let node_dir = dir.join(port.to_string());
            stop_leftover(&node_dir, port);
            if node_dir.exists() {
                std::fs::remove_dir_all(&node_dir)
                    .map_err(|e| format!("cannot empty {}: {e}", node_dir.display()))
                    .inspect_err(|_| stop_all(&servers))?;
            }
            let config_file = format!("nodes-{port}.conf");
            let server = start_server(
                &node_dir,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &config_file,
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            .inspect_err(|_| stop_all(&servers))?;
            servers.push(server);
        }
        let result = (|| {
            for port in CLUSTER_PORTS {
                wait_until(&format!("cluster node {port} answers"), || {
                    cli(port, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
                })?;
            }
            // Bounded as every other `redis-cli` call: it waits for the
            // nodes to agree with no limit of its own, for good when one
            // stops answering while they join.
            let mut create = Command::new("timeout");
            create
                .args([CLUSTER_CREATE_LIMIT, "redis-cli"])
                .arg("--cluster")
                .arg("create");
            for port in CLUSTER_PORTS {
                create.arg(format!("127.0.0.1:{port}"));
            }
            let output = create
                .arg("--cluster-yes")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run redis-cli --cluster create: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "redis-cli --cluster create failed ({}; `timeout` ends it after \
                     {CLUSTER_CREATE_LIMIT}): {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            wait_until("the cluster reports cluster_state:ok on every node", || {
                self.is_running()
            })
        })();
        if let Err(reason) = result {
            stop_all(&servers);
            return Err(reason);
        }
        Ok(Started::new("redis-cluster", move || stop_all(&servers)))
    }
}

/// A `redis-server` this run started, known by its pid file.
#[derive(Clone)]
struct Server {
    port: u16,
    pid_file: PathBuf,
}

/// The servers this run launched and has not stopped, those of a service
/// still starting included: a service enters the run's list of started
/// ones only once it is up (a cluster's nodes a minute or more after the
/// first was launched), and a signal meanwhile must stop its servers too,
/// or they outlive the run, and the next run takes them for running ones.
static LAUNCHED: Mutex<Vec<Server>> = Mutex::new(Vec::new());

fn launched() -> MutexGuard<'static, Vec<Server>> {
    LAUNCHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops every server this run launched and has not stopped yet.
pub(crate) fn stop_launched() {
    // Taken out first: each stop takes its server off the list itself.
    let servers = std::mem::take(&mut *launched());
    for server in servers.iter().rev() {
        server.stop();
    }
}

impl Server {
    /// Stops exactly the process the pid file names, and waits (bounded)
    /// until it is gone.
    fn stop(&self) {
        launched().retain(|other| other.pid_file != self.pid_file);
        let Some(pid) = read_pid(&self.pid_file) else {
            eprintln!(
                "--> redis on port {}: no pid in {}; nothing stopped",
                self.port,
                self.pid_file.display()
            );
            return;
        };
        // A server that died leaves its pid file: the pid may be another
        // process's by now.
        if !is_redis_on(pid, self.port) {
            eprintln!(
                "--> redis on port {}: pid {pid} is no longer that server; nothing stopped",
                self.port
            );
            return;
        }
        let sent = Command::new("kill")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            eprintln!(
                "--> redis on port {}: could not signal pid {pid}",
                self.port
            );
            return;
        }
        let exited = || !Path::new(&format!("/proc/{pid}")).exists();
        let Err(reason) = wait_until(&format!("redis pid {pid} exits"), exited) else {
            return;
        };
        // A server that does not stop when asked is made to: the run
        // leaves nothing it started behind.
        eprintln!("--> {reason}; killing it");
        let killed = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !killed || wait_until(&format!("redis pid {pid} is killed"), exited).is_err() {
            eprintln!(
                "--> redis on port {}: pid {pid} is still running",
                self.port
            );
        }
    }
}

/// Starts `redis-server` on `port` with its files in `dir`, in the
/// background, and returns once it wrote its pid file.
fn start_server(dir: &Path, port: u16, extra: &[&str]) -> Result<Server, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let pid_file = dir.join("redis.pid");
    stop_leftover(dir, port);
    // A pid file left by a server that is gone would name someone else.
    if pid_file.exists() {
        std::fs::remove_file(&pid_file)
            .map_err(|e| format!("cannot remove {}: {e}", pid_file.display()))?;
    }
    let status = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
        .arg("--dir")
        .arg(dir)
        .arg("--pidfile")
        .arg(&pid_file)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    if !status.success() {
        return Err(format!(
            "redis-server on port {port} failed to start ({status})"
        ));
    }
    let server = Server { port, pid_file };
    launched().push(server.clone());
    wait_until(&format!("redis on port {port} writes its pid file"), || {
        server.pid_file.exists()
    })
    .map_err(|reason| {
        format!(
            "{reason}; see {} (is port {port} or {} taken?)",
            dir.join("redis.log").display(),
            u32::from(port) + 10_000
        )
    })?;
    Ok(server)
}

/// Stops the server an earlier run started in `dir` on `port` and left
/// running (that run was killed before it could stop it): it holds the
/// port, and a cluster node of it would keep the new one from starting.
/// Only a process that is still a `redis-server` on that port is stopped,
/// never whatever the pid has been given to since.
fn stop_leftover(dir: &Path, port: u16) {
    let pid_file = dir.join("redis.pid");
    let Some(pid) = read_pid(&pid_file) else {
        return;
    };
    if is_redis_on(pid, port) {
        eprintln!("--> stopping redis on port {port} left running by an earlier run (pid {pid})");
        Server { port, pid_file }.stop();
    }
}

/// Whether process `pid` is a `redis-server` on `port`.
fn is_redis_on(pid: u32, port: u16) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("redis-server") && cmdline.contains(&format!(":{port}"))
    })
}

/// The pid a server wrote to `pid_file`, if the file holds one.
fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// `redis-cli -p PORT args...`, its output when it succeeded within five
/// seconds. Bounded (by coreutils' `timeout`): a program on the port that
/// takes the connection and never answers (a stopped server, another
/// protocol) held every readiness check, and the run, for good.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("timeout")
        .args(["5", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn cluster_ok(port: u16) -> bool {
    cli(port, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok"))
}

fn require_binaries() -> Result<(), String> {
    for binary in ["redis-server", "redis-cli"] {
        let found = Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "`{binary}` not found: install Redis 7 (Debian: apt-get install redis-server)"
            ));
        }
    }
    Ok(())
}

/// Polls `ready` every 100 ms until it holds or [`START_TIMEOUT`] passes.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    Err(format!(
        "timed out after {START_TIMEOUT:?} waiting until {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tests_find_the_servers_on_their_own_ports() {
        assert_eq!(
            Standalone.env(),
            [(
                "SYNCFORGE_TEST_REDIS_URL",
                "redis://127.0.0.1:6391/0".to_owned()
            )]
        );
        assert_eq!(
            Cluster.env(),
            [(
                "SYNCFORGE_TEST_REDIS_CLUSTER_URL",
                "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=127.0.0.1:7003".to_owned()
            )]
        );
        assert!(!CLUSTER_PORTS.contains(&6379) && STANDALONE_PORT != 6379);
    }

    /// A launched server is on the list a signal's handler stops until it
    /// is stopped; stopping what is on the list empties it.
    #[test]
    fn launched_servers_are_listed_until_stopped() {
        // Pid files that do not exist: stopping such a server signals no one.
        let dir = std::env::temp_dir().join(format!("xtask-launched-{}", std::process::id()));
        let server = |name: &str| Server {
            port: 1,
            pid_file: dir.join(name),
        };
        launched().extend([server("a.pid"), server("b.pid")]);
        server("a.pid").stop();
        let listed: Vec<PathBuf> = launched().iter().map(|s| s.pid_file.clone()).collect();
        assert!(listed.contains(&dir.join("b.pid")));
        assert!(!listed.contains(&dir.join("a.pid")));
        stop_launched();
        assert!(launched().iter().all(|s| !s.pid_file.starts_with(&dir)));
    }
}
