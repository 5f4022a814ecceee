//! A network namespace for one test: created with a tap device inside (the host's address on it),
//! and deleted, tap and all, when dropped. kvmkit and the host's end of a test run inside it
//! (`ip netns exec`), so a test never touches the machine's own interfaces.
//!
//! It needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; a test that lacks them fails,
//! it does not skip.

use std::process::Command;

/// The host's address on the tap; the guest is [`GUEST_IP`], both in a /24.
pub const HOST_IP: &str = "10.0.2.1";
/// The address the test guest gives itself (`kvmkit_ip=`).
pub const GUEST_IP: &str = "10.0.2.15";
/// The tap's name inside the namespace.
pub const TAP: &str = "ktap0";

/// A network namespace with a tap up at [`HOST_IP`].
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "ip {}: {} (network tests need root: they create a network namespace and a tap)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl NetNs {
    /// Creates namespace `kvmkit-<test>-<pid>` with [`TAP`] up at [`HOST_IP`]/24.
    pub fn new(test: &str) -> Self {
        let name = format!("kvmkit-{test}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        ns
    }

    /// Adds another tap, `name`, owned by user `owner` (only that user, or a process with
    /// CAP_NET_ADMIN, may attach to it).
    pub fn add_tap_owned_by(&self, name: &str, owner: u32) {
        self.ip(&[
            "tuntap",
            "add",
            "dev",
            name,
            "mode",
            "tap",
            "user",
            &owner.to_string(),
        ]);
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The kernel command-line words that make the test init use this network.
    pub fn guest_cmdline(&self) -> String {
        format!("kvmkit_ip={GUEST_IP} kvmkit_peer={HOST_IP}")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The host's end of the guest's network check (`kvmkit-net-peer`), listening in a namespace.
#[derive(Debug)]
pub struct Peer {
    child: std::process::Child,
    output: std::thread::JoinHandle<String>,
}

impl NetNs {
    /// Starts `peer` (the path of the kvmkit-net-peer binary) in the namespace, sending `bytes` to
    /// the guest, and waits until it listens.
    pub fn peer(&self, peer: &str, bytes: u64) -> Peer {
        use std::io::BufRead;
        let mut child = self
            .command(peer)
            .args([HOST_IP, &bytes.to_string(), "900"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start kvmkit-net-peer");
        let stdout = child.stdout.take().expect("the peer's stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(l)) if l == "PEER-READY" => {}
            other => panic!("kvmkit-net-peer did not start: {other:?}"),
        }
        let output =
            std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        Peer { child, output }
    }
}

impl Peer {
    /// Waits up to `limit` for the peer to end (it ends once both transfers are done), kills it
    /// after that, and returns what it printed.
    pub fn finish(mut self, limit: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let output = std::mem::replace(&mut self.output, std::thread::spawn(String::new));
        output.join().unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
