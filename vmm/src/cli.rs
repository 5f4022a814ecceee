//! The command line, in Cloud Hypervisor's shape: `--kernel`, `--initramfs`, `--cmdline`, `--memory`,
//! `--cpus`, `--serial`, `--acpi`, `--disk`, `--net`, `--rng`, `--boot-timeline`,
//! `--instruction-assist`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

use crate::config::{
    self, BootConfig, DEFAULT_CMDLINE, DevicesConfig, MachineConfig, SerialMode, VmConfig, devices,
};

/// The largest `--cpus` accepted (the limit of the xAPIC ids the MP table can name).
pub const MAX_CPUS: u32 = machine::mptable::MAX_CPUS;

/// What the command line asked for.
#[derive(Debug)]
pub enum Action {
    /// Boot a VM.
    Run(VmConfig),
    /// Print this text (help or version) to stdout and exit 0.
    Print(String),
}

/// Errors from the command line: one line each, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clap's own parse error (unknown flag, missing value...), first line only.
    #[error("{0}")]
    Usage(String),
    /// A value that parsed but is not valid.
    #[error(transparent)]
    Config(#[from] config::Error),
}

fn command() -> Command {
    Command::new("kvmkit")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Boot a Linux microVM on KVM")
        .after_help(
            "Exit status: 0 when the guest reboots or powers off; 1 when it crashes (triple fault, \
             KVM internal error, kernel panic); 2 for bad arguments or unusable input files; 128+N when \
             stopped by signal N.\n\
             Serial console on stdio: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.",
        )
        .arg(
            Arg::new("kernel")
                .long("kernel")
                .value_name("PATH")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("Kernel image: uncompressed ELF vmlinux (PVH) or bzImage"),
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
                .help("Guest RAM, e.g. 256M or 2G"),
        )
        .arg(
            Arg::new("cpus")
                .long("cpus")
                .value_name("N")
                .default_value("1")
                .help("Number of vCPUs"),
        )
        .arg(
            Arg::new("serial")
                .long("serial")
                .value_name("MODE")
                .default_value("stdio")
                .help("Serial console: stdio, file=PATH or off"),
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
                    // clap's message runs to the first blank line; the usage and hint follow.
                    let text = e.render().to_string();
                    let message: Vec<&str> = text
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    Err(Error::Usage(
                        message.join(" ").trim_start_matches("error: ").to_owned(),
                    ))
                }
            };
        }
    };
    let get = |name: &str| m.get_one::<String>(name).cloned().unwrap_or_default();
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
    };
    devices.validate()?;
    let config = VmConfig {
        boot: BootConfig {
            kernel: m.get_one::<PathBuf>("kernel").cloned().unwrap_or_default(),
            initramfs: m.get_one::<PathBuf>("initramfs").cloned(),
            cmdline: get("cmdline"),
        },
        machine: MachineConfig {
            memory: config::parse_size(&get("memory"))?,
            cpus: config::parse_cpus(&get("cpus"), MAX_CPUS)?,
            acpi: get("acpi") == "on",
            instruction_assist: get("instruction-assist").parse().map_err(Error::Usage)?,
        },
        devices,
        serial: get("serial").parse::<SerialMode>()?,
        boot_timeline: m
            .get_one::<String>("boot-timeline")
            .map(|f| match f.as_str() {
                "json" => crate::timeline::Format::Json,
                _ => crate::timeline::Format::Table,
            }),
    };
    Ok(Action::Run(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::software_kvm::AssistMode;

    fn run(args: &[&str]) -> Result<VmConfig, Error> {
        match parse(std::iter::once("kvmkit").chain(args.iter().copied()))? {
            Action::Run(c) => Ok(c),
            Action::Print(p) => panic!("unexpected print: {p}"),
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
        assert!(run(&[]).unwrap_err().to_string().contains("--kernel"));
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
