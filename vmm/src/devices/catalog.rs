//! Every kind of virtio device kvmkit can give a guest, made from its configuration: one line per
//! kind (docs/architecture.md, "Adding a device"). The order is the order the guest finds them in:
//! disks (vda, vdb...), network cards (eth0...), the entropy source, the console (hvc0), the
//! socket device (vsock0).

use memory::GuestMemoryMmap;
use virtio_devices::{Block, Net, Rng};

use super::{DeviceManager, Error};
use crate::config::DevicesConfig;

/// The guest's name for disk `i`: vda, vdb, ..., vdz, vdaa, ...
pub fn disk_name(i: usize) -> String {
    let mut name = String::new();
    let mut n = i;
    loop {
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// Makes and places the virtio devices `config` asks for. More devices than interrupt lines is
/// [`Error::TooMany`], naming how many fit.
pub fn add_configured(
    dm: &mut DeviceManager,
    vm: &accel::Vm,
    mem: &GuestMemoryMmap,
    config: &DevicesConfig,
) -> Result<(), Error> {
    let asked = config.disks.len()
        + config.nets.len()
        + usize::from(config.rng.is_some())
        + usize::from(config.console.is_some())
        + usize::from(config.vsock.is_some());
    let mut placed = 0;
    let mut place = |dm: &mut DeviceManager, name: &str, device| -> Result<(), Error> {
        match dm.add_virtio(vm, mem, name, device) {
            Err(Error::Allocate(memory::AllocError::Irq(_))) => Err(Error::TooMany {
                asked,
                room: placed,
            }),
            Err(e) => Err(e),
            Ok(_) => {
                placed += 1;
                Ok(())
            }
        }
    };
    for (i, disk) in config.disks.iter().enumerate() {
        let name = disk_name(i);
        place(dm, &name, Box::new(Block::new(&name, disk)?))?;
    }
    for (i, net) in config.nets.iter().enumerate() {
        let name = net.id.clone().unwrap_or_else(|| format!("net{i}"));
        place(dm, &name, Box::new(Net::new(&name, net)?))?;
    }
    if let Some(rng) = &config.rng {
        place(dm, "rng0", Box::new(Rng::new("rng0", rng)))?;
    }
    if let Some(mode) = &config.console {
        let console = super::hvc::make("hvc0", mode)?;
        if let Some(path) = &console.pty {
            eprintln!("kvmkit: virtio console (hvc0) on {}", path.display());
        }
        dm.console_drains.extend(console.drain);
        dm.console_resize = console.resize;
        dm.console_relay = console.relay;
        place(dm, "hvc0", Box::new(console.device))?;
    }
    if let Some(vsock) = &config.vsock {
        let (device, socket) = super::vsock::make("vsock0", vsock)?;
        dm.vsock_socket = Some(socket);
        place(dm, "vsock0", Box::new(device))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_names_go_on_past_z() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 701, 702].map(super::disk_name).to_vec();
        assert_eq!(
            names,
            ["vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]
        );
    }
}
