//! Driving a VMM process from a benchmark: its console lines with the time each arrived,
//! and Firecracker's HTTP API over its Unix socket (hearth answers the same requests).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::fail;

/// Any single step longer than this fails the benchmark.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A child whose stdout and stderr lines arrive on a channel with the time they were
/// read.
pub struct Watched {
    what: &'static str,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Watched {
    pub fn spawn(what: &'static str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(what, format!("cannot start {cmd:?}: {e}")));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            what,
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next line within `timeout`, if one came.
    pub fn next_line(&mut self, timeout: Duration) -> Option<(Instant, String)> {
        let (t, line) = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some((t, line))
    }

    /// Waits for a line for which `pick` gives a value; returns it and when the line
    /// arrived. Fails the benchmark (killing the VMM) after [`STEP_TIMEOUT`].
    pub fn wait_map<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> (Instant, T) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some((t, line)) => {
                    if let Some(v) = pick(&line) {
                        return (t, v);
                    }
                }
                None => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let start = self.seen.len().saturating_sub(40);
                    fail(
                        self.what,
                        format!(
                            "{what} never came; the VMM's last lines:\n{}",
                            self.seen[start..].join("\n")
                        ),
                    );
                }
            }
        }
    }

    /// Waits for a line containing `needle`; returns when it arrived.
    pub fn wait_for(&mut self, needle: &str) -> Instant {
        self.wait_map(&format!("{needle:?}"), |l| l.contains(needle).then_some(()))
            .0
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on Firecracker's API socket; fails the benchmark on an error status.
pub fn fc_api(what: &str, sock: &Path, method: &str, path: &str, body: &str) {
    let mut stream = UnixStream::connect(sock)
        .unwrap_or_else(|e| fail(what, format!("cannot connect to {}: {e}", sock.display())));
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        fail(what, format!("{method} {path}: {e}"));
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => fail(what, format!("{method} {path}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        // The body may follow the headers; give it a moment.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        if let Ok(n) = stream.read(&mut buf) {
            response.extend_from_slice(&buf[..n]);
        }
        fail(
            what,
            format!(
                "{method} {path} {body}: {}",
                String::from_utf8_lossy(&response)
            ),
        );
    }
}

/// Waits until `sock` accepts connections (the VMM creates it at start).
pub fn wait_for_socket(what: &str, sock: &Path) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while UnixStream::connect(sock).is_err() {
        if Instant::now() > deadline {
            fail(what, format!("{} never accepted", sock.display()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// A `Duration`'s `Debug` text (`812.5µs`, `3.2ms`, `1.05s`, `950ns`) in milliseconds.
pub fn parse_debug_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "ns" => v / 1e6,
        "µs" | "us" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        _ => return None,
    })
}

/// `date -u` and /proc/loadavg, for the header of a benchmark's output.
pub fn when_and_load() -> String {
    format!(
        "date: {}; load: {}",
        Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        super::loadavg()
    )
}
