//! What KVM holds of a vCPU and of a VM, read out and written back: the part of a snapshot that
//! lives in the kernel. Both types serialize with serde (kvm-bindings' structures as their bytes).
//!
//! A vCPU is restored in the order KVM needs: CPUID first (it decides which MSRs and XSAVE
//! components exist), then MP state, registers, XSAVE and XCRs, debug registers, the local APIC,
//! MSRs, and last the pending events. A VM's clock, its PIC/IOAPIC and its PIT go back before its
//! vCPUs run.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Vcpu, Vm};

/// `KVM_GET/SET_IRQCHIP`'s chip ids: the two 8259 PICs and the IOAPIC.
const IRQCHIPS: [u32; 3] = [
    kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
    kvm_bindings::KVM_IRQCHIP_PIC_SLAVE,
    kvm_bindings::KVM_IRQCHIP_IOAPIC,
];
/// MSRs read per `KVM_GET_MSRS` call.
const MSR_BATCH: usize = 64;

/// Everything KVM holds of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index.
    pub id: u64,
    /// The CPUID table the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for INIT/SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, the pending-interrupt bitmap.
    pub sregs: kvm_sregs,
    /// x87, SSE and the extended state, in the XSAVE layout (4 KiB).
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lists that it would also read back.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending or injected exceptions, interrupts, NMIs, SIPIs.
    pub events: kvm_vcpu_events,
    /// The guest's TSC frequency, where KVM can say.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish()
    }
}

/// Everything KVM holds of a VM besides its vCPUs and memory.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The KVM clock (kvmclock's time base).
    pub clock: kvm_clock_data,
    /// The master PIC, the slave PIC and the IOAPIC, in that order.
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish()
    }
}

impl Vcpu {
    /// Reads the vCPU's whole state. `msr_indices` are the MSRs to try (`Kvm::msr_index_list`);
    /// those KVM refuses to read are left out. The vCPU must not be running.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState> {
        let fd = self.fd();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::ioctl("KVM_GET_CPUID2"))?;
        Ok(VcpuState {
            id: self.id(),
            cpuid: cpuid.as_slice().to_vec(),
            mp_state: fd
                .get_mp_state()
                .map_err(Error::ioctl("KVM_GET_MP_STATE"))?,
            regs: self.regs()?,
            sregs: self.sregs()?,
            xsave: fd.get_xsave().map_err(Error::ioctl("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(Error::ioctl("KVM_GET_XCRS"))?,
            debug_regs: fd
                .get_debug_regs()
                .map_err(Error::ioctl("KVM_GET_DEBUGREGS"))?,
            lapic: self.lapic()?,
            msrs: self.readable_msrs(msr_indices)?,
            events: fd
                .get_vcpu_events()
                .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// The MSRs of `indices` KVM reads, with their values. KVM stops a batch at the first MSR it
    /// refuses; that one is skipped and the rest of the batch read again.
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(MSR_BATCH)];
            let read = self.get_msrs(batch)?;
            // Past the ones read, and past the one refused if KVM stopped short of the batch's end.
            let refused = usize::from(read.len() < batch.len());
            rest = &rest[read.len() + refused..];
            out.extend(read);
        }
        Ok(out)
    }

    /// Writes back a state [`Vcpu::save_state`] read (of this vCPU or of one made the same way in
    /// another VM). The vCPU must not be running.
    pub fn restore_state(&self, state: &VcpuState) -> Result<()> {
        let fd = self.fd();
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::Ioctl {
            op: "KVM_SET_CPUID2",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.set_cpuid(&cpuid)?;
        if let Some(khz) = state.tsc_khz {
            // Not every backend can scale the TSC; a guest then sees the host's frequency.
            let _ = fd.set_tsc_khz(khz);
        }
        fd.set_mp_state(state.mp_state)
            .map_err(Error::ioctl("KVM_SET_MP_STATE"))?;
        self.set_regs(&state.regs)?;
        self.set_sregs(&state.sregs)?;
        // SAFETY: `xsave` is a whole 4 KiB `kvm_xsave`; kvmkit enables no dynamic XSAVE features
        // (AMX), so KVM reads no more than that.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(Error::ioctl("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(Error::ioctl("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(Error::ioctl("KVM_SET_DEBUGREGS"))?;
        self.set_lapic(&state.lapic)?;
        for batch in state.msrs.chunks(MSR_BATCH) {
            self.set_msrs(batch)?;
        }
        fd.set_vcpu_events(&state.events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))
    }
}

impl Vm {
    /// Reads the VM's clock, interrupt controllers and PIT (made with `create_irqchip(Full)` and
    /// `create_pit`). Its vCPUs must not be running.
    pub fn save_state(&self) -> Result<VmState> {
        let fd = self.fd();
        let mut irqchips = Vec::with_capacity(IRQCHIPS.len());
        for chip_id in IRQCHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            fd.get_irqchip(&mut chip)
                .map_err(Error::ioctl("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(VmState {
            clock: fd.get_clock().map_err(Error::ioctl("KVM_GET_CLOCK"))?,
            irqchips,
            pit: fd.get_pit2().map_err(Error::ioctl("KVM_GET_PIT2"))?,
        })
    }

    /// Writes back a state [`Vm::save_state`] read, before any vCPU runs.
    pub fn restore_state(&self, state: &VmState) -> Result<()> {
        let fd = self.fd();
        for chip in &state.irqchips {
            fd.set_irqchip(chip)
                .map_err(Error::ioctl("KVM_SET_IRQCHIP"))?;
        }
        fd.set_pit2(&state.pit)
            .map_err(Error::ioctl("KVM_SET_PIT2"))?;
        // KVM_SET_CLOCK takes only the clock value (and, where the kernel supports it, the realtime
        // pairing); the other flags KVM_GET_CLOCK reports are read-only.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock).map_err(Error::ioctl("KVM_SET_CLOCK"))
    }
}
