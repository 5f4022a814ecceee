//! Snapshots: a VM's state saved to a file, to be restored in another kvmkit process.
//!
//! [`format`] is the file: a versioned, checksummed header around the serialized state. The state's
//! parts come from the layers that own them: `accel::VcpuState` and `accel::VmState` (what KVM
//! holds), the devices' own state, and guest memory in a file of its own.

pub mod format;
