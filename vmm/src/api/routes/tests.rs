//! The API through its socket with the Rust client: configuring, and every error path a VM that
//! has not started can show. (Starting, pausing and stopping a real guest: integration-tests'
//! api_linux.rs.)

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::api::client::call;
use crate::config::{BootConfig, SerialMode, VmConfig};
use crate::controller::Controller;
use crate::timeline::Timeline;

struct Api {
    sock: PathBuf,
    _server: crate::api::Server,
    dir: PathBuf,
}

impl Api {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kvmkit-routes-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = VmConfig {
            boot: BootConfig {
                kernel: PathBuf::new(),
                initramfs: None,
                cmdline: String::new(),
            },
            machine: Default::default(),
            devices: Default::default(),
            serial: SerialMode::Off,
            boot_timeline: None,
        };
        let ctl = Controller::new("test-vm", base, Arc::new(Timeline::new()));
        let sock = dir.join("api.sock");
        let server = crate::api::serve(&sock, ctl).unwrap();
        Self {
            sock,
            _server: server,
            dir,
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        call(&self.sock, method, path, body).unwrap()
    }

    /// A 400 whose fault_message contains `needle`.
    fn fails(&self, method: &str, path: &str, body: Option<&str>, needle: &str) {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 400, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let msg = v["fault_message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }

    fn get(&self, path: &str) -> Value {
        let (status, text) = self.call("GET", path, None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn info_version_and_the_default_machine() {
    let api = Api::new("info");
    let info = api.get("/");
    assert_eq!(info["id"], "test-vm");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "kvmkit");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        api.get("/version")["firecracker_version"],
        env!("CARGO_PKG_VERSION")
    );
    let m = api.get("/machine-config");
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(1), Some(256))
    );
}

#[test]
fn a_configuration_is_assembled_and_shown_in_firecrackers_layout() {
    let api = Api::new("config");
    let kernel = api.file("vmlinux", b"not really a kernel");
    let disk = api.file("root.img", &[0u8; 4096]);
    let put = |path: &str, body: String| {
        let (status, text) = api.call("PUT", path, Some(&body));
        assert_eq!(status, 204, "PUT {path}: {text}");
    };
    put(
        "/boot-source",
        format!(r#"{{"kernel_image_path":"{kernel}","boot_args":"console=ttyS0"}}"#),
    );
    put(
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":512}"#.into(),
    );
    put(
        "/drives/rootfs",
        format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{disk}","is_root_device":true,"is_read_only":false}}"#
        ),
    );
    put("/entropy", "{}".into());
    put(
        "/vsock",
        r#"{"vsock_id":"vsock0","guest_cid":3,"uds_path":"/run/v.sock"}"#.into(),
    );
    let (status, _) = api.call("PATCH", "/machine-config", Some(r#"{"mem_size_mib":1024}"#));
    assert_eq!(status, 204);
    let c = api.get("/vm/config");
    assert_eq!(c["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(c["machine-config"]["vcpu_count"], 2);
    assert_eq!(c["machine-config"]["mem_size_mib"], 1024);
    assert_eq!(c["drives"][0]["drive_id"], "rootfs");
    assert_eq!(c["drives"][0]["is_root_device"], true);
    assert!(c["entropy"].is_object());
    assert!(c["balloon"].is_null());
    assert_eq!(c["vsock"]["guest_cid"], 3);
    assert_eq!(c["vsock"]["uds_path"], "/run/v.sock");
    assert_eq!(c["network-interfaces"], serde_json::json!([]));
    // The same drive again replaces it; a second root device does not go in.
    put(
        "/drives/rootfs",
        format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{disk}","is_root_device":true,"is_read_only":true}}"#
        ),
    );
    assert_eq!(api.get("/vm/config")["drives"].as_array().unwrap().len(), 1);
    api.fails(
        "PUT",
        "/drives/other",
        Some(&format!(
            r#"{{"drive_id":"other","path_on_host":"{disk}","is_root_device":true}}"#
        )),
        "A root block device already exists!",
    );
}

#[test]
fn every_request_error_is_a_400_with_a_fault_message() {
    let api = Api::new("errors");
    api.fails(
        "GET",
        "/foo",
        None,
        "Invalid request method and/or path: GET foo.",
    );
    api.fails(
        "DELETE",
        "/",
        None,
        "Invalid request method and/or path: DELETE",
    );
    api.fails("PUT", "/boot-source", None, "Empty PUT request.");
    api.fails("PATCH", "/vm", None, "Empty PATCH request.");
    api.fails("GET", "/", Some("{}"), "GET request cannot have a body.");
    api.fails(
        "PUT",
        "/boot-source",
        Some("{"),
        "An error occurred when deserializing",
    );
    api.fails(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/k","bogus":1}"#),
        "unknown field `bogus`",
    );
    api.fails(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#),
        "cannot be opened",
    );
    api.fails(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":0,"mem_size_mib":128}"#),
        "number of vCPUs",
    );
    api.fails(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":128,"smt":true}"#),
        "smt is not supported",
    );
    api.fails(
        "PATCH",
        "/machine-config",
        Some("{}"),
        "Empty PATCH request.",
    );
    api.fails(
        "PUT",
        "/drives/a",
        Some(r#"{"drive_id":"b","is_root_device":false}"#),
        "does not match the id from the body",
    );
    api.fails(
        "PUT",
        "/drives/a-b",
        Some(r#"{"drive_id":"a-b","is_root_device":false}"#),
        "alphanumeric characters and underscores",
    );
    api.fails("PUT", "/drives/", Some("{}"), "The ID cannot be empty.");
    api.fails(
        "PUT",
        "/drives/a",
        Some(r#"{"drive_id":"a","is_root_device":false}"#),
        "has no path_on_host",
    );
    api.fails(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#),
        "The id from the path [eth0] does not match the id from the body [eth1]!",
    );
    api.fails(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","host_dev_name":"kvmkit-none0"}"#),
        "no tap device named",
    );
    api.fails(
        "PUT",
        "/entropy",
        Some(r#"{"rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}"#),
        "rate_limiter is not supported",
    );
    api.fails(
        "PUT",
        "/logger",
        Some(r#"{"level":"Loud"}"#),
        "invalid log level",
    );
    api.fails("PUT", "/vsock", Some("{}"), "missing field `guest_cid`");
    api.fails(
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid":2,"uds_path":"/run/v.sock"}"#),
        "guest CID 2 is not usable",
    );
    api.fails(
        "PUT",
        "/balloon",
        Some("{}"),
        "/balloon is not supported by kvmkit",
    );
    api.fails(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"Reboot"}"#),
        "unknown variant `Reboot`",
    );
    // Operations on a VM that has not started.
    for action in ["SendCtrlAltDel", "FlushMetrics", "SendPowerButton"] {
        api.fails(
            "PUT",
            "/actions",
            Some(&format!(r#"{{"action_type":"{action}"}}"#)),
            "not supported before starting the microVM",
        );
    }
    api.fails(
        "PATCH",
        "/vm",
        Some(r#"{"state":"Paused"}"#),
        "not supported before starting the microVM",
    );
    api.fails(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        "Cannot start microvm without kernel configuration.",
    );
    // Snapshots: creating one needs a (paused) VM; loading one needs a memory file and a snapshot.
    api.fails(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}"#),
        "not supported before starting the microVM",
    );
    api.fails(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"/tmp/s"}"#),
        "either `mem_backend` or `mem_file_path` is required",
    );
    api.fails(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"/tmp/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#),
        "exclusively is required",
    );
    api.fails(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#),
        "the Uffd memory backend is not supported",
    );
    api.fails(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"/nonexistent/s","mem_file_path":"/nonexistent/m"}"#),
        "Load snapshot error: snapshot /nonexistent/s",
    );
    api.fails("PUT", "/snapshot/bogus", Some("{}"), "PUT /snapshot/bogus.");
    assert_eq!(
        api.get("/")["state"],
        "Not started",
        "nothing above started it"
    );
}

#[test]
fn a_kernel_that_is_not_one_fails_instance_start_with_a_reason() {
    let api = Api::new("badkernel");
    let kernel = api.file("vmlinux", b"\x7fELF but not really");
    let (status, _) = api.call(
        "PUT",
        "/boot-source",
        Some(&format!(r#"{{"kernel_image_path":"{kernel}"}}"#)),
    );
    assert_eq!(status, 204);
    api.fails(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        "Start microvm error: ",
    );
    assert_eq!(api.get("/")["state"], "Not started");
}

#[test]
fn metrics_are_written_on_flush_only_once_configured_once() {
    let api = Api::new("metrics");
    let path = api.dir.join("metrics.json");
    let body = format!(r#"{{"metrics_path":"{}"}}"#, path.display());
    assert_eq!(api.call("PUT", "/metrics", Some(&body)).0, 204);
    assert!(path.exists());
    api.fails(
        "PUT",
        "/metrics",
        Some(&body),
        "Reinitialization of metrics not allowed.",
    );
    api.fails(
        "PUT",
        "/metrics",
        Some(r#"{"metrics_path":"/nonexistent/dir/m.json"}"#),
        "Metrics error",
    );
}
