//! The command line, in Cloud Hypervisor's shape: `--kernel`, `--initramfs`, `--cmdline`, `--memory`,
//! `--cpus`, `--serial`, `--acpi`, `--disk`, `--net`, `--rng`, `--boot-timeline`,
//! `--instruction-assist`, `--log-level`; and Firecracker's control-plane flags: `--api-sock`,
//! `--config-file`, `--no-api`, `--id`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

use crate::config::{
    self, BootConfig, DEFAULT_CMDLINE, DevicesConfig, MachineConfig, SerialMode, VmConfig, devices,
};

/// The largest `--cpus` accepted (the limit of the xAPIC ids the MP table can name).
pub const MAX_CPUS: u32 = machine::mptable::MAX_CPUS;

/// Where the VM's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line (`--kernel` and the device flags): [`Invocation::vm`] is the VM to boot.
    CommandLine,
    /// A Firecracker-style JSON file (`--config-file`).
    ConfigFile(PathBuf),
    /// The API (`--api-sock` alone): kvmkit waits for `InstanceStart` (or `PUT /snapshot/load`).
    Api,
    /// A snapshot (`--restore SNAPSHOT,mem=FILE`): the VM goes on where it was saved.
    Restore {
        /// The state file.
        snapshot: PathBuf,
        /// The memory file.
        memory: PathBuf,
        /// Log dirty pages in the restored VM.
        track_dirty_pages: bool,
    },
}

/// A run of kvmkit: what to boot, and how it is controlled.
#[derive(Debug)]
pub struct Invocation {
    /// Where the configuration comes from.
    pub source: Source,
    /// The VM from the command line; for the other sources, the settings Firecracker's
    /// configuration has no place for (serial console, ACPI, instruction assist, boot timeline).
    pub vm: VmConfig,
    /// Serve the API on this socket.
    pub api_sock: Option<PathBuf>,
    /// The instance id `GET /` reports.
    pub id: String,
    /// The log level, if given.
    pub log_level: Option<log::LevelFilter>,
    /// The system call filters.
    pub seccomp: crate::seccomp::Mode,
    /// `--landlock`: restrict kvmkit's files to the configuration's and these extra rules.
    pub landlock: Option<Vec<crate::landlock::Rule>>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Action {
    /// Boot a VM (or wait for the API to configure one).
    Run(Box<Invocation>),
    /// Print this text (help or version) to stdout and exit 0.
    Print(String),
}

/// The instance id without `--id` (Firecracker's).
pub const DEFAULT_ID: &str = "anonymous-instance";

/// The flags that describe the VM itself, which a config file or the API gives instead.
const VM_FLAGS: [&str; 8] = [
    "kernel",
    "initramfs",
    "cmdline",
    "memory",
    "cpus",
    "disk",
    "net",
    "rng",
];

/// Errors from the command line: one line each, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clap's own parse error (unknown flag, missing value...), first line only.
    #[error("{0}")]
    Usage(String),
    /// A value that parsed but is not valid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A `--log-level` that is not a level.
    #[error(transparent)]
    LogLevel(#[from] crate::logger::Error),
}

fn command() -> Command {
    Command::new("kvmkit")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Boot a Linux microVM on KVM")
        .after_help(
            "Give the VM with --kernel (and the device flags), with --config-file (Firecracker's JSON \
             layout), or through the API: with --api-sock alone kvmkit waits for PUT /boot-source ... \
             PUT /actions InstanceStart (docs/api.md).\n\
             Logging: --log-level, or the KVMKIT_LOG environment variable (off, error, warn, info, \
             debug, trace; default warn).\n\
             Exit status: 0 when the guest reboots or powers off; 1 when it crashes (triple fault, \
             KVM internal error, kernel panic); 2 for bad arguments or unusable input files; 128+N when \
             stopped by signal N.\n\
             Serial console on stdio: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.",
        )
        .arg(
            Arg::new("kernel")
                .long("kernel")
                .value_name("PATH")
                .required_unless_present_any(["config-file", "api-sock", "restore"])
                .value_parser(clap::value_parser!(PathBuf))
                .help("Kernel image: uncompressed ELF vmlinux (PVH) or bzImage"),
        )
        .arg(
            Arg::new("config-file")
                .long("config-file")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .conflicts_with_all(VM_FLAGS)
                .help("Boot the VM a JSON file describes, in Firecracker's --config-file layout"),
        )
        .arg(
            Arg::new("restore")
                .long("restore")
                .value_name("SNAPSHOT,mem=FILE")
                .conflicts_with_all(VM_FLAGS)
                .conflicts_with("config-file")
                .help(
                    "Restore a snapshot (PUT /snapshot/create made it) and run it; \
                     ,track_dirty_pages=on logs written pages for diff snapshots of it",
                ),
        )
        .arg(
            Arg::new("api-sock")
                .long("api-sock")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Serve the Firecracker-compatible REST API on this Unix socket (created 0600, \
                     removed at exit); alone, wait for the VM's configuration through it",
                ),
        )
        .arg(
            Arg::new("no-api")
                .long("no-api")
                .action(ArgAction::SetTrue)
                .conflicts_with("api-sock")
                .help("No API socket (Firecracker's flag; kvmkit serves none without --api-sock)"),
        )
        .arg(
            Arg::new("id")
                .long("id")
                .value_name("ID")
                .default_value(DEFAULT_ID)
                .help("The instance id the API reports"),
        )
        .arg(
            Arg::new("log-level")
                .long("log-level")
                .value_name("LEVEL")
                .help("off, error, warn, info, debug or trace (default: KVMKIT_LOG, else warn)"),
        )
        .arg(
            Arg::new("initramfs")
                .long("initramfs")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Initramfs loaded at the top of low memory"),
        )
        .arg(
            Arg::new("cmdline")
                .long("cmdline")
                .value_name("STR")
                .default_value(DEFAULT_CMDLINE)
                .help("Kernel command line"),
        )
        .arg(
            Arg::new("memory")
                .long("memory")
                .value_name("SIZE")
                .default_value("256M")
                .help(
                    "Guest RAM: 256M, 2G, size=512M[,thp=on|off][,track_dirty_pages=on|off]; a \
                     bare number is MiB; thp (transparent huge pages) and track_dirty_pages (for \
                     diff snapshots) are off by default",
                ),
        )
        .arg(
            Arg::new("cpus")
                .long("cpus")
                .value_name("N")
                .default_value("1")
                .help("Number of vCPUs: N or boot=N"),
        )
        .arg(
            Arg::new("serial")
                .long("serial")
                .value_name("MODE")
                .default_value("stdio")
                .help(
                    "Serial console (COM1, ttyS0): stdio (or tty), a new pseudo-terminal whose \
                     path kvmkit prints (pty), a Unix socket clients attach to (socket=PATH), \
                     file=PATH, or off (or null)",
                ),
        )
        .arg(
            Arg::new("acpi")
                .long("acpi")
                .value_name("on|off")
                .default_value("on")
                .value_parser(["on", "off"])
                .help(
                    "Describe the machine with ACPI tables as well as the MP table (off: MP table only, \
                     and no ACPI power-off)",
                ),
        )
        .arg(
            Arg::new("instruction-assist")
                .long("instruction-assist")
                .value_name("on|off|auto")
                .default_value("auto")
                .value_parser(["on", "off", "auto"])
                .help(
                    "Finish the guest instructions a software KVM backend (kvm_pvm) cannot run: INT3, FWAIT, \
                     CLAC/STAC, POPCNT, RDRAND/RDSEED (auto: on such a host only)",
                ),
        )
        .arg(
            Arg::new("disk")
                .long("disk")
                .value_name("path=FILE[,readonly=on][,serial=ID]")
                .action(ArgAction::Append)
                .help("A virtio-blk disk on a raw image (repeatable: vda, vdb, ...)"),
        )
        .arg(
            Arg::new("net")
                .long("net")
                .value_name("tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]")
                .action(ArgAction::Append)
                .help(
                    "A virtio-net card on an existing host tap device (repeatable: eth0, eth1, ...); \
                     without mac= a stable locally-administered address is derived from the tap's name",
                ),
        )
        .arg(
            Arg::new("rng")
                .long("rng")
                .value_name("on|off")
                .default_value("on")
                .help("A virtio-rng entropy source backed by the host's getrandom(2)"),
        )
        .arg(
            Arg::new("console")
                .long("console")
                .value_name("off|null|tty|pty|file=PATH|socket=PATH")
                .default_value("off")
                .help(
                    "A virtio console, the guest's hvc0 (add console=hvc0 to its command line): \
                     kvmkit's terminal (tty: give --serial another mode), a new pseudo-terminal \
                     whose path kvmkit prints (pty), a Unix socket clients attach to and detach \
                     from (socket), a file, or null",
                ),
        )
        .arg(
            Arg::new("vsock")
                .long("vsock")
                .value_name("cid=N,socket=PATH")
                .help(
                    "A virtio socket device: the guest has context ID N (3 or more); a host \
                     process connects to the Unix socket PATH and writes 'CONNECT <port>\\n' to \
                     reach the guest's port, and the guest's connections to the host's port P \
                     reach a listener on PATH_P",
                ),
        )
        .arg(
            Arg::new("seccomp")
                .long("seccomp")
                .value_name("on|log|off")
                .default_value("on")
                .value_parser(["on", "log", "off"])
                .help(
                    "System call filters, one per kind of kvmkit thread (docs/security.md): on \
                     (a call outside a thread's list ends kvmkit, exit 159), log (the kernel logs \
                     such calls, for debugging), off",
                ),
        )
        .arg(
            Arg::new("landlock")
                .long("landlock")
                .action(ArgAction::SetTrue)
                .help(
                    "Landlock sandbox (docs/security.md): kvmkit can open only the files its \
                     configuration names (kernel, initramfs, disks, serial file, snapshot) and \
                     those of --landlock-rules; no TCP",
                ),
        )
        .arg(
            Arg::new("landlock-rules")
                .long("landlock-rules")
                .value_name("path=PATH,access=r|rw")
                .action(ArgAction::Append)
                .requires("landlock")
                .help(
                    "With --landlock, a file or directory kvmkit may also use (repeatable): for \
                     what the API names at run time, such as drives, snapshots and logs",
                ),
        )
        .arg(
            Arg::new("boot-timeline")
                .long("boot-timeline")
                .value_name("table|json")
                .num_args(0..=1)
                .default_missing_value("table")
                .value_parser(["table", "json"])
                .help("At exit, print when each boot phase happened (stderr): a table, or one JSON line"),
        )
        .disable_version_flag(true)
        .arg(
            Arg::new("version")
                .long("version")
                .short('V')
                .action(ArgAction::Version)
                .help("Print version"),
        )
}

/// Parses `args` (including the program name).
pub fn parse<I, T>(args: I) -> Result<Action, Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let m = match command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Action::Print(e.render().to_string()))
                }
                _ => {
                    // clap's message runs to the first blank line; a suggestion ("tip: a similar
                    // argument exists") and the usage follow.
                    let text = e.render().to_string();
                    let mut message: Vec<&str> = text
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    let tips: Vec<&str> = text
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("tip:"))
                        .map(str::trim)
                        .collect();
                    if !tips.is_empty() {
                        message.push(";");
                        message.extend(tips);
                    }
                    Err(Error::Usage(
                        message
                            .join(" ")
                            .replace(" ;", ";")
                            .trim_start_matches("error: ")
                            .to_owned(),
                    ))
                }
            };
        }
    };
    let get = |name: &str| m.get_one::<String>(name).cloned().unwrap_or_default();
    let memory = config::parse_memory(&get("memory"))?;
    let log_level = m
        .get_one::<String>("log-level")
        .map(|l| crate::logger::parse_level(l))
        .transpose()?;
    let api_sock = m.get_one::<PathBuf>("api-sock").cloned();
    let source = match (
        m.get_one::<PathBuf>("config-file"),
        m.get_one::<String>("restore"),
        m.contains_id("kernel"),
    ) {
        (Some(file), _, _) => Source::ConfigFile(file.clone()),
        (None, Some(restore), _) => config::parse_restore(restore).map(|r| Source::Restore {
            snapshot: r.snapshot,
            memory: r.memory,
            track_dirty_pages: r.track_dirty_pages,
        })?,
        (None, None, true) => Source::CommandLine,
        (None, None, false) => Source::Api,
    };
    let devices = DevicesConfig {
        disks: m
            .get_many::<String>("disk")
            .unwrap_or_default()
            .map(|d| devices::parse_disk(d))
            .collect::<Result<_, _>>()?,
        nets: m
            .get_many::<String>("net")
            .unwrap_or_default()
            .map(|n| devices::parse_net(n))
            .collect::<Result<_, _>>()?,
        rng: devices::parse_rng(&get("rng"))?,
        console: devices::parse_console(&get("console"))?,
        vsock: m
            .get_one::<String>("vsock")
            .map(|v| devices::parse_vsock(v))
            .transpose()?,
    };
    devices.validate()?;
    let serial = get("serial").parse::<SerialMode>()?;
    if serial == SerialMode::Stdio && devices.console == Some(devices::ConsoleMode::Tty) {
        return Err(config::Error::TerminalTwice.into());
    }
    let config = VmConfig {
        boot: BootConfig {
            kernel: m.get_one::<PathBuf>("kernel").cloned().unwrap_or_default(),
            initramfs: m.get_one::<PathBuf>("initramfs").cloned(),
            cmdline: get("cmdline"),
        },
        machine: MachineConfig {
            memory: memory.size,
            transparent_huge_pages: memory.transparent_huge_pages,
            track_dirty_pages: memory.track_dirty_pages,
            cpus: config::parse_cpus(&get("cpus"), MAX_CPUS)?,
            acpi: get("acpi") == "on",
            instruction_assist: get("instruction-assist").parse().map_err(Error::Usage)?,
        },
        devices,
        serial,
        boot_timeline: m
            .get_one::<String>("boot-timeline")
            .map(|f| match f.as_str() {
                "json" => crate::timeline::Format::Json,
                _ => crate::timeline::Format::Table,
            }),
    };
    Ok(Action::Run(Box::new(Invocation {
        source,
        vm: config,
        api_sock,
        id: get("id"),
        log_level,
        seccomp: get("seccomp").parse().map_err(Error::Usage)?,
        landlock: if m.get_flag("landlock") {
            Some(
                m.get_many::<String>("landlock-rules")
                    .unwrap_or_default()
                    .map(|r| {
                        r.parse()
                            .map_err(|e: crate::landlock::Error| Error::Usage(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
            )
        } else {
            None
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::software_kvm::AssistMode;

    fn invocation(args: &[&str]) -> Result<Invocation, Error> {
        match parse(std::iter::once("kvmkit").chain(args.iter().copied()))? {
            Action::Run(i) => Ok(*i),
            Action::Print(p) => panic!("unexpected print: {p}"),
        }
    }

    fn run(args: &[&str]) -> Result<VmConfig, Error> {
        invocation(args).map(|i| i.vm)
    }

    #[test]
    fn vsock_takes_a_cid_and_a_socket() {
        let vsock =
            |v: &str| invocation(&["--kernel", "k", "--vsock", v]).map(|i| i.vm.devices.vsock);
        let v = vsock("cid=3,socket=/run/v.sock").unwrap().unwrap();
        assert_eq!((v.cid, v.socket.to_str()), (3, Some("/run/v.sock")));
        assert_eq!(
            invocation(&["--kernel", "k"]).unwrap().vm.devices.vsock,
            None
        );
        for (bad, says) in [
            ("cid=2,socket=/run/v.sock", "guest CID 2 is not usable"),
            ("cid=4294967295,socket=/v", "not usable"),
            ("cid=x,socket=/v", "cid 'x' is not a number"),
            ("cid=3", "socket is missing"),
            ("socket=/v", "cid is missing"),
            ("cid=3,socket=", "unknown or empty option 'socket='"),
            ("cid=3,socket=/v,port=5", "unknown or empty option 'port=5'"),
        ] {
            let e = vsock(bad).unwrap_err().to_string();
            assert!(
                e.contains("invalid --vsock") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn console_modes_and_one_terminal() {
        use crate::config::devices::ConsoleMode;
        let console = |args: &[&str]| invocation(args).map(|i| i.vm.devices.console);
        assert_eq!(console(&["--kernel", "k"]).unwrap(), None);
        assert_eq!(
            console(&["--kernel", "k", "--console", "pty"]).unwrap(),
            Some(ConsoleMode::Pty)
        );
        assert_eq!(
            console(&["--kernel", "k", "--console", "file=/tmp/hvc.log"]).unwrap(),
            Some(ConsoleMode::File("/tmp/hvc.log".into()))
        );
        assert_eq!(
            console(&["--kernel", "k", "--serial", "off", "--console", "tty"]).unwrap(),
            Some(ConsoleMode::Tty)
        );
        let twice = console(&["--kernel", "k", "--console", "tty"]).unwrap_err();
        assert!(
            twice.to_string().contains("both want kvmkit's terminal"),
            "{twice}"
        );
        let bad = console(&["--kernel", "k", "--console", "socket"]).unwrap_err();
        assert!(
            bad.to_string().contains("invalid --console 'socket'"),
            "{bad}"
        );
        assert_eq!(
            invocation(&["--kernel", "k", "--serial", "tty"])
                .unwrap()
                .vm
                .serial,
            SerialMode::Stdio
        );
    }

    #[test]
    fn cloud_hypervisor_forms_and_mib_by_default() {
        let c = run(&["--kernel", "k", "--memory", "512", "--cpus", "boot=2"]).unwrap();
        assert_eq!((c.machine.memory, c.machine.cpus), (512 << 20, 2));
        let c = run(&["--kernel", "k", "--memory", "size=1G"]).unwrap();
        assert_eq!(c.machine.memory, 1 << 30);
        let e = run(&["--kernel", "k", "--memroy", "1G"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--memory"), "a suggestion for the typo: {e}");
        let i = invocation(&["--kernel", "k", "--log-level", "debug"]).unwrap();
        assert_eq!(i.log_level, Some(log::LevelFilter::Debug));
        assert!(invocation(&["--kernel", "k", "--log-level", "loud"]).is_err());
    }

    #[test]
    fn the_vm_comes_from_the_command_line_a_config_file_or_the_api() {
        let i = invocation(&["--kernel", "k"]).unwrap();
        assert_eq!(
            (i.source, i.api_sock, i.id.as_str()),
            (Source::CommandLine, None, DEFAULT_ID)
        );
        let i = invocation(&["--api-sock", "/tmp/s", "--id", "vm7"]).unwrap();
        assert_eq!(i.source, Source::Api);
        assert_eq!(
            (i.api_sock.unwrap().to_str(), i.id.as_str()),
            (Some("/tmp/s"), "vm7")
        );
        let i = invocation(&["--restore", "vm.snap,mem=vm.mem"]).unwrap();
        assert_eq!(
            i.source,
            Source::Restore {
                snapshot: "vm.snap".into(),
                memory: "vm.mem".into(),
                track_dirty_pages: false,
            }
        );
        let i = invocation(&["--restore", "vm.snap,mem=vm.mem,track_dirty_pages=on"]).unwrap();
        assert!(matches!(
            i.source,
            Source::Restore {
                track_dirty_pages: true,
                ..
            }
        ));
        assert!(invocation(&["--restore", "vm.snap"]).is_err());
        assert!(invocation(&["--restore", "s,mem=m", "--kernel", "k"]).is_err());
        let i = invocation(&["--config-file", "vm.json", "--no-api"]).unwrap();
        assert_eq!(i.source, Source::ConfigFile("vm.json".into()));
        assert!(invocation(&["--no-api", "--kernel", "k"]).is_ok());
        let i = invocation(&["--config-file", "vm.json", "--api-sock", "/tmp/s"]).unwrap();
        assert!(i.api_sock.is_some());
        for bad in [
            &["--config-file", "vm.json", "--kernel", "k"][..],
            &["--config-file", "vm.json", "--disk", "path=a"][..],
            &["--no-api"][..],
            &["--config-file", "vm.json", "--no-api", "--api-sock", "s"][..],
        ] {
            let e = invocation(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
    }

    #[test]
    fn defaults_and_values() {
        let c = run(&["--kernel", "vmlinux"]).unwrap();
        assert_eq!(c.machine.memory, 256 << 20);
        assert_eq!(c.machine.cpus, 1);
        assert_eq!(c.serial, SerialMode::Stdio);
        assert_eq!(c.boot.cmdline, DEFAULT_CMDLINE);
        assert!(c.machine.acpi);
        assert_eq!(c.devices.rng, Some(virtio_devices::RngConfig::default()));
        assert!(c.devices.nets.is_empty());
        assert!(
            !run(&["--kernel", "k", "--acpi", "off"])
                .unwrap()
                .machine
                .acpi
        );
        assert_eq!(
            run(&["--kernel", "k", "--rng", "off"]).unwrap().devices.rng,
            None
        );
        assert_eq!(c.machine.instruction_assist, AssistMode::Auto);
        assert_eq!(
            run(&["--kernel", "k", "--instruction-assist", "off"])
                .unwrap()
                .machine
                .instruction_assist,
            AssistMode::Off
        );
        let c = run(&[
            "--kernel",
            "k",
            "--disk",
            "path=a",
            "--disk",
            "path=b,readonly=on",
            "--net",
            "tap=tap0",
            "--net",
            "tap=tap1,mac=52:54:00:00:00:01,id=uplink",
        ])
        .unwrap();
        assert_eq!(c.devices.disks.len(), 2);
        assert_eq!(c.devices.nets.len(), 2);
        assert_eq!(c.devices.nets[1].id.as_deref(), Some("uplink"));
        assert_eq!(c.boot_timeline, None);
        let t = |v: &[&str]| {
            run(&[&["--kernel", "k"], v].concat())
                .unwrap()
                .boot_timeline
        };
        assert_eq!(
            t(&["--boot-timeline"]),
            Some(crate::timeline::Format::Table)
        );
        assert_eq!(
            t(&["--boot-timeline", "json"]),
            Some(crate::timeline::Format::Json)
        );
        assert!(c.devices.disks[1].read_only);
        let c = run(&[
            "--kernel",
            "k",
            "--memory",
            "1G",
            "--serial",
            "off",
            "--cmdline",
            "x=1",
        ])
        .unwrap();
        assert_eq!(
            (c.machine.memory, c.serial, c.boot.cmdline.as_str()),
            (1 << 30, SerialMode::Off, "x=1")
        );
    }

    #[test]
    fn errors_are_one_line() {
        for args in [
            &["--kernel", "k", "--bogus"][..],
            &[][..],
            &["--kernel", "k", "--memory", "lots"][..],
            &["--kernel", "k", "--cpus", "0"][..],
            &["--kernel", "k", "--serial", "tcp"][..],
            &["--kernel", "k", "--acpi", "maybe"][..],
            &["--kernel", "k", "--instruction-assist", "sometimes"][..],
            &["--kernel", "k", "--disk", "a.img"][..],
            &["--kernel", "k", "--boot-timeline", "xml"][..],
            &["--kernel", "k", "--net", "tap0"][..],
            &["--kernel", "k", "--net", "tap=a", "--net", "tap=a"][..],
            &["--kernel", "k", "--rng", "maybe"][..],
        ] {
            let e = run(args).unwrap_err().to_string();
            assert!(!e.contains('\n') && !e.is_empty(), "{args:?}: {e}");
        }
        let e = run(&[]).unwrap_err().to_string();
        assert!(e.contains("--kernel"), "{e}");
    }

    #[test]
    fn help_and_version_print() {
        for flag in ["--help", "--version"] {
            match parse(["kvmkit", flag]).unwrap() {
                Action::Print(text) => assert!(text.contains("kvmkit")),
                Action::Run(_) => panic!("{flag} should print"),
            }
        }
    }
}
