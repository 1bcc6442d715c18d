//! The control API: HTTP/1.1 with JSON over a unix socket (tiny_http parses the requests).
//!
//! | route | method | answer |
//! |---|---|---|
//! | `/vm` | GET | state and configuration |
//! | `/stats` | GET | exit statistics per vCPU and in all, unowned accesses |
//! | `/map` | GET | both address spaces |
//! | `/vm/pause`, `/vm/resume`, `/vm/shutdown` | PUT | 204, or 409 when the VM cannot |
//!
//! Unknown routes get 404, known routes with another method 405, bodies over
//! [`MAX_BODY`] 413; tiny_http answers malformed requests with 400. `docs/api.yaml` is the
//! OpenAPI description.
pub mod client;
pub mod socket;
pub mod view;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use crate::seccomp::{self, SeccompMode, ThreadKind};
pub use socket::SocketAccess;

/// Request bodies larger than this are refused (no route takes a body).
pub const MAX_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {0} already exists (remove it, or choose another path)")]
    Exists(PathBuf),
    #[error("cannot listen on API socket {path}: {err}")]
    Listen { path: PathBuf, err: String },
    #[error("cannot start the API thread: {0}")]
    Thread(std::io::Error),
}

/// What the API can ask of a VM.
pub trait VmApi: Send + Sync {
    /// State and configuration.
    fn info(&self) -> Value;
    /// Exit statistics and device counters.
    fn stats(&self) -> Value;
    /// Both address spaces.
    fn map(&self) -> Value;
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    fn shutdown(&self);
}

/// An answer: status code and JSON body (`Value::Null` for no body).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply { status, body }
}

fn error(status: u16, message: &str) -> Reply {
    reply(status, json!({ "error": message }))
}

/// Routes one request. `body_len` is the announced body length.
pub fn route(method: &str, url: &str, body_len: usize, vm: &dyn VmApi) -> Reply {
    if body_len > MAX_BODY {
        return error(413, &format!("request body over {MAX_BODY} bytes"));
    }
    let path = url.split('?').next().unwrap_or(url);
    let (allowed, handler): (&str, fn(&dyn VmApi) -> Reply) = match path {
        "/vm" => ("GET", |vm| reply(200, vm.info())),
        "/stats" => ("GET", |vm| reply(200, vm.stats())),
        "/map" => ("GET", |vm| reply(200, vm.map())),
        "/vm/pause" => ("PUT", |vm| match vm.pause() {
            Ok(()) => reply(204, Value::Null),
            Err(e) => error(409, &e),
        }),
        "/vm/resume" => ("PUT", |vm| match vm.resume() {
            Ok(()) => reply(204, Value::Null),
            Err(e) => error(409, &e),
        }),
        "/vm/shutdown" => ("PUT", |vm| {
            vm.shutdown();
            reply(204, Value::Null)
        }),
        _ => return error(404, &format!("no route {path}")),
    };
    if method != allowed {
        return error(405, &format!("{path} takes {allowed}, not {method}"));
    }
    handler(vm)
}

/// The API server thread; dropping it stops the thread and removes the socket.
pub struct ApiServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ApiServer {
    /// Listens on `path` (mode 0600 whatever the umask, or 0660 for `access`'s group) and
    /// serves from an "api" thread confined by the API seccomp filter (tiny_http's own threads
    /// are created from it and inherit the filter).
    pub fn start(
        path: &Path,
        vm: Arc<dyn VmApi>,
        seccomp: SeccompMode,
        access: SocketAccess,
    ) -> Result<ApiServer, ApiError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::Exists(path.to_path_buf()));
        }
        let listener: UnixListener = socket::bind(path, access).map_err(|e| ApiError::Listen {
            path: path.to_path_buf(),
            err: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                // Requests are untrusted input: confine the thread before the first one.
                if let Err(e) = seccomp::install(ThreadKind::Api, seccomp) {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                let server = match tiny_http::Server::from_listener(listener, None) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(server.clone()));
                serve(&server, &*vm);
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(ApiError::Thread(e));
            }
        };
        match rx.recv() {
            Ok(Ok(server)) => Ok(ApiServer {
                server,
                thread: Some(thread),
                path: path.to_path_buf(),
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                let _ = std::fs::remove_file(path);
                Err(ApiError::Listen {
                    path: path.to_path_buf(),
                    err,
                })
            }
            Err(_) => {
                let _ = thread.join();
                let _ = std::fs::remove_file(path);
                Err(ApiError::Listen {
                    path: path.to_path_buf(),
                    err: "the API thread ended early".into(),
                })
            }
        }
    }
}

fn serve(server: &tiny_http::Server, vm: &dyn VmApi) {
    while let Ok(mut request) = server.recv() {
        let body_len = request.body_length().unwrap_or(0);
        let mut r = route(request.method().as_str(), request.url(), body_len, vm);
        // Drain a small body so the connection stays in step; a chunked body over the limit
        // turns into 413 as well.
        if r.status != 413 {
            let mut sink = Vec::new();
            let n = request
                .as_reader()
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut sink)
                .unwrap_or(0);
            if n > MAX_BODY {
                r = error(413, &format!("request body over {MAX_BODY} bytes"));
            }
        }
        let text = if r.body.is_null() {
            String::new()
        } else {
            r.body.to_string()
        };
        // Always with a Content-Length: tiny_http would switch a body over 32 KiB to chunked
        // encoding, which simple clients (and `ctl`, before it learnt it) read as garbage.
        let mut response = tiny_http::Response::from_string(text)
            .with_status_code(r.status)
            .with_chunked_threshold(usize::MAX);
        if !r.body.is_null() {
            if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
                response = response.with_header(h);
            }
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests;
