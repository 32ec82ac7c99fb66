//! Firecracker's control plane: its HTTP API on a Unix socket (v1.16 semantics), its
//! `--config-file` schema, its metrics and log lines.
//!
//! - [`models`]: the request and response bodies;
//! - [`router`]: HTTP request → [`router::Action`] (pure, fuzzable);
//! - [`pending`]: the VM described before boot;
//! - [`limits`]: Firecracker's `rate_limiter` objects and hearth's limits;
//! - [`controller`]: which action is valid when, and carrying it out on the VM;
//! - [`server`]: the socket and the thread that owns the VM;
//! - [`metrics`], [`logger`]: Firecracker's output formats;
//! - [`client`]: what `hearth ctl` sends.

pub mod client;
pub mod controller;
pub mod limits;
pub mod logger;
pub mod metrics;
pub mod models;
pub mod pending;
pub mod router;
pub mod server;
#[cfg(test)]
mod tests;

pub use controller::{Controller, Reply};
pub use router::{Action, Fault};
pub use server::ApiServer;

use std::path::PathBuf;

/// Errors of the API socket itself (the requests' own errors are [`Fault`]s).
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
    /// The answer was not HTTP.
    #[error("API socket {path}: the answer is not an HTTP response")]
    BadResponse {
        /// The path.
        path: PathBuf,
    },
    /// hearth refused the request.
    #[error("{0}")]
    Refused(String),
    /// A config file that does not fit Firecracker's schema.
    #[error("config file {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
