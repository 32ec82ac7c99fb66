//! The control socket: one request per connection, one line each way.
//!
//! ```text
//! pause            -> ok
//! resume           -> ok
//! snapshot DIR     -> ok        (the VM stays paused)
//! snapshot-resume DIR -> ok     (the VM runs on after the snapshot)
//! snapshot-diff[-resume] DIR -> ok (only the pages changed since the previous snapshot)
//! ```
//! Errors come back as `error: <reason>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Binding failed.
    #[error("cannot listen on API socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to API socket {path}: {source}; is hearth running with --api-sock?")]
    Connect {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The conversation failed.
    #[error("API socket {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// hearth refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Pause the VM.
    Pause,
    /// Resume it.
    Resume,
    /// Write a snapshot to `dir`; run on afterwards when `resume`.
    Snapshot {
        /// Where.
        dir: PathBuf,
        /// Resume afterwards.
        resume: bool,
        /// Only the pages changed since the VM's previous snapshot.
        diff: bool,
    },
}

impl Request {
    /// The request's line.
    pub fn to_line(&self) -> String {
        match self {
            Request::Pause => "pause".into(),
            Request::Resume => "resume".into(),
            Request::Snapshot { dir, resume, diff } => format!(
                "snapshot{}{} {}",
                if *diff { "-diff" } else { "" },
                if *resume { "-resume" } else { "" },
                dir.display()
            ),
        }
    }

    /// Parses a request line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match (verb, arg) {
            ("pause", "") => Ok(Request::Pause),
            ("resume", "") => Ok(Request::Resume),
            ("snapshot" | "snapshot-resume" | "snapshot-diff" | "snapshot-diff-resume", dir)
                if !dir.is_empty() =>
            {
                Ok(Request::Snapshot {
                    dir: PathBuf::from(dir),
                    resume: verb.ends_with("-resume"),
                    diff: verb.starts_with("snapshot-diff"),
                })
            }
            _ => Err(format!("unknown request '{line}'")),
        }
    }
}

/// Listens at `path` (a stale socket file from an earlier run is replaced).
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false)
        && UnixStream::connect(path).is_err()
    {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_owned(),
        source,
    })?;
    // Never let a slow client stall the VM's control thread.
    listener
        .set_nonblocking(true)
        .map_err(|source| ApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
    Ok(listener)
}

/// Answers one request on `stream` with `handle`.
pub fn serve<E: std::fmt::Display>(
    stream: UnixStream,
    handle: impl FnOnce(Request) -> Result<(), E>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    let reply = match reader.read_line(&mut line) {
        Ok(_) => match Request::parse(&line) {
            Ok(req) => match handle(req) {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("error: {e}\n"),
            },
            Err(e) => format!("error: {e}\n"),
        },
        Err(e) => format!("error: cannot read the request: {e}\n"),
    };
    let _ = (&stream).write_all(reply.as_bytes());
}

/// Sends `request` to the hearth serving `path` and waits for its answer.
pub fn send(path: &Path, request: &Request) -> Result<(), ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .write_all(format!("{}\n", request.to_line()).as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    match reply.trim_end() {
        "ok" => Ok(()),
        "" => Err(ApiError::Refused(
            "hearth closed the connection without an answer".into(),
        )),
        other => Err(ApiError::Refused(
            other.strip_prefix("error: ").unwrap_or(other).to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Pause,
            Request::Resume,
            Request::Snapshot {
                dir: "/snap/1".into(),
                resume: false,
                diff: false,
            },
            Request::Snapshot {
                dir: "/snap/with space".into(),
                resume: true,
                diff: false,
            },
            Request::Snapshot {
                dir: "/snap/d".into(),
                resume: true,
                diff: true,
            },
            Request::Snapshot {
                dir: "/snap/e".into(),
                resume: false,
                diff: true,
            },
        ] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r));
        }
        assert!(Request::parse("snapshot").is_err());
        assert!(Request::parse("reboot").is_err());
    }
}
