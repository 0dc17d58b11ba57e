//! Child processes a test waits for within a bound: a child that hangs
//! fails its test instead of hanging the whole test binary.

use std::io::{self, Read};
use std::process::{Child, ExitStatus, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Waits for `child` to exit, at most `within`, collecting what it writes
/// to piped stdout and stderr as it goes (a child blocked on a full pipe
/// would never exit). Past `within` the child is killed (see [`wait`]).
///
/// Blocks its thread: from async code, call it through
/// `tokio::task::spawn_blocking`.
pub fn finish(mut child: Child, within: Duration) -> io::Result<Output> {
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let status = wait(&mut child, within)?;
    Ok(Output {
        status,
        stdout: collected(stdout)?,
        stderr: collected(stderr)?,
    })
}

/// Waits for `child` to exit, at most `within`; past that it is killed and
/// the answer is an error of kind [`io::ErrorKind::TimedOut`]. Output it
/// pipes is left unread (see [`finish`]).
pub fn wait(child: &mut Child, within: Duration) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a child process ran longer than {within:?} and was killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `from` to its end on a thread of its own.
fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes).map(|_| bytes)
    })
}

/// What a reader thread read, or nothing for a stream that was not piped.
fn collected(reader: Option<JoinHandle<io::Result<Vec<u8>>>>) -> io::Result<Vec<u8>> {
    match reader {
        Some(reader) => reader
            .join()
            .map_err(|_| io::Error::other("the thread reading a child's output panicked"))?,
        None => Ok(Vec::new()),
    }
}
