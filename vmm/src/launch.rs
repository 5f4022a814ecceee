//! Starting a VM from its configuration, and seeing it to its end: what kvmkit does once it knows
//! what to boot, whether the command line, a config file or the API said so.
//!
//! [`launch`] builds the VM (memory, devices, vCPUs), loads the kernel and starts the vCPU threads
//! and the event loop; [`finish`] waits for the VM to end, restores the terminal, reports how it
//! ended and returns the exit code.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use assist::Assist;

use crate::config::devices::ConsoleMode;
use crate::config::{SerialMode, VmConfig};
use crate::outcome::{EXIT_BAD_INPUT, EXIT_GUEST_ERROR};
use crate::run::{self, Input, RunningVm};
use crate::terminal::RawModeGuard;
use crate::timeline::Timeline;
use crate::vm::{self, Vm};

/// Why a VM could not be started, and the exit code that says so.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    /// 2 for the user's input (files, sizes), 1 for the host (KVM, threads).
    pub code: i32,
    /// One line.
    pub message: String,
}

impl LaunchError {
    fn new(code: i32, e: &dyn std::fmt::Display) -> Self {
        Self {
            code,
            message: e.to_string(),
        }
    }
}

/// A VM that runs: its controls, and what [`finish`] needs at the end.
#[derive(Debug)]
pub struct Launched {
    /// The VM.
    pub running: RunningVm,
    assist: Option<Arc<Assist>>,
    raw: Option<RawModeGuard>,
    /// What the serial console's pty or socket needs kept while the VM runs.
    _serial: SerialKeep,
}

/// What a serial console on a pty or a socket keeps while the VM runs: the pty's other side, or
/// the socket's relay (stopped, and the socket removed, when dropped).
#[derive(Debug, Default)]
struct SerialKeep {
    _pty: Option<std::os::fd::OwnedFd>,
    _socket: Option<crate::devices::hvc_socket::SocketConsole>,
}

/// The serial console's host side: its output, its input, and what it keeps.
struct SerialHost {
    output: Box<dyn Write + Send>,
    input: Input,
    keep: SerialKeep,
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
        vm::Error::Devices(D::Disk(_) | D::Net(_) | D::TooMany { .. } | D::Console(_)) => {
            EXIT_BAD_INPUT
        }
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

fn serial_host(mode: &SerialMode) -> Result<SerialHost, LaunchError> {
    let host_error = |e: &dyn std::fmt::Display| LaunchError::new(EXIT_GUEST_ERROR, e);
    Ok(match mode {
        SerialMode::Stdio => SerialHost {
            output: Box::new(std::io::stdout()),
            // stdin, unless kvmkit runs in the background of a terminal (see `console_input`).
            input: Input::Stdin,
            keep: SerialKeep::default(),
        },
        SerialMode::Off => SerialHost {
            output: Box::new(std::io::sink()),
            input: Input::None,
            keep: SerialKeep::default(),
        },
        SerialMode::File(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => SerialHost {
                output: Box::new(f),
                input: Input::None,
                keep: SerialKeep::default(),
            },
            Err(e) => {
                return Err(LaunchError::new(
                    EXIT_BAD_INPUT,
                    &format_args!("cannot open serial output {}: {e}", path.display()),
                ));
            }
        },
        SerialMode::Pty => {
            let pty = |e: std::io::Error| host_error(&format_args!("serial console pty: {e}"));
            let (master, other, path) = crate::devices::hvc::open_pty().map_err(pty)?;
            let output = master.try_clone().map_err(pty)?;
            eprintln!("kvmkit: serial console (ttyS0) on {}", path.display());
            SerialHost {
                output: Box::new(output),
                input: Input::Fd(master.into()),
                keep: SerialKeep {
                    _pty: Some(other),
                    _socket: None,
                },
            }
        }
        SerialMode::Socket(path) => {
            let (socket, output, input) = crate::devices::hvc_socket::start(path)
                .map_err(|e| LaunchError::new(EXIT_BAD_INPUT, &e))?;
            SerialHost {
                output: Box::new(output),
                input: Input::Fd(input.into()),
                keep: SerialKeep {
                    _pty: None,
                    _socket: Some(socket),
                },
            }
        }
    })
}

/// Builds the VM `config` describes, loads its kernel and starts it.
pub fn launch(config: &VmConfig, timeline: Arc<Timeline>) -> Result<Launched, LaunchError> {
    if let Some(host) = host_memory()
        && config.machine.memory > host
    {
        return Err(LaunchError::new(
            EXIT_BAD_INPUT,
            &crate::config::Error::MoreThanHost(config.machine.memory, host),
        ));
    }
    let serial = serial_host(&config.serial)?;
    let mut vm = Vm::new(&config.machine, &config.devices, serial.output, timeline)
        .map_err(|e| LaunchError::new(build_error_code(&e), &e))?;
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
    vm.load_linux(&spec)
        .map_err(|e| LaunchError::new(build_error_code(&e), &e))?;
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
    let (input, raw) = console_input(config, serial.input);
    let running = run::start(vm, input).map_err(|e| LaunchError::new(EXIT_GUEST_ERROR, &e))?;
    Ok(Launched {
        running,
        assist,
        raw,
        _serial: serial.keep,
    })
}

/// Restores the VM a snapshot saved (`snapshot`, with its RAM in `memory`): the configuration is
/// the snapshot's (with dirty-page tracking on if `track_dirty_pages`), the serial console and
/// boot timeline `base`'s. The vCPUs start paused unless `resume`. Returns the running VM and its
/// configuration.
pub fn launch_restore(
    snapshot: &std::path::Path,
    memory: &std::path::Path,
    base: &VmConfig,
    timeline: Arc<Timeline>,
    resume: bool,
    track_dirty_pages: bool,
) -> Result<(Launched, VmConfig), LaunchError> {
    let state: crate::snapshot::SnapshotState = crate::snapshot::format::load(snapshot)
        .map_err(|e| LaunchError::new(EXIT_BAD_INPUT, &e))?;
    let ram = crate::snapshot::map_memory(memory, state.machine.memory)
        .map_err(|e| LaunchError::new(EXIT_BAD_INPUT, &e))?;
    let mut machine = state.machine.clone();
    machine.track_dirty_pages |= track_dirty_pages;
    let config = VmConfig {
        boot: state.boot.clone(),
        machine,
        devices: state.devices.clone(),
        serial: base.serial.clone(),
        boot_timeline: base.boot_timeline,
    };
    let serial = serial_host(&config.serial)?;
    let mut vm = Vm::with_ram(
        &config.machine,
        &config.devices,
        serial.output,
        timeline,
        ram,
    )
    .map_err(|e| LaunchError::new(build_error_code(&e), &e))?;
    vm.restore_snapshot(&state)
        .map_err(|e| LaunchError::new(EXIT_BAD_INPUT, &e))?;
    let assist = vm.assist().cloned();
    let (input, raw) = console_input(&config, serial.input);
    let running =
        run::start_with(vm, input, !resume).map_err(|e| LaunchError::new(EXIT_GUEST_ERROR, &e))?;
    Ok((
        Launched {
            running,
            assist,
            raw,
            _serial: serial.keep,
        },
        config,
    ))
}

/// Where the UART's input comes from (`serial`, the serial console's own), and the terminal's raw
/// mode while the VM runs (for the UART on stdio, or the virtio console on kvmkit's terminal,
/// `--console tty`). A kvmkit in the background of a terminal reads nothing from it.
fn console_input(config: &VmConfig, serial: Input) -> (Input, Option<RawModeGuard>) {
    let background = crate::terminal::stdin_is_background_terminal();
    match serial {
        Input::Stdin if background => (Input::None, None),
        Input::Stdin => (Input::Stdin, RawModeGuard::new()),
        other if config.devices.console == Some(ConsoleMode::Tty) && !background => {
            (other, RawModeGuard::new())
        }
        other => (other, None),
    }
}

/// Waits for `launched` to end; restores the terminal, prints the assist counts and the outcome,
/// and returns the exit code.
pub fn finish(launched: Launched) -> i32 {
    let Launched {
        running,
        assist,
        raw,
        _serial,
    } = launched;
    let timeline = running.timeline().clone();
    let outcome = running.wait();
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
        Err(e) => {
            eprintln!("kvmkit: error: {e}");
            EXIT_GUEST_ERROR
        }
    }
}
