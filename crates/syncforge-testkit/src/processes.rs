//! Child processes a test waits for within a bound: a child that hangs
//! fails its test instead of hanging the whole test binary.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ExitStatus, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Waits for `child` to exit, at most `within`, collecting what it writes
/// to piped stdout and stderr as it goes (a child blocked on a full pipe
/// would never exit). Past `within` the child is killed (see [`wait`]).
///
/// Blocks its thread: from async code, call it through
/// `tokio::task::spawn_blocking`.
///
/// The bound covers the reading of its output too: a process the child
/// started and left running may hold the pipes open after the child exits,
/// and the answer is then an error of kind [`io::ErrorKind::TimedOut`].
pub fn finish(mut child: Child, within: Duration) -> io::Result<Output> {
    let deadline = Instant::now() + within;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let status = wait(&mut child, within)?;
    Ok(Output {
        status,
        stdout: collected(stdout, deadline)?,
        stderr: collected(stderr, deadline)?,
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

/// The next line of `from` (with its newline; empty at the end of the
/// stream), waiting at most `within`, and the reader to go on with. A child
/// that neither prints a line nor exits would otherwise hold its test for
/// ever; past `within` the answer is an error of kind
/// [`io::ErrorKind::TimedOut`] (the reading thread is left to end with the
/// child).
pub fn read_line<R: Read + Send + 'static>(
    from: BufReader<R>,
    within: Duration,
) -> io::Result<(String, BufReader<R>)> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut from = from;
        let mut line = String::new();
        let read = from.read_line(&mut line).map(|_| (line, from));
        // The test may have stopped waiting.
        let _ = sender.send(read);
    });
    receiver.recv_timeout(within).map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("a child process printed no line within {within:?}"),
        )
    })?
}

/// Reads `from` to its end on a thread of its own, which sends what it
/// read.
fn read_all(mut from: impl Read + Send + 'static) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // The test may have stopped waiting.
        let _ = sender.send(from.read_to_end(&mut bytes).map(|_| bytes));
    });
    receiver
}

/// What a reader thread read by `deadline`, or nothing for a stream that
/// was not piped.
fn collected(
    reader: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let Some(reader) = reader else {
        return Ok(Vec::new());
    };
    match reader.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(read) => read,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "a child process's output stayed open past the bound (a process it started holds it)",
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
            "the thread reading a child's output panicked",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// A child that prints nothing and does not exit fails the wait for
    /// its line, within the bound; one that prints is read as usual.
    #[test]
    fn a_line_is_waited_for_within_a_bound() {
        let mut silent = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let waited = read_line(
            BufReader::new(silent.stdout.take().unwrap()),
            Duration::from_millis(200),
        );
        assert_eq!(waited.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(20));
        silent.kill().unwrap();
        silent.wait().unwrap();

        let mut speaking = Command::new("echo")
            .arg("ready")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (line, _) = read_line(
            BufReader::new(speaking.stdout.take().unwrap()),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        speaking.wait().unwrap();
    }

    /// A child that exits at once but leaves a process of its own holding
    /// its output: the reading of that output waited for the grandchild,
    /// past the bound.
    #[test]
    fn output_held_open_by_a_grandchild_fails_the_bound() {
        let child = Command::new("sh")
            .args(["-c", "sleep 3 & echo started"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let finished = finish(child, Duration::from_millis(500));
        assert_eq!(finished.unwrap_err().kind(), io::ErrorKind::TimedOut);

        let child = Command::new("echo")
            .arg("done")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let output = finish(child, Duration::from_secs(20)).unwrap();
        assert_eq!(output.stdout, b"done\n");
    }
}
