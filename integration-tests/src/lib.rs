#![doc = include_str!("../README.md")]

pub mod disks;
pub mod netns;
pub mod stream;
pub mod vsock;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvmkit::Outcome;
use kvmkit::config::{DevicesConfig, MachineConfig};
use kvmkit::run::{Input, run};
use kvmkit::software_kvm::AssistMode;
use kvmkit::vm::Vm;
use machine::kernel::EntryKind;
use vm_memory::{Bytes, GuestAddress};

/// Where tiny guests' code is loaded.
pub const CODE_ADDR: u64 = 0x1000;

/// A byte buffer shared between a guest's serial console and the test.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The CPU mode a tiny guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit real mode, CS base 0.
    Real,
    /// 64-bit long mode with the first 4 GiB identity-mapped (kvmkit's Linux boot setup).
    Long,
}

/// A tiny guest: a VM with 32 MiB of RAM, kvmkit's legacy devices, one vCPU at [`CODE_ADDR`].
pub struct TinyGuest {
    /// The VM, for adding devices before [`TinyGuest::run`].
    pub vm: Vm,
    /// What the guest wrote to COM1.
    pub serial: Capture,
}

impl TinyGuest {
    /// Loads `code` at [`CODE_ADDR`] and `data` (if any) at `data_addr`, and points vCPU 0 at the code.
    pub fn new(mode: Mode, code: &[u8], data: Option<(u64, &[u8])>) -> Self {
        Self::with_assist(mode, code, data, AssistMode::Auto)
    }

    /// [`TinyGuest::new`] with the instruction assist set to `assist` (`new` uses `auto`).
    pub fn with_assist(
        mode: Mode,
        code: &[u8],
        data: Option<(u64, &[u8])>,
        assist: AssistMode,
    ) -> Self {
        let serial = Capture::default();
        Self::with_console(mode, code, data, assist, Box::new(serial.clone()), serial)
    }

    /// [`TinyGuest::with_assist`] with the UART writing to `console` (`serial` then stays empty).
    pub fn with_console_output(
        mode: Mode,
        code: &[u8],
        data: Option<(u64, &[u8])>,
        console: Box<dyn std::io::Write + Send>,
    ) -> Self {
        Self::with_console(
            mode,
            code,
            data,
            AssistMode::Auto,
            console,
            Capture::default(),
        )
    }

    fn with_console(
        mode: Mode,
        code: &[u8],
        data: Option<(u64, &[u8])>,
        assist: AssistMode,
        console: Box<dyn std::io::Write + Send>,
        serial: Capture,
    ) -> Self {
        let machine = MachineConfig {
            memory: 32 << 20,
            cpus: 1,
            acpi: true,
            instruction_assist: assist,
            ..MachineConfig::default()
        };
        let vm = Vm::new(
            &machine,
            &DevicesConfig::default(),
            console,
            Default::default(),
        )
        .expect("create VM (is /dev/kvm usable?)");
        let mem = vm.ram().memory();
        mem.write_slice(code, GuestAddress(CODE_ADDR))
            .expect("write code");
        if let Some((addr, bytes)) = data {
            mem.write_slice(bytes, GuestAddress(addr))
                .expect("write data");
        }
        let vcpu = vm.vcpu(0).expect("vCPU 0");
        match mode {
            Mode::Real => {
                let mut sregs = vcpu.sregs().expect("get sregs");
                sregs.cs.base = 0;
                sregs.cs.selector = 0;
                vcpu.set_sregs(&sregs).expect("set sregs");
                let mut regs = vcpu.regs().expect("get regs");
                regs.rip = CODE_ADDR;
                regs.rflags = 2;
                vcpu.set_regs(&regs).expect("set regs");
            }
            Mode::Long => {
                machine::cpu::setup_boot_cpu(vcpu, mem, EntryKind::Linux64, CODE_ADDR, 0)
                    .expect("long mode setup");
            }
        }
        Self { vm, serial }
    }

    /// Runs the guest until the VM ends.
    pub fn run(self) -> (Outcome, Vec<u8>) {
        self.run_with_input(Input::None)
    }

    /// Starts the guest and returns at once, with its RAM for the test to look at.
    pub fn start(self) -> (kvmkit::run::RunningVm, memory::GuestRam) {
        let ram = self.vm.ram().clone();
        (
            kvmkit::run::start(self.vm, Input::None).expect("start VM"),
            ram,
        )
    }

    /// Runs the guest with `input` feeding its console, until the VM ends.
    pub fn run_with_input(self, input: Input) -> (Outcome, Vec<u8>) {
        let outcome = run(self.vm, input).expect("run VM");
        (outcome, self.serial.bytes())
    }
}

/// Real-mode code that writes the NUL-terminated string at `0x1100` to COM1, then pulses the i8042
/// reset line, then spins.
pub const PRINT_AND_RESET: &[u8] = &[
    0xbe, 0x00, 0x11, //       mov si, 0x1100
    0xba, 0xf8, 0x03, //       mov dx, 0x3f8
    0xac, //             loop: lodsb
    0x84, 0xc0, //             test al, al
    0x74, 0x03, //             jz done
    0xee, //                   out dx, al
    0xeb, 0xf8, //             jmp loop
    0xb0, 0xfe, //       done: mov al, 0xfe
    0xe6, 0x64, //             out 0x64, al
    0xeb, 0xfe, //             jmp $
];

/// The directory with the test guest (vmlinux, bzImage, initramfs.cpio, cmdline.txt):
/// `$KVMKIT_GUEST_DIR`, or `target/guest` in the workspace, where tools/guest/build.sh puts it.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("KVMKIT_GUEST_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest"),
        PathBuf::from,
    );
    for f in ["vmlinux", "bzImage", "initramfs.cpio", "cmdline.txt"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: build the test guest first with tools/guest/build.sh",
            dir.join(f).display()
        );
    }
    dir
}

/// Runs `command` to its end, or kills it after `limit`: its stdout, its stderr, and its exit code
/// (`None` if it was killed or died by a signal). A test that boots a guest for minutes uses this so
/// that a hung guest fails the test instead of hanging the test run.
pub fn output_within(
    command: &mut std::process::Command,
    limit: std::time::Duration,
) -> (String, String, Option<i32>) {
    output_until(command, None, limit)
}

/// [`output_within`], but once `stop_at` (if given) appears in the command's stdout the command is
/// sent SIGTERM, as a user pressing Ctrl-C would (kvmkit then stops the guest and exits 143). A test
/// that needs only the first part of a long boot stops there.
pub fn output_until(
    command: &mut std::process::Command,
    stop_at: Option<&str>,
    limit: std::time::Duration,
) -> (String, String, Option<i32>) {
    let started = std::time::Instant::now();
    let running = Background::spawn(command);
    if let Some(marker) = stop_at
        && running.wait_for_stdout(marker, limit)
    {
        running.signal(libc::SIGTERM);
    }
    running.finish(limit.saturating_sub(started.elapsed()))
}

/// A command running beside the test, whose output the test reads as it comes.
pub struct Background {
    child: std::process::Child,
    stdout_seen: Arc<Mutex<Vec<u8>>>,
    stderr_seen: Arc<Mutex<Vec<u8>>>,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Background {
    /// Starts `command` with stdin closed and stdout and stderr captured.
    pub fn spawn(command: &mut std::process::Command) -> Self {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the command");
        let (stdout, stdout_seen) = read_in_thread(child.stdout.take());
        let (stderr, stderr_seen) = read_in_thread(child.stderr.take());
        Self {
            child,
            stdout_seen,
            stderr_seen,
            stdout,
            stderr,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout_seen)).into_owned()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr_seen)).into_owned()
    }

    /// Waits until its stdout contains `marker`; false if `limit` passed first or it exited.
    pub fn wait_for_stdout(&self, marker: &str, limit: std::time::Duration) -> bool {
        self.wait_for(&self.stdout_seen, marker, limit)
    }

    /// Waits until its stderr contains `marker`; false if `limit` passed first or it exited.
    pub fn wait_for_stderr(&self, marker: &str, limit: std::time::Duration) -> bool {
        self.wait_for(&self.stderr_seen, marker, limit)
    }

    fn wait_for(&self, seen: &Mutex<Vec<u8>>, marker: &str, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if contains(&lock(seen), marker.as_bytes()) {
                return true;
            }
            if self.has_exited() {
                return contains(&lock(seen), marker.as_bytes());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    fn has_exited(&self) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return true;
        };
        // A process that has exited but was not reaped is a zombie: /proc says so.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    }

    /// Sends it signal `sig`.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, sig) };
    }

    /// Waits up to `limit` for it to end (then kills it): its stdout, stderr and exit code (`None`
    /// if it was killed or died by a signal).
    pub fn finish(mut self, limit: std::time::Duration) -> (String, String, Option<i32>) {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            match self.child.try_wait().expect("wait for the command") {
                Some(status) => break status.code(),
                None if std::time::Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let mut stderr = self.stderr.join().unwrap_or_default();
        if status.is_none() {
            stderr.push_str(&format!("\n(killed after {} s)\n", limit.as_secs()));
        }
        (stdout, stderr, status)
    }
}

fn lock(bytes: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    bytes.lock().unwrap_or_else(|e| e.into_inner())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads `pipe` to its end on a thread of its own (so that a child never blocks on a full pipe):
/// what was read so far, shared as it grows, and the thread, which hands back all of it as text.
fn read_in_thread<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> (std::thread::JoinHandle<String>, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = seen.clone();
    let thread = std::thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => lock(&shared).extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        String::from_utf8_lossy(&lock(&shared)).into_owned()
    });
    (thread, seen)
}

/// The line of `text` that starts with `prefix`; fails the test (showing `text`) if there is none.
pub fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

/// Waits up to 10 s for `path` to exist (an API socket kvmkit creates); fails the test otherwise.
pub fn wait_for_path(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// kvmkit's arguments for booting the test guest: its vmlinux and initramfs, its command line with
/// `extra` words appended (`kvmkit_init=...` and the checks' parameters), and 256 MiB. The caller
/// adds the serial port and the devices.
pub fn test_guest_args(extra: &str) -> Vec<String> {
    let guest = guest_dir();
    vec![
        "--kernel".into(),
        guest.join("vmlinux").display().to_string(),
        "--initramfs".into(),
        guest.join("initramfs.cpio").display().to_string(),
        "--cmdline".into(),
        guest_cmdline(extra),
        "--memory".into(),
        "256M".into(),
    ]
}

/// The test guest's command line (`cmdline.txt`) with `extra` words appended.
pub fn guest_cmdline(extra: &str) -> String {
    let text = std::fs::read_to_string(guest_dir().join("cmdline.txt")).expect("read cmdline.txt");
    format!("{} {extra}", text.trim())
}
