//! The cost of a guest exit to userspace and of creating a VM.
//!
//! - `pio exit`/`mmio exit`: one `KVM_RUN` that returns on the guest's port or MMIO write, decoded by
//!   kvmkit-accel and dispatched through a kvmkit-bus `Bus` to a device, next to the same exit taken with
//!   raw kvm-ioctls and ignored. The ratio is kvmkit's own overhead per exit.
//! - `vm creation`: `/dev/kvm` open, VM with irqchip and PIT, guest RAM mapped and registered, one vCPU,
//!   up to its first exit; for 128 MiB and 8 GiB of RAM (RAM is mapped lazily, so size should barely
//!   matter).

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use accel::{Kvm, Vcpu, VcpuExit};
use bus::{Bus, BusDevice};
use criterion::{Criterion, criterion_group, criterion_main};
use memory::GuestRam;
use vm_memory::{Bytes, GuestAddress};

/// Long mode at 0x1000: write to port 0x10 forever.
const PIO_LOOP: &[u8] = &[0xe6, 0x10, 0xeb, 0xfc]; // out 0x10, al ; jmp $-2
/// Long mode at 0x1000: write to 0xd000_0000 (in the MMIO hole, no RAM) forever.
const MMIO_LOOP: &[u8] = &[
    0xb8, 0x00, 0x00, 0x00, 0xd0, // mov eax, 0xd0000000
    0x88, 0x00, //                   loop: mov [rax], al
    0xeb, 0xfc, //                   jmp loop
];
const MMIO_ADDR: u64 = 0xd000_0000;
const RAM: u64 = 32 << 20;

struct Sink;
impl BusDevice for Sink {}

/// A VM whose vCPU 0 runs `code` in long mode at 0x1000 (kvmkit's boot GDT and identity map).
fn guest(code: &[u8], ram_size: u64) -> (Vcpu, GuestRam, accel::Vm) {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    vm.create_irqchip(accel::IrqChip::Full).expect("irqchip");
    vm.create_pit().expect("PIT");
    let ram = GuestRam::new(ram_size).expect("guest RAM");
    ram.memory()
        .write_slice(code, GuestAddress(0x1000))
        .expect("write code");
    vm.add_guest_memory(ram.memory(), false)
        .expect("register RAM");
    let vcpu = vm.create_vcpu(0).expect("create vCPU");
    machine::cpu::setup_boot_cpu(&vcpu, ram.memory(), machine::EntryKind::Linux64, 0x1000, 0)
        .expect("long mode");
    (vcpu, ram, vm)
}

fn exits(c: &mut Criterion) {
    let mut group = c.benchmark_group("exit round trip");
    for (name, code) in [("pio", PIO_LOOP), ("mmio", MMIO_LOOP)] {
        let pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Sink)), 0x10, 1)
            .expect("place device");
        let mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(Sink)), MMIO_ADDR, 0x1000)
            .expect("place device");
        let (mut vcpu, _ram, _vm) = guest(code, RAM);
        group.bench_function(format!("{name} exit, kvmkit (accel + bus)"), |b| {
            b.iter(|| match vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut { port, data } => {
                    black_box(pio.write(u64::from(port), data));
                }
                VcpuExit::MmioWrite { addr, data } => {
                    black_box(mmio.write(addr, data));
                }
                other => panic!("unexpected exit {other:?}"),
            })
        });
        let (mut raw, _ram, _vm) = guest(code, RAM);
        group.bench_function(format!("{name} exit, raw kvm-ioctls"), |b| {
            let fd = raw_fd(&mut raw);
            b.iter(|| {
                black_box(fd.run().expect("KVM_RUN"));
            })
        });
    }
    group.finish();
}

/// The kvm-ioctls vCPU under kvmkit's wrapper, for the raw baseline.
fn raw_fd(vcpu: &mut Vcpu) -> &mut kvm_ioctls::VcpuFd {
    vcpu.fd_mut()
}

fn vm_creation(c: &mut Criterion) {
    let mut group = c.benchmark_group("vm creation");
    group.sample_size(20);
    for (name, size) in [("128 MiB", 128u64 << 20), ("8 GiB", 8 << 30)] {
        group.bench_function(format!("vm + vcpu + {name} + first exit"), |b| {
            b.iter(|| {
                let (mut vcpu, ram, vm) = guest(PIO_LOOP, size);
                assert!(matches!(vcpu.run(), Ok(VcpuExit::IoOut { .. })));
                drop((vcpu, vm, ram));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, exits, vm_creation);
criterion_main!(benches);
