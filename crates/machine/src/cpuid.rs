//! The CPUID table a vCPU sees: KVM's supported set, normalised for a kvmkit guest.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// KVM's signature at leaf 0x4000_0000: "KVMKVMKVM\0\0\0".
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// PV spinlock kicks (`KVM_HC_KICK_CPU`).
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
/// PV IPIs (`KVM_HC_SEND_IPI`).
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
/// PV directed yield (`KVM_HC_SCHED_YIELD`).
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
/// The KVM paravirtual features whose guest side is a `vmcall` hypercall.
pub const KVM_HYPERCALL_FEATURES: u32 =
    KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD;

/// Hides the KVM paravirtual features that the guest drives with hypercalls (PV IPIs, PV sched yield,
/// PV spinlock kicks). On a software KVM backend (kvm_pvm) a `vmcall` never completes: the backend
/// re-runs it forever, so an SMP guest that sends its first PV IPI hangs during AP bring-up. The
/// features that work through MSRs and shared memory (kvm-clock, steal time, PV EOI, async PF) stay.
pub fn mask_hypercall_features(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries
        .iter_mut()
        .filter(|e| e.function == KVM_CPUID_FEATURES)
    {
        e.eax &= !KVM_HYPERCALL_FEATURES;
    }
}

/// The topology of the VM, as CPUID describes it: one package, one thread per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's APIC id.
    pub apic_id: u32,
    /// vCPUs in the VM.
    pub cpus: u32,
}

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from `KVM_GET_SUPPORTED_CPUID`) for the vCPU `topo.apic_id`:
/// - leaf 1: APIC id, logical-processor count, CLFLUSH size, hypervisor bit, HTT;
/// - leaf 4: cores per package and threads per cache consistent with `topo.cpus`;
/// - leaves 0xb/0x1f: x2APIC topology (SMT level 1 thread, core level `cpus`);
/// - leaf 6 (thermal/power) and 0xa (architectural PMU): zeroed, a guest cannot drive them;
/// - leaf 0x4000_0000: the KVM signature, so the guest uses kvm-clock and PV features KVM offered.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, topo: Topology) {
    let core_bits = bits_for(topo.cpus);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx =
                    (topo.apic_id << 24) | (topo.cpus.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if topo.cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 {
                    topo.cpus.max(1) - 1
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff)
                    | ((sharing & 0xfff) << 14)
                    | (((topo.cpus.max(1) - 1) & 0x3f) << 26);
            }
            6 | 0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = topo.apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = topo.cpus;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            KVM_CPUID_SIGNATURE => {
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == KVM_CPUID_SIGNATURE) {
        entries.push(kvm_cpuid_entry2 {
            function: KVM_CPUID_SIGNATURE,
            eax: KVM_CPUID_FEATURES,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0x0,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_topology_and_hypervisor_signature() {
        let mut entries = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xa, 0)];
        normalize(
            &mut entries,
            Topology {
                apic_id: 3,
                cpus: 4,
            },
        );
        let l1 = entries[0];
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(
            (entries[1].ebx, entries[1].edx, entries[1].ecx >> 8),
            (1, 3, 1)
        );
        assert_eq!(
            (entries[2].eax, entries[2].ebx, entries[2].ecx >> 8),
            (2, 4, 2)
        );
        assert_eq!(entries[3].eax, 0);
        let sig = entries
            .iter()
            .find(|e| e.function == KVM_CPUID_SIGNATURE)
            .unwrap();
        let bytes: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
    }

    #[test]
    fn hypercall_features_are_masked_and_others_kept() {
        let mut entries = vec![kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: 0x0100_7efb, // what KVM_GET_SUPPORTED_CPUID offered on a kvm_pvm host
            ..Default::default()
        }];
        mask_hypercall_features(&mut entries);
        assert_eq!(entries[0].eax, 0x0100_567b);
        assert_eq!(entries[0].eax & 0x1, 0x1, "kvm-clock stays");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut entries = vec![leaf(1, 0)];
        normalize(
            &mut entries,
            Topology {
                apic_id: 0,
                cpus: 1,
            },
        );
        assert_eq!(entries[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
