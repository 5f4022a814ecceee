//! One virtual CPU: register plumbing and `KVM_RUN` with exit decoding.

use std::mem::ManuallyDrop;

use kvm_bindings::{
    CpuId, Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_translation,
};
use kvm_ioctls::VcpuFd;

use crate::exit::{SystemEvent, internal_error};
use crate::{Error, InternalError, Result, VcpuExit};

/// MXCSR's index in `kvm_xsave::region` (32-bit words): byte 24 of the legacy FXSAVE area.
const XSAVE_MXCSR: usize = 6;
/// XSTATE_BV's index in `kvm_xsave::region`: byte 512, the XSAVE header.
const XSAVE_XSTATE_BV: usize = 128;
/// The SSE state component's bit in XSTATE_BV.
const XFEATURE_SSE: u32 = 1 << 1;

/// A vCPU. Owned by the thread that runs it.
#[derive(Debug)]
pub struct Vcpu {
    /// Dropped by hand in `Drop`: kept (leaked) when a kick binding may still point at its page.
    fd: ManuallyDrop<VcpuFd>,
    id: u64,
    /// A [`KickBinding`](crate::KickBinding) made for this vCPU has not been dropped.
    pub(crate) kick_bound: bool,
    /// The last `KVM_RUN` returned EINTR (maybe through a kick's `immediate_exit`).
    interrupted: bool,
    /// The VM's guest memory: the mappings KVM reads and writes while this vCPU runs stay alive as long
    /// as the vCPU does.
    _memory: crate::KeepAlive,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, id: u64, memory: crate::KeepAlive) -> Self {
        Self {
            fd: ManuallyDrop::new(fd),
            id,
            kick_bound: false,
            interrupted: false,
            _memory: memory,
        }
    }

    /// The vCPU's index (and initial APIC id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Runs the guest until it exits to userspace, and decodes why.
    ///
    /// A signal or `immediate_exit` gives [`VcpuExit::Interrupted`], not an error.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        use kvm_ioctls::VcpuExit as K;
        if std::mem::take(&mut self.interrupted) {
            self.fd.set_kvm_immediate_exit(0);
        }
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick may have set immediate_exit: clear it on the next call, after the caller has
                // looked at why it was kicked.
                self.interrupted = true;
                return Ok(VcpuExit::Interrupted);
            }
            Err(e) => return Err(Error::ioctl("KVM_RUN")(e)),
        };
        Ok(match exit {
            K::IoIn(port, data) => VcpuExit::IoIn { port, data },
            K::IoOut(port, data) => VcpuExit::IoOut { port, data },
            K::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            K::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            K::Hlt => VcpuExit::Hlt,
            K::Shutdown => VcpuExit::Shutdown,
            K::SystemEvent(kind, _) => VcpuExit::SystemEvent(SystemEvent::from(kind)),
            K::InternalError => VcpuExit::InternalError,
            K::FailEntry(reason, _) => VcpuExit::FailEntry { reason },
            K::Intr => VcpuExit::Interrupted,
            K::Exception => VcpuExit::Other("exception"),
            K::Debug(arch) => VcpuExit::Debug {
                pc: arch.pc,
                dr6: arch.dr6,
                exception: arch.exception,
            },
            K::IrqWindowOpen => VcpuExit::Other("irq window open"),
            K::IoapicEoi(_) => VcpuExit::Other("ioapic eoi"),
            K::X86Rdmsr(_) => VcpuExit::Other("rdmsr"),
            K::X86Wrmsr(exit) => VcpuExit::WriteMsr {
                index: exit.index,
                data: exit.data,
                error: exit.error,
            },
            K::Hypercall(_) => VcpuExit::Other("hypercall"),
            K::MemoryFault { .. } => VcpuExit::Other("memory fault"),
            _ => VcpuExit::Other("unknown"),
        })
    }

    /// Details of the last [`VcpuExit::InternalError`].
    pub fn internal_error(&mut self) -> InternalError {
        let run = self.fd.get_kvm_run();
        // SAFETY: reading a plain-data union member of the kvm_run page; every bit pattern is a valid
        // `internal` struct, and KVM filled it for the KVM_EXIT_INTERNAL_ERROR exit just seen.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        internal_error(internal.suberror, internal.ndata, &internal.data)
    }

    /// Binds this vCPU to the calling thread so that [`kick_current_thread`](crate::kick_current_thread),
    /// called from a signal handler on this thread, makes `KVM_RUN` return. The binding borrows the
    /// vCPU and dereferences to it: run the vCPU through it for as long as the thread runs it.
    pub fn bind_kick(&mut self) -> crate::KickBinding<'_> {
        let run = self.fd.get_kvm_run();
        let immediate_exit = std::ptr::addr_of_mut!(run.immediate_exit);
        crate::KickBinding::bind(self, immediate_exit)
    }

    /// General-purpose registers.
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(Error::ioctl("KVM_GET_REGS"))
    }

    /// Sets the general-purpose registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(Error::ioctl("KVM_SET_REGS"))
    }

    /// Special registers (segments, control registers, EFER, descriptor tables).
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(Error::ioctl("KVM_GET_SREGS"))
    }

    /// Sets the special registers.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd
            .set_sregs(sregs)
            .map_err(Error::ioctl("KVM_SET_SREGS"))
    }

    /// The SSE control/status register, from the vCPU's XSAVE image (`KVM_GET_XSAVE`; some backends
    /// report MXCSR as 0 through `KVM_GET_FPU`).
    pub fn mxcsr(&self) -> Result<u32> {
        let xsave = self.fd.get_xsave().map_err(Error::ioctl("KVM_GET_XSAVE"))?;
        Ok(xsave.region[XSAVE_MXCSR])
    }

    /// Sets the SSE control/status register through the vCPU's XSAVE image (`KVM_SET_XSAVE`, with the
    /// SSE bit set in XSTATE_BV so that KVM takes the legacy SSE state).
    pub fn set_mxcsr(&self, mxcsr: u32) -> Result<()> {
        let mut xsave = self.fd.get_xsave().map_err(Error::ioctl("KVM_GET_XSAVE"))?;
        xsave.region[XSAVE_MXCSR] = mxcsr;
        xsave.region[XSAVE_XSTATE_BV] |= XFEATURE_SSE;
        // SAFETY: the image is the 4 KiB `kvm_xsave` KVM just filled; kvmkit enables no dynamic XSAVE
        // features (AMX), so KVM reads no more than that.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(Error::ioctl("KVM_SET_XSAVE"))
    }

    /// Sets the x87/SSE state.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(Error::ioctl("KVM_SET_FPU"))
    }

    /// Sets the CPUID table the guest sees.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(Error::ioctl("KVM_SET_CPUID2"))
    }

    /// Writes MSRs; fails unless KVM accepted every one.
    pub fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<()> {
        let msrs = Msrs::from_entries(entries).map_err(|_| Error::Ioctl {
            op: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::ioctl("KVM_SET_MSRS"))?;
        if written != entries.len() {
            let failed = entries.get(written).map_or(0, |e| e.index);
            return Err(Error::Ioctl {
                op: if failed == 0 {
                    "KVM_SET_MSRS"
                } else {
                    "KVM_SET_MSRS (an MSR was refused)"
                },
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        Ok(())
    }

    /// The local APIC's register page.
    pub fn lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))
    }

    /// Sets the local APIC's register page.
    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd
            .set_lapic(lapic)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))
    }

    /// Translates a guest-virtual address through the guest's current page tables.
    pub fn translate(&self, gva: u64) -> Result<kvm_translation> {
        self.fd
            .translate_gva(gva)
            .map_err(Error::ioctl("KVM_TRANSLATE"))
    }

    /// Makes the guest take exception `vector` (with `error_code`, for the exceptions that push one)
    /// when it next runs, as if the instruction at its current RIP had raised it
    /// (`KVM_SET_VCPU_EVENTS`). For INT3 (#BP) and INTO (#OF) the return address the guest sees is
    /// the current RIP: advance RIP past the instruction first.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<()> {
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        events.exception.pending = 0;
        // Only the exception changes: leave NMI, SIPI and SMM state as they are.
        events.flags = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))
    }

    /// Reads the MSRs in `indices`, in order; fails unless KVM returned every one.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<u64>> {
        let read = self.get_msrs(indices)?;
        if read.len() != indices.len() {
            return Err(Error::Ioctl {
                op: "KVM_GET_MSRS (an MSR was refused)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        Ok(read.iter().map(|e| e.data).collect())
    }

    /// One `KVM_GET_MSRS` of `indices`: the entries KVM read, which stop before the first MSR it
    /// refuses.
    pub(crate) fn get_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::Ioctl {
            op: "KVM_GET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(Error::ioctl("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..read].to_vec())
    }

    /// Sets (or with `None` clears) an execution breakpoint at guest linear address `addr`, through
    /// `KVM_SET_GUEST_DEBUG` with debug register 0: the vCPU exits with [`VcpuExit::Debug`] before
    /// it runs the instruction there. While it is set every guest #DB exits to the VMM.
    pub fn set_hw_breakpoint(&self, addr: Option<u64>) -> Result<()> {
        let mut debug = kvm_bindings::kvm_guest_debug::default();
        if let Some(addr) = addr {
            debug.control =
                kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_USE_HW_BP;
            debug.arch.debugreg[0] = addr;
            // DR7: L0 enables breakpoint 0; R/W0 = 00 (instruction execution), LEN0 = 00.
            debug.arch.debugreg[7] = 1;
        }
        self.fd
            .set_guest_debug(&debug)
            .map_err(Error::ioctl("KVM_SET_GUEST_DEBUG"))
    }

    /// The raw kvm-ioctls handle, for what this crate does not wrap yet.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The raw kvm-ioctls handle, mutable (for `KVM_RUN` without kvmkit's decoding, e.g. as a
    /// benchmark baseline).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        if self.kick_bound {
            // A binding was leaked: a thread's kick handler may still point at this vCPU's kvm_run
            // page, so the page (and the vCPU fd that maps it) must stay.
            return;
        }
        // SAFETY: `fd` is dropped exactly once, here, and `self` is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
    }
}
