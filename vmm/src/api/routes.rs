//! Which request does what: Firecracker's paths and bodies, answered by the [`Controller`].
//!
//! Every error is a 400 with `{"fault_message": "..."}`, worded as Firecracker words it where it
//! has the same error; successes are 204 (no body) or 200 (JSON).

use serde::de::DeserializeOwned;

use super::http::{Request, Response};
use crate::config::firecracker::{
    ActionType, BootSource, Drive, EntropyDevice, InstanceActionInfo, Logger, MachineConfiguration,
    MachineConfigurationUpdate, Metrics, NetworkInterface, SnapshotCreateParams,
    SnapshotLoadParams, Vm, VmState, Vsock,
};
use crate::controller::{Controller, Error};

/// The kvmkit version `GET /version` reports, in Firecracker's field.
#[derive(serde::Serialize)]
struct Version {
    firecracker_version: &'static str,
}

fn bad(message: impl std::fmt::Display) -> Response {
    Response::fault(400, &crate::landlock::explain(message.to_string()))
}

fn done(result: Result<(), Error>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e) => bad(e),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => Response::json(body),
        Err(e) => Response::fault(500, &format!("cannot write the answer: {e}")),
    }
}

/// The request's body as `T`, or Firecracker's error for a body that does not parse.
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| {
        bad(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

/// Checks an id from the path: not empty, only letters, digits and underscores.
fn check_id(id: Option<&str>) -> Result<&str, Response> {
    match id {
        None | Some("") => Err(bad("The ID cannot be empty.")),
        Some(id) if id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => Ok(id),
        Some(_) => Err(bad(
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        )),
    }
}

/// Answers `req`.
pub fn handle(ctl: &std::sync::Arc<Controller>, req: &Request) -> Response {
    log::info!(
        "API: {} {} ({} bytes)",
        req.method,
        req.path,
        req.body.len()
    );
    let response = route(ctl, req).unwrap_or_else(|r| r);
    ctl.count_request(response.status >= 400);
    if let Some(body) = response.body.as_ref().filter(|_| response.status >= 400) {
        log::info!(
            "API: {} {}: {} {body}",
            req.method,
            req.path,
            response.status
        );
    }
    response
}

fn route(ctl: &std::sync::Arc<Controller>, req: &Request) -> Result<Response, Response> {
    let method = req.method.as_str();
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let has_body = !req.body.is_empty();
    match method {
        "GET" if has_body => return Err(bad("GET request cannot have a body.")),
        "PUT" if !has_body => return Err(bad("Empty PUT request.")),
        "PATCH" if !has_body => return Err(bad("Empty PATCH request.")),
        _ => {}
    }
    let first = parts.first().copied().unwrap_or_default();
    Ok(match (method, first, parts.get(1).copied()) {
        ("GET", "", None) => json(&ctl.info()),
        ("GET", "version", None) => json(&Version {
            firecracker_version: env!("CARGO_PKG_VERSION"),
        }),
        ("GET", "machine-config", None) => json(&ctl.machine_config()),
        ("GET", "vm", Some("config")) => json(&ctl.vm_config()),
        ("GET", "vm", Some("boot-timeline")) => Response::json(ctl.boot_timeline()),
        ("PUT", "boot-source", None) => done(ctl.put_boot_source(body::<BootSource>(req)?)),
        ("PUT", "machine-config", None) => {
            done(ctl.put_machine_config(body::<MachineConfiguration>(req)?))
        }
        ("PATCH", "machine-config", None) => {
            let update: MachineConfigurationUpdate = body(req)?;
            if update.is_empty() {
                return Err(bad("Empty PATCH request."));
            }
            done(ctl.patch_machine_config(&update))
        }
        ("PUT", "drives", id) => {
            let id = check_id(id)?;
            let drive: Drive = body(req)?;
            if drive.drive_id != id {
                return Err(bad(
                    "The id from the path does not match the id from the body!",
                ));
            }
            done(ctl.put_drive(drive))
        }
        ("PUT", "network-interfaces", id) => {
            let id = check_id(id)?;
            let net: NetworkInterface = body(req)?;
            if net.iface_id != id {
                return Err(bad(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    net.iface_id
                )));
            }
            done(ctl.put_network_interface(net))
        }
        ("PATCH", "drives" | "network-interfaces", _) => {
            return Err(bad(format!(
                "PATCH /{first} (updating a device of a running VM) is not supported by kvmkit"
            )));
        }
        ("PUT", "entropy", None) => done(ctl.put_entropy(body::<EntropyDevice>(req)?)),
        ("PUT", "vsock", None) => done(ctl.put_vsock(body::<Vsock>(req)?)),
        ("PUT", "logger", None) => done(ctl.put_logger(body::<Logger>(req)?)),
        ("PUT", "metrics", None) => done(ctl.put_metrics(body::<Metrics>(req)?)),
        ("PUT", "actions", None) => {
            let action: InstanceActionInfo = body(req)?;
            done(match action.action_type {
                ActionType::InstanceStart => ctl.instance_start(),
                ActionType::SendCtrlAltDel => ctl.ctrl_alt_del(),
                ActionType::FlushMetrics => ctl.flush_metrics(),
                ActionType::SendPowerButton => ctl.power_button(),
            })
        }
        ("PATCH", "vm", None) => {
            let vm: Vm = body(req)?;
            done(match vm.state {
                VmState::Paused => ctl.pause(),
                VmState::Resumed => ctl.resume(),
            })
        }
        ("PUT", "snapshot", Some("create")) => {
            done(ctl.snapshot_create(&body::<SnapshotCreateParams>(req)?))
        }
        ("PUT", "snapshot", Some("load")) => {
            done(ctl.snapshot_load(&body::<SnapshotLoadParams>(req)?))
        }
        ("PUT", "snapshot", other) => {
            return Err(bad(format!(
                "Invalid request method and/or path: PUT /snapshot/{}.",
                other.unwrap_or_default()
            )));
        }
        (
            "PUT" | "PATCH" | "GET",
            "balloon" | "mmds" | "cpu-config" | "pmem" | "serial" | "hotplug",
            _,
        ) => {
            return Err(bad(format!("/{first} is not supported by kvmkit")));
        }
        _ => {
            return Err(bad(format!(
                "Invalid request method and/or path: {method} {first}."
            )));
        }
    })
}

#[cfg(test)]
mod tests;
