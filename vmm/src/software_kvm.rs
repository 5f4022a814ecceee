//! What kvmkit does differently on a software KVM backend (kvm_pvm): there, guest ring-0 code runs
//! through an instruction emulator that cannot run XSAVE/XRSTOR, FSGSBASE, INVPCID, POPCNT, CMPXCHG16B,
//! RDRAND/RDSEED, SMAP's CLAC/STAC and a few more, and the VMM cannot hide those features through
//! CPUID (the guest sees the host's). The guest kernel has to be told on its command line instead.

/// Kernel parameters that keep a Linux guest off the instructions a software backend cannot run.
pub const BACKEND_FLAGS: &[&str] = &[
    "noxsave",
    "nofsgsbase",
    "nopcid",
    "clearcpuid=popcnt,cx16,serialize,rdrand,rdseed,invpcid,rdpid,smap",
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
/// assert_eq!(added, vec!["noxsave", "nofsgsbase", "clearcpuid=popcnt,cx16,serialize,rdrand,rdseed,invpcid,rdpid,smap"]);
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
    fn nothing_added_when_all_present() {
        let full = BACKEND_FLAGS.join(" ");
        let (cmdline, added) = with_backend_flags(&format!("console=ttyS0 {full}"));
        assert!(added.is_empty());
        assert_eq!(cmdline, format!("console=ttyS0 {full}"));
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
