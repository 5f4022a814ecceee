//! Fuzzes what an API client sends: the HTTP request head (request line, headers, Content-Length)
//! and each JSON body kvmkit takes (boot source, machine config and its PATCH, drives, network
//! interfaces, entropy, logger, metrics, actions, VM state, snapshot create and load, a whole config
//! file), then the checks that need no files. A panic is a finding; so is a parsed head whose
//! lengths do not add up.

#![no_main]

use kvmkit::api::http::parse_head;
use kvmkit::config::firecracker::{
    BootSource, Drive, EntropyDevice, InstanceActionInfo, Logger, MachineConfiguration,
    MachineConfigurationUpdate, Metrics, NetworkInterface, SnapshotCreateParams,
    SnapshotLoadParams, Vm, VmResources,
};
use kvmkit::config::resources;
use libfuzzer_sys::fuzz_target;

fn bodies(body: &[u8]) {
    let _ = serde_json::from_slice::<BootSource>(body);
    if let Ok(m) = serde_json::from_slice::<MachineConfiguration>(body) {
        let _ = resources::machine(&m);
    }
    let _ = serde_json::from_slice::<MachineConfigurationUpdate>(body);
    let _ = serde_json::from_slice::<Drive>(body);
    if let Ok(n) = serde_json::from_slice::<NetworkInterface>(body) {
        let _ = resources::network_interface(&n);
    }
    if let Ok(e) = serde_json::from_slice::<EntropyDevice>(body) {
        let _ = resources::entropy(&e);
    }
    let _ = serde_json::from_slice::<Logger>(body);
    let _ = serde_json::from_slice::<Metrics>(body);
    let _ = serde_json::from_slice::<InstanceActionInfo>(body);
    let _ = serde_json::from_slice::<Vm>(body);
    let _ = serde_json::from_slice::<SnapshotCreateParams>(body);
    let _ = serde_json::from_slice::<SnapshotLoadParams>(body);
    if let Ok(r) = serde_json::from_slice::<VmResources>(body) {
        let _ = resources::check_together(&r.drives, &r.network_interfaces);
        if let Some(m) = &r.machine_config {
            let _ = resources::machine(m);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some((head_len, _request, content_length))) => {
            assert!(head_len <= data.len(), "the head is longer than the input");
            let end = head_len.saturating_add(content_length).min(data.len());
            bodies(&data[head_len..end]);
        }
        Ok(None) | Err(_) => bodies(data),
    }
});
