//! What kvmkit does differently on a software KVM backend (kvm_pvm): there, guest ring-0 code runs
//! through an instruction emulator that cannot run XSAVE/XRSTOR, FSGSBASE, INVPCID, POPCNT, CMPXCHG16B,
//! RDRAND/RDSEED, SMAP's CLAC/STAC and a few more, and the VMM cannot hide those features through
//! CPUID (the guest sees the host's). The guest kernel has to be told on its command line instead.
//! Ring-0 code also runs about a thousand times slower than on a CPU, so boot-time self-tests that
//! take milliseconds on hardware take many minutes there; kvmkit turns the crypto ones off.

/// When kvmkit finishes the instructions the backend's emulator gives up on (`--instruction-assist`):
/// see the `kvmkit-assist` crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum AssistMode {
    /// On a software KVM backend only (hardware KVM runs every instruction itself).
    #[default]
    Auto,
    /// Always: an emulation failure on any host is first handed to the assist.
    On,
    /// Never: an emulation failure ends the VM with KVM's internal error.
    Off,
}

impl AssistMode {
    /// Whether the assist runs, given whether KVM here is a software backend.
    pub fn enabled(self, software_kvm: bool) -> bool {
        match self {
            Self::Auto => software_kvm,
            Self::On => true,
            Self::Off => false,
        }
    }
}

impl std::str::FromStr for AssistMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "instruction assist must be on, off or auto, not '{other}'"
            )),
        }
    }
}

/// Kernel parameters kvmkit adds for a Linux guest on a software backend: first those that keep it
/// off the instructions the backend cannot run, then those that skip what the backend runs too slowly
/// to boot.
pub const BACKEND_FLAGS: &[&str] = &[
    "noxsave",
    "nofsgsbase",
    "nopcid",
    // Scalar instructions the emulator fails on, then the SIMD extensions whose presence makes Linux
    // pick SSE-based crypto and CRC code (ChaCha, BLAKE2s, CRC32C, AES-NI...): the emulator cannot
    // run SSE in ring 0, and without these the kernel uses its generic C versions. (Linux reads at
    // most 127 characters of clearcpuid.)
    "clearcpuid=popcnt,cx16,serialize,rdrand,rdseed,invpcid,rdpid,smap,ssse3,sse4_1,sse4_2,pclmulqdq,aes,sha_ni,gfni",
    // The crypto self-tests: Debian's kernel runs the deferred ones (big-number algorithms such as
    // RSA and Diffie-Hellman among them) in a late initcall that init waits for, and here it was
    // still in them after 16 minutes; before that, loading the built-in X.509 certificates timed out
    // (-110) waiting for one. With this the same kernel reaches init in under 20 minutes. Linux
    // ignores it with `fips=1`, where the tests are required; `cryptomgr.notests=0` from the user
    // keeps them.
    "cryptomgr.notests",
];

/// The parameter's name: what comes before `=`, or the whole word.
fn key(param: &str) -> &str {
    param.split_once('=').map_or(param, |(k, _)| k)
}

/// Appends each of [`BACKEND_FLAGS`] whose parameter the user did not set already (a user's own
/// `clearcpuid=...` wins). Returns the new command line and the flags added.
///
/// ```
/// use kvmkit::software_kvm::with_backend_flags;
/// let (cmdline, added) = with_backend_flags("console=ttyS0 nopcid");
/// assert_eq!(added[..2], ["noxsave", "nofsgsbase"]);
/// assert!(added[2].starts_with("clearcpuid=popcnt,"));
/// assert!(cmdline.starts_with("console=ttyS0 nopcid noxsave"));
/// ```
pub fn with_backend_flags(cmdline: &str) -> (String, Vec<&'static str>) {
    let present: Vec<&str> = cmdline.split_whitespace().map(key).collect();
    let added: Vec<&'static str> = BACKEND_FLAGS
        .iter()
        .copied()
        .filter(|flag| !present.contains(&key(flag)))
        .collect();
    let mut out = cmdline.trim().to_owned();
    for flag in &added {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(flag);
    }
    (out, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearcpuid_fits_what_linux_reads() {
        let clear = BACKEND_FLAGS
            .iter()
            .find_map(|f| f.strip_prefix("clearcpuid="))
            .unwrap_or_default();
        assert!(!clear.is_empty() && clear.len() < 128, "{}", clear.len());
    }

    #[test]
    fn assist_modes() {
        assert!(AssistMode::Auto.enabled(true) && !AssistMode::Auto.enabled(false));
        assert!(AssistMode::On.enabled(false) && !AssistMode::Off.enabled(true));
        assert_eq!("off".parse::<AssistMode>(), Ok(AssistMode::Off));
        assert!("maybe".parse::<AssistMode>().is_err());
    }

    #[test]
    fn nothing_added_when_all_present() {
        let full = BACKEND_FLAGS.join(" ");
        let (cmdline, added) = with_backend_flags(&format!("console=ttyS0 {full}"));
        assert!(added.is_empty());
        assert_eq!(cmdline, format!("console=ttyS0 {full}"));
    }

    #[test]
    fn users_own_setting_of_a_module_parameter_wins() {
        let (cmdline, added) = with_backend_flags("console=ttyS0 cryptomgr.notests=0");
        assert!(!added.contains(&"cryptomgr.notests"));
        assert!(!cmdline.contains("cryptomgr.notests "));
        assert!(cmdline.starts_with("console=ttyS0 cryptomgr.notests=0 noxsave"));
        let (_, added) = with_backend_flags("console=ttyS0");
        assert_eq!(added.last(), Some(&"cryptomgr.notests"));
    }

    #[test]
    fn users_own_clearcpuid_wins_and_empty_cmdline_works() {
        let (cmdline, added) = with_backend_flags("clearcpuid=smap");
        assert!(!added.iter().any(|f| f.starts_with("clearcpuid")));
        assert!(cmdline.starts_with("clearcpuid=smap noxsave"));
        let (cmdline, added) = with_backend_flags("");
        assert_eq!(added.len(), BACKEND_FLAGS.len());
        assert_eq!(cmdline, BACKEND_FLAGS.join(" "));
    }
}
