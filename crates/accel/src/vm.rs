//! A KVM virtual machine: memory slots, the in-kernel irqchip (whole or split) and PIT, irqfds,
//! ioeventfds, vCPUs.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result, Vcpu};

/// Guest-physical address of the three pages KVM needs for the TSS on Intel hosts; it sits in the
/// 32-bit MMIO hole just below the IOAPIC/LAPIC, where no RAM is.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Which interrupt controllers KVM emulates in the kernel ([`Vm::create_irqchip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// The PIC pair, the IOAPIC and every vCPU's LAPIC (`KVM_CREATE_IRQCHIP`).
    Full,
    /// The LAPICs only (`KVM_CAP_SPLIT_IRQCHIP`): the VMM emulates the IOAPIC (and PIC) itself, and
    /// its IOAPIC has `ioapic_pins` routes that KVM reserves in the GSI routing table.
    Split {
        /// The number of IOAPIC pins (24 on a PC).
        ioapic_pins: u32,
    },
}

/// A VM with its in-kernel interrupt controllers, and the guest memory registered with it.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    max_vcpus: usize,
    max_slots: usize,
    /// Keeps every registered mapping alive as long as KVM may access it: shared with every vCPU, so
    /// the mappings outlive both this handle and all vCPUs.
    memory: crate::KeepAlive,
    next_slot: std::sync::atomic::AtomicU32,
    /// The slots KVM logs writes to (`KVM_MEM_LOG_DIRTY_PAGES`): number and size, in the order
    /// they were added.
    logged_slots: Mutex<Vec<(u32, usize)>>,
}

impl Vm {
    pub(crate) fn new(fd: VmFd, max_vcpus: usize, max_slots: usize) -> Result<Self> {
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(Error::ioctl("KVM_SET_TSS_ADDR"))?;
        Ok(Self {
            fd,
            max_vcpus,
            max_slots,
            memory: Arc::new(Mutex::new(Vec::new())),
            next_slot: std::sync::atomic::AtomicU32::new(0),
            logged_slots: Mutex::new(Vec::new()),
        })
    }

    /// Creates the interrupt controllers KVM emulates in the kernel. Must come before the first vCPU.
    pub fn create_irqchip(&self, chip: IrqChip) -> Result<()> {
        match chip {
            IrqChip::Full => self
                .fd
                .create_irq_chip()
                .map_err(Error::ioctl("KVM_CREATE_IRQCHIP")),
            IrqChip::Split { ioapic_pins } => {
                let cap = kvm_bindings::kvm_enable_cap {
                    cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                    args: [u64::from(ioapic_pins), 0, 0, 0],
                    ..Default::default()
                };
                self.fd
                    .enable_cap(&cap)
                    .map_err(Error::ioctl("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))
            }
        }
    }

    /// Creates the in-kernel PIT (i8254), its speaker port a dummy. Needs [`IrqChip::Full`]'s PIC.
    pub fn create_pit(&self) -> Result<()> {
        let pit = kvm_pit_config {
            // The dummy speaker port (0x61) keeps the guest's PIT speaker checks away from userspace.
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(Error::ioctl("KVM_CREATE_PIT2"))
    }

    /// Registers every region of `memory` as a KVM memory slot. The VM keeps a handle on the mappings so
    /// they outlive every use KVM makes of them. With `log_dirty_pages`, KVM records which pages
    /// the guest writes ([`Vm::take_dirty_log`]), at the cost of write faults on the first write
    /// to each page after every read of the log.
    ///
    /// The memory is vm-memory's mmap-backed `GuestMemoryMmap` (kvmkit-memory's, with its dirty-page
    /// bitmap, or one with any other bitmap or none): KVM is handed the host addresses
    /// of its mappings, and keeping a clone of it alive must keep those mappings alive, which a
    /// `GuestMemoryMmap`'s clones do (they share the mappings) and an arbitrary
    /// [`GuestMemoryBackend`] need not.
    pub fn add_guest_memory<B: Bitmap + Send + Sync + 'static>(
        &self,
        memory: &GuestMemoryMmap<B>,
        log_dirty_pages: bool,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        for region in memory.iter() {
            let next = self.next_slot.fetch_add(1, Ordering::SeqCst);
            if next as usize >= self.max_slots {
                return Err(Error::TooManySlots(self.max_slots));
            }
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| Error::TooManySlots(self.max_slots))?;
            let slot = kvm_userspace_memory_region {
                slot: next,
                flags: if log_dirty_pages {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by `memory`;
            // a clone of `memory` (which shares the mappings) is kept in `self.memory` below, which this
            // VM and each of its vCPUs hold, so the mapping stays valid while KVM can run guest code.
            unsafe { self.fd.set_user_memory_region(slot) }
                .map_err(Error::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
            if log_dirty_pages {
                self.logged_slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((next, region.len() as usize));
            }
        }
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(memory.clone()));
        Ok(())
    }

    /// The pages the guest wrote since the last call (or since the memory was added), one bitmap
    /// per slot added with `log_dirty_pages`, in the order they were added: bit `i` of word
    /// `w` is the slot's page `64 * w + i`. Reading clears KVM's log (`KVM_GET_DIRTY_LOG`). Only
    /// the guest's writes are there: the VMM's own writes to guest memory are not.
    pub fn take_dirty_log(&self) -> Result<Vec<Vec<u64>>> {
        let slots = self
            .logged_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        slots
            .into_iter()
            .map(|(slot, size)| {
                self.fd
                    .get_dirty_log(slot, size)
                    .map_err(Error::ioctl("KVM_GET_DIRTY_LOG"))
            })
            .collect()
    }

    /// Makes every write to `event` raise interrupt line `gsi` (edge) in the in-kernel irqchip.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(Error::ioctl("KVM_IRQFD"))
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `event` inside KVM
    /// (`KVM_IOEVENTFD`): the vCPU does not exit to userspace for it.
    pub fn register_ioeventfd(&self, event: &EventFd, addr: u64, datamatch: u32) -> Result<()> {
        self.fd
            .register_ioevent(event, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(Error::ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_ioeventfd`] (device removal).
    pub fn unregister_ioeventfd(&self, event: &EventFd, addr: u64, datamatch: u32) -> Result<()> {
        self.fd
            .unregister_ioevent(event, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(Error::ioctl("KVM_IOEVENTFD(deassign)"))
    }

    /// Undoes [`Vm::register_irqfd`] (device removal).
    pub fn unregister_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(event, gsi)
            .map_err(Error::ioctl("KVM_IRQFD(deassign)"))
    }

    /// Sets interrupt line `gsi` to `level` (`KVM_IRQ_LINE`).
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(Error::ioctl("KVM_IRQ_LINE"))
    }

    /// The largest number of vCPUs this VM may have.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// Creates the vCPU with APIC id `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        if id as usize >= self.max_vcpus {
            return Err(Error::VcpuId {
                id,
                max: self.max_vcpus,
            });
        }
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(Error::ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, id, self.memory.clone()))
    }

    /// Makes the guest's writes to each MSR in `indices` exit to userspace
    /// ([`VcpuExit::WriteMsr`](crate::VcpuExit::WriteMsr)) instead of reaching KVM: enables
    /// `KVM_CAP_X86_USER_SPACE_MSR` for filtered MSRs and installs a `KVM_X86_SET_MSR_FILTER` that
    /// denies writes to them and allows everything else. Userspace then owns those writes.
    pub fn trap_msr_writes(&self, indices: &[u32]) -> Result<()> {
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(Error::ioctl("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
        // One range per MSR, its one bit 0: denied, so the write exits to userspace.
        let deny = [0u8];
        let ranges: Vec<MsrFilterRange<'_>> = indices
            .iter()
            .map(|&base| MsrFilterRange {
                flags: MsrFilterRangeFlags::WRITE,
                base,
                msr_count: 1,
                bitmap: &deny,
            })
            .collect();
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
            .map_err(Error::ioctl("KVM_X86_SET_MSR_FILTER"))
    }

    /// The raw kvm-ioctls handle, for what this crate does not wrap yet.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
