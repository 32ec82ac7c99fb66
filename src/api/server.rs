//! The API socket: micro_http's server on a Unix socket, polled together with the VM's
//! end, the vCPU watchdog and the metrics timer on one thread that owns the VM.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use micro_http::{Body, HttpServer, MediaType, Request, Response, StatusCode, Version};

use super::controller::{Controller, Reply};
use super::metrics::FLUSH_INTERVAL;
use super::router::{route_request, Fault};
use super::ApiError;
use crate::vm::WATCHDOG_INTERVAL;
use crate::ExitReason;

/// Firecracker's default limit on a request body (`--http-api-max-payload-size`).
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// The HTTP API on its socket; the socket file goes when this does.
pub struct ApiServer {
    http: HttpServer,
    path: PathBuf,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish()
    }
}

/// The body of a 400: Firecracker's `{"fault_message": ...}`.
pub fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// The HTTP answer to one request.
pub fn respond(controller: &mut Controller, request: &Request) -> Response {
    let outcome = route_request(request).and_then(|action| controller.handle(action));
    to_response(outcome)
}

/// An outcome as an HTTP response.
pub fn to_response(outcome: Result<Reply, Fault>) -> Response {
    let (status, body) = match outcome {
        Ok(Reply::NoContent) => (StatusCode::NoContent, None),
        Ok(Reply::Json(body)) => (StatusCode::OK, Some(body)),
        Err(Fault(message)) => {
            log::warn!("API request refused: {message}");
            (StatusCode::BadRequest, Some(fault_body(&message)))
        }
    };
    let mut response = Response::new(Version::Http11, status);
    if let Some(body) = body {
        response.set_body(Body::new(body));
        response.set_content_type(MediaType::ApplicationJson);
    }
    response
}

impl ApiServer {
    /// Listens at `path`. A stale socket file (nobody listening) is replaced; a live one
    /// or any other file is refused.
    pub fn bind(path: &Path, max_payload: usize) -> Result<Self, ApiError> {
        let bind_err = |source| ApiError::Bind {
            path: path.to_owned(),
            source,
        };
        hearth_devices::stale_socket::remove_stale_socket(path);
        let mut http = HttpServer::new(path).map_err(|e| bind_err(server_io(e)))?;
        http.set_payload_max_size(max_payload);
        http.start_server().map_err(|e| bind_err(server_io(e)))?;
        Ok(Self {
            http,
            path: path.to_owned(),
        })
    }

    /// Answers requests until the VM ends, then returns why it ended. Without a VM,
    /// serves until one is started (or loaded) and ends.
    pub fn serve(&mut self, controller: &mut Controller) -> ExitReason {
        run(Some(self), controller)
    }

    fn answer(&mut self, controller: &mut Controller) {
        let requests = match self.http.requests() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("API socket: {e:?}");
                return;
            }
        };
        for request in requests {
            let response = request.process(|r| {
                log::info!(
                    "The API server received a {:?} request on {:?}.",
                    r.method(),
                    r.uri().get_abs_path()
                );
                respond(controller, r)
            });
            if let Err(e) = self.http.respond(response) {
                log::warn!("API socket: cannot answer: {e:?}");
            }
        }
    }
}

/// Owns the VM until it ends: answers API requests (when there is a server), runs the
/// vCPU watchdog and writes metrics every [`FLUSH_INTERVAL`] and at the end. Returns why
/// the VM ended ([`ExitReason::Stopped`] at once without a server or a VM).
pub fn run(mut server: Option<&mut ApiServer>, controller: &mut Controller) -> ExitReason {
    let mut next_flush = Instant::now() + FLUSH_INTERVAL;
    let mut last_watchdog = Instant::now();
    loop {
        let mut fds = Vec::with_capacity(2);
        if let Some(vm) = controller.vm() {
            fds.push(libc::pollfd {
                fd: vm.exit_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(s) = &server {
            fds.push(libc::pollfd {
                fd: s.http.epoll().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            return ExitReason::Stopped;
        }
        let next_checkpoint = controller.checkpoint_tick();
        let until_flush = next_flush.saturating_duration_since(Instant::now());
        // Without a VM there is no watchdog to run: sleep until a request comes.
        let mut wait = match controller.vm() {
            Some(_) => WATCHDOG_INTERVAL.min(until_flush),
            None => until_flush,
        };
        if let Some(due) = next_checkpoint {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(1);
        // SAFETY: `fds` is a valid array of `nfds` pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
        let http_ready = fds.last().is_some_and(|f| f.revents & libc::POLLIN != 0);
        if let (true, Some(s)) = (n > 0 && http_ready, server.as_deref_mut()) {
            s.answer(controller);
        }
        if controller.vm().is_some_and(crate::RunningVm::has_ended) {
            // The last line, with the devices' final counts.
            controller.update_device_metrics();
            let _ = controller.metrics.flush();
        }
        if let Some(reason) = controller.reap() {
            return reason;
        }
        if last_watchdog.elapsed() >= WATCHDOG_INTERVAL {
            if let Some(vm) = controller.vm() {
                vm.watchdog();
            }
            last_watchdog = Instant::now();
        }
        if Instant::now() >= next_flush {
            controller.update_device_metrics();
            if let Err(e) = controller.metrics.flush() {
                log::warn!("{e}");
            }
            next_flush = Instant::now() + FLUSH_INTERVAL;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.http.flush_outgoing_writes();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn server_io(e: micro_http::ServerError) -> std::io::Error {
    match e {
        micro_http::ServerError::IOError(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}
