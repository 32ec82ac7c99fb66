//! A minimal HTTP/1.1 client for the API socket: one request per connection, which is
//! all `hearth ctl` needs (micro_http is a server only).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use std::time::Duration;

use super::ApiError;

/// How long a client waits for an answer (a snapshot of a large VM takes a while).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// An answer: the status code and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON, or empty).
    pub body: String,
}

impl Answer {
    /// The fault message of a refusal, or the whole body when it has none.
    pub fn fault(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.clone())
    }
}

/// Sends one request to the API at `socket` and reads the answer.
pub fn send(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Result<Answer, ApiError> {
    let io = |source| ApiError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut text =
        format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    stream.write_all(text.as_bytes()).map_err(io)?;

    let bad = || ApiError::BadResponse {
        path: socket.to_owned(),
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(bad());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(bad());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = (header_end + length).min(buf.len());
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&buf[header_end..end]).into_owned(),
    })
}

/// Sends a request and turns anything but 2xx into [`ApiError::Refused`].
pub fn call(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Result<String, ApiError> {
    let answer = send(socket, method, uri, body)?;
    if (200..300).contains(&answer.status) {
        Ok(answer.body)
    } else {
        Err(ApiError::Refused(answer.fault()))
    }
}
