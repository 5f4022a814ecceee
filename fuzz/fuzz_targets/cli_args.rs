//! Fuzzes kvmkit's command line: the input is split at NUL bytes into arguments and parsed as
//! `kvmkit <args>` would be (flags, sizes, `--disk`/`--net`/`--rng`/`--restore` values, `--cpus`,
//! `--memory`, `--serial`, `--seccomp`...). Parsing touches no files. A panic is a finding: every
//! bad command line must be an error (exit 2).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(std::ffi::OsString::from("kvmkit")).chain(
        data.split(|&b| b == 0)
            .map(|a| std::ffi::OsString::from(String::from_utf8_lossy(a).into_owned())),
    );
    let _ = kvmkit::cli::parse(args);
});
