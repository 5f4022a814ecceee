//! Landlock (`--landlock`): once kvmkit knows what it will open, it asks the kernel to refuse it
//! every other file, every TCP bind and connect, abstract Unix sockets and signals to other
//! processes. A guest that took over a kvmkit thread can then read and write only the VM's own
//! kernel, initramfs, disks, serial file and snapshot files, and what `--landlock-rules` adds.
//!
//! The ruleset is made from the configuration ([`Plan`]) and applied by the main thread before it
//! starts any other thread, so that every thread has it (a Landlock domain is per thread, and a
//! new thread keeps its parent's). Files kvmkit opened before (the config file, stdout, a log or
//! metrics file a config file names, the API socket) stay usable.
//!
//! Files the API names at run time (drives and a kernel given over the API, snapshot files, a log
//! or metrics file) must be under a `--landlock-rules path=...,access=r|rw` rule. The API socket is
//! not removed at exit under Landlock (that needs the right to remove any file in its directory);
//! the next kvmkit on that path replaces it. docs/security.md has the details.

mod plan;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

pub use plan::Plan;

/// What a rule lets kvmkit do with a path (and, for a directory, everything under it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read files (and list directories).
    Read,
    /// Read and write files; in a directory also create, rename and remove files and sockets.
    ReadWrite,
    /// In a directory: make Unix sockets (nothing else).
    MakeSocket,
}

/// One path kvmkit may use, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A file or a directory.
    pub path: PathBuf,
    /// What kvmkit may do there.
    pub access: Permission,
}

impl std::str::FromStr for Rule {
    type Err = Error;

    /// Parses `path=PATH,access=r|rw` (Cloud Hypervisor's `--landlock-rules` syntax).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadRule(s.to_owned(), why.to_owned());
        let (mut path, mut access) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("access", "r")) => access = Some(Permission::Read),
                Some(("access", "rw")) => access = Some(Permission::ReadWrite),
                Some(("access", other)) => {
                    return Err(bad(&format!("access '{other}' is not r or rw")));
                }
                _ => return Err(bad(&format!("'{part}' is not path=... or access=..."))),
            }
        }
        Ok(Self {
            path: path.ok_or_else(|| bad("no path"))?,
            access: access.ok_or_else(|| bad("no access"))?,
        })
    }
}

/// Errors from building or applying the ruleset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--landlock-rules` value that does not parse.
    #[error("invalid --landlock-rules '{0}': {1}; expected path=PATH,access=r|rw")]
    BadRule(String, String),
    /// A path a rule names cannot be opened.
    #[error("landlock: cannot open {path} for its rule: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the ruleset, or a rule.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel has no Landlock (not built in, or not in `lsm=`).
    #[error(
        "landlock: this kernel does not enforce Landlock (it needs CONFIG_SECURITY_LANDLOCK and \
         landlock in the lsm= boot parameter); run without --landlock"
    )]
    Unsupported,
    /// Another thread already runs, and would not be restricted.
    #[error(
        "landlock: {0} threads run already; the ruleset must be applied before the first starts"
    )]
    Threads(usize),
}

/// The file system rights kvmkit asks Landlock to handle: every right up to ABI 5 (device ioctls).
/// Executing files is among them, and no rule grants it.
fn handled_fs() -> BitFlags<AccessFs> {
    AccessFs::from_all(ABI::V5)
}

/// The rights a rule grants on `path`, which is a directory or not.
fn rights(access: Permission, dir: bool) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::IoctlDev;
    let write = read | AccessFs::WriteFile | AccessFs::Truncate;
    match (access, dir) {
        (Permission::Read, false) => read,
        (Permission::ReadWrite, false) => write,
        (Permission::Read, true) => read | AccessFs::ReadDir,
        (Permission::MakeSocket, true) => BitFlags::from(AccessFs::MakeSock),
        (Permission::MakeSocket, false) => BitFlags::empty(),
        (Permission::ReadWrite, true) => {
            write
                | AccessFs::ReadDir
                | AccessFs::MakeReg
                | AccessFs::MakeSock
                | AccessFs::RemoveFile
                | AccessFs::Refer
        }
    }
}

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether this process runs under kvmkit's ruleset.
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// How many threads the process has (from `/proc/self/task`), if it can be read.
fn threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Restricts this process to `rules`: the calling thread from now on, and every thread it starts.
/// Call it before any other thread runs. Returns whether the kernel enforces all of it (an older
/// kernel enforces part: no TCP rules before ABI 4, no scopes before ABI 6).
pub fn apply(rules: &[Rule]) -> Result<RulesetStatus, Error> {
    if let Some(n) = threads().filter(|&n| n > 1) {
        return Err(Error::Threads(n));
    }
    restrict(rules)
}

/// Restricts the calling thread (and the threads it starts) to `rules`.
fn restrict(rules: &[Rule]) -> Result<RulesetStatus, Error> {
    let mut ruleset = Ruleset::default()
        .handle_access(handled_fs())?
        .handle_access(AccessNet::from_all(ABI::V4))?
        .scope(Scope::from_all(ABI::V6))?
        .create()?;
    for rule in rules {
        let path_error = |source| Error::Path {
            path: rule.path.clone(),
            source,
        };
        let dir = std::fs::metadata(&rule.path).map_err(path_error)?.is_dir();
        let fd = PathFd::new(&rule.path).map_err(|e| path_error(std::io::Error::other(e)))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, rights(rule.access, dir)))?;
    }
    let status = ruleset.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(Error::Unsupported);
    }
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(status.ruleset)
}

/// `message` (an error kvmkit reports), with a hint when Landlock is on and a file was refused.
pub fn explain(message: String) -> String {
    if active() && message.contains("Permission denied (os error 13)") {
        format!(
            "{message} (--landlock is on: name the path, or its directory, with --landlock-rules \
             path=...,access=r|rw)"
        )
    } else {
        message
    }
}
