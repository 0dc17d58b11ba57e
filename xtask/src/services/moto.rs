//! An S3-compatible server for the S3 backend's tests: moto, served on one
//! request thread by `xtask/moto_server.py` (why one thread: see there), from
//! a Python virtual environment under `target/` that is created, with a
//! pinned moto, only when it is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Service, Started};

/// The moto release the tests were written against.
const MOTO: &str = "moto[server]==5.2.5";
/// Where the server listens (loopback only).
const HOST: &str = "127.0.0.1";
const PORT: u16 = 45655;
/// The bucket the tests use, created with a plain PUT after start.
const BUCKET: &str = "syncforge-test";
/// How long the server may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The virtual environment, under the workspace's `target/`.
fn venv() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/moto-venv"))
}

fn launcher() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/moto_server.py"))
}

/// moto's S3 server.
pub(crate) struct Moto;

impl Service for Moto {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SYNCFORGE_TEST_S3_ENDPOINT",
                format!("http://{HOST}:{PORT}"),
            ),
            ("SYNCFORGE_TEST_S3_BUCKET", BUCKET.to_owned()),
        ]
    }

    /// Something answers on the port and takes the bucket's creation as
    /// S3 does (a PUT of a bucket it holds is answered 200): a server left
    /// by a run killed before it made the bucket gets it now, and a server
    /// that is not S3 is not taken for one.
    fn is_running(&self) -> bool {
        answers() && create_bucket().is_ok()
    }

    fn start(&self, dir: &Path) -> Result<Started, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let python = install()?;
        let log_path = dir.join("moto.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let errors = log
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let mut child = Command::new(&python)
            .arg(launcher())
            .args(["--host", HOST, "--port", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("running {}: {e}", python.display()))?;
        eprintln!(
            "--> moto runs as process {} (log: {})",
            child.id(),
            log_path.display()
        );
        if let Err(reason) = wait_until_up(&mut child).and_then(|()| create_bucket()) {
            stop(&mut child);
            return Err(format!("{reason} (see {})", log_path.display()));
        }
        Ok(Started::new("s3", move || stop(&mut child)))
    }
}

/// The venv's python, installing moto first if the venv is missing.
fn install() -> Result<PathBuf, String> {
    let venv = venv();
    let python = venv.join("bin/python");
    let done = venv.join(".syncforge-installed");
    if done.exists() && std::fs::read_to_string(&done).is_ok_and(|pinned| pinned == MOTO) {
        return Ok(python);
    }
    eprintln!("--> installing {MOTO} into {} (once)", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", MOTO]))?;
    std::fs::write(&done, MOTO).map_err(|e| format!("writing {}: {e}", done.display()))?;
    Ok(python)
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

fn answers() -> bool {
    TcpStream::connect_timeout(&address(), Duration::from_millis(500)).is_ok()
}

fn wait_until_up(child: &mut Child) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("moto exited at start ({status})"));
        }
        if answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "moto did not answer on {HOST}:{PORT} within {START_TIMEOUT:?}"
    ))
}

/// `PUT /bucket`: object_store does not create buckets.
fn create_bucket() -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&address(), Duration::from_secs(5))
        .map_err(|e| format!("connecting to moto: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("configuring the connection: {e}"))?;
    let request = format!(
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("creating the bucket: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("creating the bucket: {e}"))?;
    let status = answer.lines().next().unwrap_or_default();
    if status.contains(" 200") {
        Ok(())
    } else {
        Err(format!("creating bucket {BUCKET} answered {status:?}"))
    }
}

/// Stops exactly the process this run started.
fn stop(child: &mut Child) {
    if let Err(e) = child.kill() {
        eprintln!("--> could not stop moto (process {}): {e}", child.id());
    }
    let _ = child.wait();
}
