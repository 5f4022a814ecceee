//! Tiny hand-assembled guests, a few bytes each, run through kvmkit's VM, buses, legacy devices and
//! vCPU loop: the PIO and MMIO paths, the UART, the RTC, the i8042 reset, and fatal exits.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};

use bus::BusDevice;
use kvmkit::Outcome;
use kvmkit::run::Input;
use kvmkit_integration_tests::{CODE_ADDR, Mode, PRINT_AND_RESET, TinyGuest};

#[test]
fn real_mode_guest_prints_through_com1_and_resets_through_i8042() {
    let guest = TinyGuest::new(
        Mode::Real,
        PRINT_AND_RESET,
        Some((0x1100, b"Hi from real mode\n\0")),
    );
    let (outcome, out) = guest.run();
    assert_eq!(String::from_utf8_lossy(&out), "Hi from real mode\n");
    assert_eq!(outcome, Outcome::Reset);
    assert_eq!(outcome.exit_code(), 0);
}

/// Real-mode code that writes `value` to port `port` (the ACPI power registers), then spins.
fn write_port_and_spin(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![
        0xba, lo, hi, //    mov dx, port
        0xb0, 0x80, //      mov al, 0x80   ; clear WAK_STS in the sleep status register first,
        0x42, //            inc dx         ; as Linux does (port + 1)
        0xee, //            out dx, al
        0x4a, //            dec dx
        0xb0, value, //     mov al, value
        0xee,  //            out dx, al
        0xeb, 0xfe, //      jmp $
    ]
}

#[test]
fn acpi_s5_through_the_sleep_control_register_is_a_power_off() {
    // SLP_TYP 5 (the DSDT's \_S5) << 2 | SLP_EN
    let code = write_port_and_spin(legacy::ACPI_POWER.base, (5 << 2) | 0x20);
    let (outcome, _) = TinyGuest::new(Mode::Real, &code, None).run();
    assert_eq!(outcome, Outcome::PowerOff);
    assert_eq!(outcome.exit_code(), 0);
    assert_eq!(outcome.to_string(), "guest powered off");
}

#[test]
fn a_boot_timer_write_marks_the_timeline() {
    use kvmkit::timeline::Event;
    let code = [
        0xb0, 0x01, //       mov al, 1
        0xba, 0x40, 0x04, // mov dx, 0x440
        0xee, //             out dx, al
        0xb0, 0xfe, //       mov al, 0xfe
        0xe6, 0x64, //       out 0x64, al   ; i8042 reset
        0xeb, 0xfe, //       jmp $
    ];
    let guest = TinyGuest::new(Mode::Real, &code, None);
    let timeline = guest.vm.timeline().clone();
    assert_eq!(timeline.get(Event::GuestMarker), None);
    let (outcome, _) = guest.run();
    assert_eq!(outcome, Outcome::Reset);
    let marker = timeline.get(Event::GuestMarker).unwrap();
    let shutdown = timeline.get(Event::GuestShutdown).unwrap();
    assert!(timeline.get(Event::FirstKvmRun).unwrap() <= marker && marker <= shutdown);
}

#[test]
fn acpi_reset_register_reboots() {
    let code = write_port_and_spin(legacy::ACPI_POWER.base + 2, 1);
    let (outcome, _) = TinyGuest::new(Mode::Real, &code, None).run();
    assert_eq!(outcome, Outcome::Reset);
}

#[test]
fn pio_reads_reach_the_rtc_and_unclaimed_ports_read_all_ones() {
    let code = [
        0xb0, 0x0d, //       mov al, 0x0d      ; RTC register D
        0xe6, 0x70, //       out 0x70, al
        0xe4, 0x71, //       in al, 0x71       ; 0x80: valid RAM and time
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, //             out dx, al
        0xba, 0x00, 0x05, // mov dx, 0x500     ; no device here
        0xec, //             in al, dx         ; 0xff
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, //             out dx, al
        0xb0, 0xfe, //       mov al, 0xfe
        0xe6, 0x64, //       out 0x64, al      ; i8042: pulse reset
        0xeb, 0xfe, //       jmp $
    ];
    let (outcome, out) = TinyGuest::new(Mode::Real, &code, None).run();
    assert_eq!(out, vec![0x80, 0xff]);
    assert_eq!(outcome, Outcome::Reset);
}

/// An MMIO device that records writes and answers reads at offset 4 with "OK".
#[derive(Default)]
struct Scratch {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Scratch {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 4 && data.len() >= 2 {
            data[..2].copy_from_slice(b"OK");
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn long_mode_guest_drives_the_mmio_bus() {
    let code = [
        0xb8, 0x00, 0x00, 0x00, 0xd0, //       mov eax, 0xd0000000
        0xc7, 0x00, 0x78, 0x56, 0x34, 0x12, // mov dword [rax], 0x12345678
        0x8b, 0x58, 0x04, //                   mov ebx, [rax+4]
        0x66, 0xba, 0xf8, 0x03, //             mov dx, 0x3f8
        0x88, 0xd8, //                         mov al, bl
        0xee, //                               out dx, al
        0xc1, 0xeb, 0x08, //                   shr ebx, 8
        0x88, 0xd8, //                         mov al, bl
        0xee, //                               out dx, al
        0xb0, 0xfe, //                         mov al, 0xfe
        0xe6, 0x64, //                         out 0x64, al
        0xeb, 0xfe, //                         jmp $
    ];
    let guest = TinyGuest::new(Mode::Long, &code, None);
    let dev = Arc::new(Mutex::new(Scratch::default()));
    guest
        .vm
        .devices()
        .buses()
        .mmio
        .insert(dev.clone(), 0xd000_0000, 0x1000)
        .unwrap();
    let (outcome, out) = guest.run();
    assert_eq!(
        dev.lock().unwrap().writes,
        vec![(0, vec![0x78, 0x56, 0x34, 0x12])]
    );
    assert_eq!(out, b"OK");
    assert_eq!(outcome, Outcome::Reset);
}

#[test]
fn ud2_with_no_usable_idt_is_a_triple_fault_with_its_rip() {
    let (outcome, _) = TinyGuest::new(Mode::Long, &[0x0f, 0x0b], None).run();
    match outcome {
        Outcome::TripleFault { vcpu: 0, rip } => assert_eq!(rip, CODE_ADDR),
        other => panic!("expected a triple fault, got {other}"),
    }
    assert_eq!(
        Outcome::TripleFault {
            vcpu: 0,
            rip: CODE_ADDR
        }
        .exit_code(),
        1
    );
}

#[test]
fn a_kernel_panic_on_the_console_makes_the_reset_a_crash() {
    let text = b"[ 1.0] Kernel panic - not syncing: test\n\0";
    let (outcome, out) = TinyGuest::new(Mode::Real, PRINT_AND_RESET, Some((0x1100, text))).run();
    assert!(out.starts_with(b"[ 1.0] Kernel panic"));
    assert_eq!(outcome, Outcome::GuestPanic);
    assert_eq!(outcome.exit_code(), 1);
}

#[test]
fn guest_writes_to_every_uart_register_are_survived() {
    // Write 0xff to all 8 UART registers (including LCR with DLAB, MCR loopback), then reset.
    let mut code = vec![0xb0, 0xff]; // mov al, 0xff
    for port in 0x3f8u16..0x400 {
        let [lo, hi] = port.to_le_bytes();
        code.extend_from_slice(&[0xba, lo, hi, 0xee]); // mov dx, port ; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let (outcome, _) = TinyGuest::new(Mode::Real, &code, None).run();
    assert_eq!(outcome, Outcome::Reset);
}

/// Real mode: echo every byte received on COM1 until a newline, then reset.
const ECHO_UNTIL_NEWLINE: &[u8] = &[
    0xba, 0xfd, 0x03, // start: mov dx, 0x3fd   ; LSR
    0xec, //          wait:  in al, dx
    0xa8, 0x01, //           test al, 1         ; data ready?
    0x74, 0xfb, //           jz wait
    0xba, 0xf8, 0x03, //     mov dx, 0x3f8
    0xec, //                 in al, dx          ; RBR
    0xee, //                 out dx, al         ; THR: echo
    0x3c, 0x0a, //           cmp al, 0x0a
    0x75, 0xef, //           jne start
    0xb0, 0xfe, //           mov al, 0xfe
    0xe6, 0x64, //           out 0x64, al
    0xeb, 0xfe, //           jmp $
];

#[test]
fn console_input_reaches_the_guest_through_the_uart() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    // More than the UART's 64-byte FIFO, so the event loop has to hold some back and retry.
    let text: Vec<u8> = (0..200u32)
        .map(|i| b'a' + (i % 26) as u8)
        .chain([b'\n'])
        .collect();
    writer.write_all(&text).unwrap();
    let guest = TinyGuest::new(Mode::Real, ECHO_UNTIL_NEWLINE, None);
    let (outcome, out) = guest.run_with_input(Input::Fd(reader.into()));
    assert_eq!(out, text);
    assert_eq!(outcome, Outcome::Reset);
}

#[test]
fn ctrl_a_x_on_the_console_quits() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"ab\x01x").unwrap();
    // The guest echoes "ab" and waits for a newline that never comes; the escape ends the VM.
    let guest = TinyGuest::new(Mode::Real, ECHO_UNTIL_NEWLINE, None);
    let (outcome, out) = guest.run_with_input(Input::Fd(reader.into()));
    assert_eq!(outcome, Outcome::Quit);
    assert!(b"ab".starts_with(&out), "{out:?}");
}

/// Answers every read with one 32-bit value.
struct Answer(u32);

impl BusDevice for Answer {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        let bytes = self.0.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes[i % 4];
        }
    }
}

#[test]
fn a_device_plugged_into_the_running_vm_answers_the_guest() {
    // Long mode: read 0xd0000000 until it says 0x12345678 (nothing there reads all ones), then print
    // "OK" and reset.
    let code = [
        0xb8, 0x00, 0x00, 0x00, 0xd0, //       mov eax, 0xd0000000
        0x8b, 0x18, //                         loop: mov ebx, [rax]
        0x81, 0xfb, 0x78, 0x56, 0x34, 0x12, // cmp ebx, 0x12345678
        0x75, 0xf6, //                         jne loop
        0x66, 0xba, 0xf8, 0x03, //             mov dx, 0x3f8
        0xb0, b'O', 0xee, //                   mov al, 'O' ; out dx, al
        0xb0, b'K', 0xee, //                   mov al, 'K' ; out dx, al
        0xb0, 0xfe, 0xe6, 0x64, //             mov al, 0xfe ; out 0x64, al
        0xeb, 0xfe, //                         jmp $
    ];
    let guest = TinyGuest::new(Mode::Long, &code, None);
    let buses = guest.vm.devices().buses().clone();
    let serial = guest.serial.clone();
    let (running, _ram) = guest.start();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        serial.bytes().is_empty(),
        "the guest saw a device too early"
    );
    buses
        .mmio
        .insert(
            Arc::new(Mutex::new(Answer(0x1234_5678))),
            0xd000_0000,
            0x1000,
        )
        .unwrap();
    assert_eq!(running.wait().unwrap(), Outcome::Reset);
    assert_eq!(serial.bytes(), b"OK");
}

/// A console reader that never reads: every write blocks until the test ends.
struct NeverReads(std::sync::mpsc::Receiver<()>);

impl Write for NeverReads {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_console_nobody_reads_neither_blocks_the_guest_nor_a_stop() {
    // Real-mode code that writes 'x' to COM1 forever.
    let flood = [
        0xba, 0xf8, 0x03, //       mov dx, 0x3f8
        0xb0, b'x', //             mov al, 'x'
        0xee, //             loop: out dx, al
        0xeb, 0xfd, //             jmp loop
    ];
    let (held, never) = std::sync::mpsc::channel();
    let guest =
        TinyGuest::with_console_output(Mode::Real, &flood, None, Box::new(NeverReads(never)));
    let vm = kvmkit::run::start(guest.vm, Input::None).unwrap();
    let handle = vm.handle().clone();
    let missed = || {
        handle
            .counters()
            .into_iter()
            .find(|(group, _)| group == "uart")
            .and_then(|(_, c)| c.into_iter().find(|(k, _)| *k == "missed_write_count"))
            .map(|(_, n)| n)
            .unwrap()
    };
    // The guest goes on printing past the console's buffer: the bytes it loses are counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while missed() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest stopped printing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = missed();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(missed() > before, "the vCPU is blocked");
    // A stop ends the VM although the console's writer is stuck in a write.
    vm.stop();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vm.wait());
    });
    let outcome = done
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the VM did not stop");
    assert_eq!(outcome.unwrap(), Outcome::Stopped);
    drop(held);
}
