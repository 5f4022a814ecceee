//! What the `kvmkit` binary does: parse the command line, build the VM, boot it, and return the
//! exit code for what happened. `main.rs` only calls [`main`].

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use crate::cli::{self, Action};
use crate::config::{SerialMode, VmConfig};
use crate::outcome::{EXIT_BAD_INPUT, EXIT_GUEST_ERROR};
use crate::run::{self, Input};
use crate::terminal::RawModeGuard;
use crate::timeline::{Event, Format, Timeline};
use crate::vm::{self, Vm};

/// Runs kvmkit with `args` (program name first) and returns the process exit code.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    crate::logger::init();
    let timeline = Arc::new(Timeline::new());
    // A panic in kvmkit itself (not the guest) still ends with the terminal restored (the panic hook)
    // and a documented exit code; the vCPU threads report their own panics as outcomes.
    std::panic::catch_unwind(|| app(args, timeline)).unwrap_or(EXIT_GUEST_ERROR)
}

fn app(args: Vec<std::ffi::OsString>, timeline: Arc<Timeline>) -> i32 {
    match cli::parse(args) {
        Ok(Action::Print(text)) => {
            print!("{text}");
            0
        }
        Ok(Action::Run(config)) => {
            let format = config.boot_timeline;
            let code = boot(config, timeline.clone());
            timeline.mark(Event::ProcessExit);
            match format {
                Some(Format::Table) => eprint!("{}", timeline.table()),
                Some(Format::Json) => eprintln!("{}", timeline.json()),
                None => {}
            }
            code
        }
        Err(e) => fail(EXIT_BAD_INPUT, &e),
    }
}

fn fail(code: i32, e: &dyn std::fmt::Display) -> i32 {
    eprintln!("kvmkit: error: {e}");
    code
}

/// The exit code for an error building the VM: bad input files and sizes are the user's (2), the
/// rest (KVM, the host) are 1.
fn build_error_code(e: &vm::Error) -> i32 {
    use crate::devices::Error as D;
    use machine::Error as M;
    use memory::Error as R;
    match e {
        vm::Error::Memory(R::TooSmall(_) | R::TooLarge(_) | R::Unaligned(_)) => EXIT_BAD_INPUT,
        vm::Error::Accel(accel::Error::VcpuId { .. }) => EXIT_BAD_INPUT,
        vm::Error::Devices(D::Disk(_) | D::Net(_)) => EXIT_BAD_INPUT,
        vm::Error::Machine(
            M::Open { .. }
            | M::KernelFormat(_)
            | M::KernelLoad { .. }
            | M::InitramfsTooLarge { .. }
            | M::Cmdline(_),
        ) => EXIT_BAD_INPUT,
        _ => EXIT_GUEST_ERROR,
    }
}

fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn boot(config: VmConfig, timeline: Arc<Timeline>) -> i32 {
    if let Some(host) = host_memory()
        && config.machine.memory > host
    {
        return fail(
            EXIT_BAD_INPUT,
            &crate::config::Error::MoreThanHost(config.machine.memory, host),
        );
    }
    let serial_out: Box<dyn Write + Send> = match &config.serial {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::Off => Box::new(std::io::sink()),
        SerialMode::File(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                return fail(
                    EXIT_BAD_INPUT,
                    &format_args!("cannot open serial output {}: {e}", path.display()),
                );
            }
        },
    };
    let mut vm = match Vm::new(&config.machine, &config.devices, serial_out, timeline) {
        Ok(vm) => vm,
        Err(e) => return fail(build_error_code(&e), &e),
    };
    // On a software KVM backend the guest must be told which instructions to avoid.
    let software_kvm = vm.is_software_kvm();
    let (cmdline, added) = if software_kvm {
        crate::software_kvm::with_backend_flags(&config.boot.cmdline)
    } else {
        (config.boot.cmdline.clone(), Vec::new())
    };
    let spec = machine::BootSpec {
        kernel: &config.boot.kernel,
        initramfs: config.boot.initramfs.as_deref(),
        cmdline: &cmdline,
    };
    if let Err(e) = vm.load_linux(&spec) {
        return fail(build_error_code(&e), &e);
    }
    let assist = vm.assist().cloned();
    if software_kvm {
        eprintln!(
            "kvmkit: /dev/kvm is a software backend (kvm_pvm); instruction assist {}; guest command line additions: {}",
            if assist.is_some() { "on" } else { "off" },
            if added.is_empty() {
                "none needed".to_owned()
            } else {
                added.join(" ")
            }
        );
    }
    let (input, raw) = match config.serial {
        SerialMode::Stdio => (Input::Stdin, RawModeGuard::new()),
        _ => (Input::None, None),
    };
    let timeline = vm.timeline().clone();
    let outcome = run::run(vm, input);
    drop(raw);
    if let Some(assist) = assist {
        eprintln!("kvmkit: instruction assists: {}", assist.counts());
        timeline.set_assists(assist.counts().nonzero());
    }
    match outcome {
        Ok(outcome) => {
            eprintln!("kvmkit: {outcome}");
            outcome.exit_code()
        }
        Err(e) => fail(EXIT_GUEST_ERROR, &e),
    }
}
