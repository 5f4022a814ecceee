//! The control plane: a Firecracker-compatible REST API over a Unix socket (`--api-sock`).
//!
//! ```text
//!  curl --unix-socket PATH ──► server (kvmkit-api thread, a thread per connection)
//!                                 └─► http: one request, strictly bounded
//!                                       └─► routes: Firecracker's paths and JSON bodies
//!                                             └─► Controller: configure, InstanceStart, pause...
//! ```
//!
//! docs/api.md lists every endpoint, with a curl example, and what differs from Firecracker.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use crate::controller::Controller;

pub use server::Server;

/// Serves the API for `controller` on a socket at `path` until the returned server is dropped.
pub fn serve(path: &Path, controller: Arc<Controller>) -> Result<Server, server::Error> {
    serve_on(server::bind(path)?, path, controller)
}

/// Serves the API for `controller` on `listener`, a socket [`server::bind`] bound at `path`.
pub fn serve_on(
    listener: std::os::unix::net::UnixListener,
    path: &Path,
    controller: Arc<Controller>,
) -> Result<Server, server::Error> {
    let handler: server::Handler = Arc::new(move |req| routes::handle(&controller, req));
    Server::spawn(listener, path, handler)
}
