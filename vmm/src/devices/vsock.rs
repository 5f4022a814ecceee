//! `--vsock cid=N,socket=PATH` and `PUT /vsock`: the virtio socket device on its host socket,
//! which is removed with the VM's devices.

use std::path::PathBuf;

use virtio_devices::vsock::VsockError;
use virtio_devices::{Vsock, VsockConfig};

use crate::api::server::{Flag, bind_as};

/// Why the vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host socket could not be made.
    #[error(transparent)]
    Bind(#[from] crate::api::server::Error),
    /// The device refused its configuration.
    #[error(transparent)]
    Device(#[from] VsockError),
}

/// The host socket's path, removed when dropped (with the devices).
#[derive(Debug)]
pub struct HostSocket(PathBuf);

impl Drop for HostSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the host socket and makes the device named `name`.
pub fn make(name: &str, config: &VsockConfig) -> Result<(Vsock, HostSocket), Error> {
    let listener = bind_as(Flag::VsockSocket, &config.socket)?;
    let socket = HostSocket(config.socket.clone());
    let device = Vsock::new(name, config.cid, listener, &config.socket)?;
    Ok((device, socket))
}
