//! The control plane with a real guest: a Firecracker user's curl sequence configures and boots the
//! test kernel through `--api-sock`; then pause (the guest stops printing, its vCPU stops running),
//! resume, the wrong-state errors, 1,000 malformed requests (the guest runs on, kvmkit's memory does
//! not grow), metrics, and the ACPI power button (exit 0). The same JSON, as a `--config-file`, boots
//! the guest again, which Ctrl-Alt-Del (typed on its i8042 keyboard) reboots.
//!
//! The guest's init runs `kvmkit_init=control`: it prints `KVMKIT-TICK n` five times a second and
//! reports the keys its input devices send. One to two minutes per boot on a software-KVM host.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvmkit_integration_tests::disks::Scratch;
use kvmkit_integration_tests::{Background, guest_cmdline, guest_dir, wait_for_path};
use serde_json::{Value, json};

/// How long a boot may take to reach the init's control loop.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// A scratch directory for one test.
/// The VM both tests boot, as Firecracker's JSON objects: the test kernel and initramfs, one vCPU,
/// 256 MiB, and a read-only scratch disk.
fn objects(disk: &Path) -> (Value, Value, Value) {
    let guest = guest_dir();
    let boot = json!({
        "kernel_image_path": guest.join("vmlinux"),
        "initrd_path": guest.join("initramfs.cpio"),
        "boot_args": guest_cmdline("kvmkit_init=control"),
    });
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 256});
    let drive = json!({
        "drive_id": "scratch",
        "path_on_host": disk,
        "is_root_device": false,
        "is_read_only": true,
    });
    (boot, machine, drive)
}

/// `curl --unix-socket SOCK -X METHOD http://localhost/PATH -d BODY`: the status and the body.
fn curl(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "30", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .args(["-H", "Accept: application/json"])
        .args(["-H", "Content-Type: application/json"]);
    if let Some(body) = body {
        cmd.args(["-d", &body.to_string()]);
    }
    let out = cmd.arg(format!("http://localhost{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn ok(sock: &Path, method: &str, path: &str, body: Option<&Value>) {
    let (code, text) = curl(sock, method, path, body);
    assert!(code == 204 || code == 200, "{method} {path}: {code} {text}");
}

/// A 400 whose fault_message contains `needle`.
fn refused(sock: &Path, method: &str, path: &str, body: &Value, needle: &str) {
    let (code, text) = curl(sock, method, path, Some(body));
    assert_eq!(code, 400, "{method} {path}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["fault_message"].as_str().unwrap().contains(needle),
        "{method} {path}: {text}"
    );
}

fn get(sock: &Path, path: &str) -> Value {
    let (code, text) = curl(sock, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn ticks(vm: &Background) -> usize {
    vm.stdout().matches("KVMKIT-TICK ").count()
}

/// CPU time (clock ticks) the thread named `name` of process `pid` has used.
fn thread_cpu(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if std::fs::read_to_string(task.join("comm"))
            .unwrap_or_default()
            .trim()
            == name
        {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread {name} in process {pid}");
}

/// kvmkit's own resident memory (KiB): every mapping's but guest RAM's (the one of `guest_mib`).
fn vmm_rss_kib(pid: u32, guest_mib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut size) = (0, 0);
    for l in smaps.lines() {
        let kib = |l: &str| -> u64 { l.split_whitespace().nth(1).unwrap().parse().unwrap() };
        if l.starts_with("Size:") {
            size = kib(l);
        } else if l.starts_with("Rss:") && size < guest_mib << 10 {
            total += kib(l);
        }
    }
    total
}

/// Sends `raw` on a new connection, then reads whatever comes back (up to a second).
fn send_raw(sock: &Path, raw: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = s.write_all(raw);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// `n` requests of every malformed kind, round robin.
fn malformed_requests(sock: &Path, n: usize) {
    let huge = b"PUT /drives/x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n{".to_vec();
    // Not even a request line: its first byte is no method's.
    let junk: Vec<u8> = (0..2000u32)
        .map(|i| {
            if i == 0 {
                0
            } else {
                (i.wrapping_mul(2654435761) >> 13) as u8
            }
        })
        .collect();
    for i in 0..n {
        let (raw, half_close): (Vec<u8>, bool) = match i % 8 {
            0 => (
                b"PUT /boot-source HTTP/1.1\r\nConnection: close\r\nContent-Length: 9\r\n\r\n{\"kernel\"".to_vec(),
                false,
            ),
            1 => (b"BREW /pot HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), false),
            2 => (huge.clone(), false),
            3 => (junk.clone(), false),
            4 => (
                b"PUT /actions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"action".to_vec(),
                true,
            ),
            5 => (
                b"PATCH /vm HTTP/1.1\r\nConnection: close\r\nContent-Length: 17\r\n\r\n{\"state\":\"Bogus\"}".to_vec(),
                false,
            ),
            6 => (
                format!("GET /{} HTTP/1.1\r\nConnection: close\r\n\r\n", "a/".repeat(3000)).into_bytes(),
                false,
            ),
            _ => (
                b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
                false,
            ),
        };
        let reply = send_raw(sock, &raw, half_close);
        assert!(
            reply.starts_with(b"HTTP/1.1 4"),
            "kind {}: {:?}",
            i % 8,
            String::from_utf8_lossy(&reply)
        );
    }
}

/// Connections that send a request a byte at a time, while a well-behaved client is answered.
fn slowloris(sock: &Path) {
    let mut slow: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(sock).unwrap())
        .collect();
    let request = b"GET / HTTP/1.1\r\nX-Slow: ";
    for &b in request {
        for s in &mut slow {
            let _ = s.write_all(&[b]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    assert_eq!(curl(sock, "GET", "/", None).0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the API waited on slow clients"
    );
}

#[test]
fn a_firecracker_curl_sequence_boots_pauses_resumes_and_powers_off_the_guest() {
    let s = Scratch::new("api-curl");
    let disk = s.0.join("scratch.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = s.0.join("kvmkit.sock");
    let metrics = s.0.join("metrics.json");
    let vm = Background::spawn(
        Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .arg("--api-sock")
            .arg(&sock)
            .args(["--id", "curl-vm"]),
    );
    wait_for_path(&sock);
    let info = get(&sock, "/");
    assert_eq!(
        (info["id"].as_str(), info["state"].as_str()),
        (Some("curl-vm"), Some("Not started"))
    );

    // Firecracker's getting-started sequence.
    let (boot, machine, drive) = objects(&disk);
    ok(&sock, "PUT", "/boot-source", Some(&boot));
    ok(&sock, "PUT", "/machine-config", Some(&machine));
    ok(&sock, "PUT", "/drives/scratch", Some(&drive));
    let vsock = s.0.join("v.sock");
    ok(
        &sock,
        "PUT",
        "/vsock",
        Some(&json!({"guest_cid": 7, "uds_path": vsock})),
    );
    ok(
        &sock,
        "PUT",
        "/metrics",
        Some(&json!({"metrics_path": metrics})),
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "InstanceStart"})),
    );
    assert_eq!(get(&sock, "/")["state"], "Running");
    let config = get(&sock, "/vm/config");
    assert_eq!(config["boot-source"], boot);
    assert_eq!(config["drives"][0]["drive_id"], "scratch");
    assert_eq!(config["machine-config"]["mem_size_mib"], 256);
    assert_eq!(config["vsock"]["guest_cid"], 7);

    // Wrong state: configuration after the start, a second start, resuming a running VM.
    let after = "not supported after starting the microVM";
    refused(&sock, "PUT", "/boot-source", &boot, after);
    refused(&sock, "PUT", "/drives/scratch", &drive, after);
    refused(
        &sock,
        "PUT",
        "/actions",
        &json!({"action_type": "InstanceStart"}),
        after,
    );
    refused(
        &sock,
        "PATCH",
        "/vm",
        &json!({"state": "Resumed"}),
        "already running",
    );

    let ready = vm.wait_for_stdout("KVMKIT-CONTROL-READY", BOOT_LIMIT);
    let context = || format!("--- stdout ---\n{}", vm.stdout());
    assert!(
        ready,
        "the guest's init did not get to its control loop\n{}",
        context()
    );
    // The vsock device the API added: the guest (no listener on port 1234) refuses a host client.
    match kvmkit_integration_tests::vsock::connect(&vsock, 1234) {
        Err(kvmkit_integration_tests::vsock::ConnectError::Refused(said)) => {
            assert_eq!(said, "", "closed without OK");
        }
        other => panic!("a connect to a port the guest does not listen on: {other:?}"),
    }
    let out = vm.stdout();
    assert!(
        out.contains("KVMKIT-INPUT name=Power Button"),
        "{}",
        context()
    );
    assert!(
        out.contains("KVMKIT-INPUT name=AT Raw Set 2 keyboard"),
        "{}",
        context()
    );
    assert!(vm.wait_for_stdout("KVMKIT-TICK 3", Duration::from_secs(60)));

    // 1,000 malformed requests: each refused, the guest ticking on, kvmkit's memory flat.
    malformed_requests(&sock, 200);
    let before = vmm_rss_kib(vm.pid(), 256);
    let ticks_before = ticks(&vm);
    malformed_requests(&sock, 800);
    slowloris(&sock);
    let grown = vmm_rss_kib(vm.pid(), 256).saturating_sub(before);
    assert!(
        grown < 2048,
        "kvmkit grew {grown} KiB over 800 malformed requests"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&vm) <= ticks_before {
        assert!(
            Instant::now() < deadline,
            "the guest stopped ticking\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&sock, "/")["state"], "Running");

    // Pause: no more ticks, no vCPU time.
    ok(&sock, "PATCH", "/vm", Some(&json!({"state": "Paused"})));
    assert_eq!(get(&sock, "/")["state"], "Paused");
    refused(
        &sock,
        "PATCH",
        "/vm",
        &json!({"state": "Paused"}),
        "already paused",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (paused_ticks, paused_cpu) = (ticks(&vm), thread_cpu(vm.pid(), "kvmkit-vcpu-0"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ticks(&vm), paused_ticks, "the paused guest printed");
    let used = thread_cpu(vm.pid(), "kvmkit-vcpu-0") - paused_cpu;
    assert!(used <= 1, "the paused vCPU used {used} clock ticks");

    // Resume: the guest goes on.
    ok(&sock, "PATCH", "/vm", Some(&json!({"state": "Resumed"})));
    assert_eq!(get(&sock, "/")["state"], "Running");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&vm) < paused_ticks + 3 {
        assert!(
            Instant::now() < deadline,
            "no ticks after resume\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(thread_cpu(vm.pid(), "kvmkit-vcpu-0") > paused_cpu);

    // Metrics: what the VM did since the start, over every line written.
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "FlushMetrics"})),
    );
    let lines: Vec<Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |group: &str, field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l[group][field].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(sum("vcpu", "exit_io_out") > 100, "{lines:?}");
    assert!(sum("block_vda", "read_count") > 0, "{lines:?}");
    // Half the malformed requests are valid HTTP and reach the API's router (the rest are refused
    // before it): each of those counts as a failed request.
    assert!(sum("api_server", "requests_fails") >= 500, "{lines:?}");

    // The power button: the guest's init sees it and powers off; kvmkit exits 0.
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "SendPowerButton"})),
    );
    let (stdout, stderr, code) = vm.finish(Duration::from_secs(120));
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("KVMKIT-POWER-BUTTON"), "{context}");
    assert!(stderr.contains("kvmkit: guest powered off"), "{context}");
    assert_eq!(code, Some(0), "{context}");
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn the_same_json_as_a_config_file_boots_and_ctrl_alt_del_reboots_the_guest() {
    let s = Scratch::new("api-file");
    let disk = s.0.join("scratch.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (sock, file, log) = (
        s.0.join("kvmkit.sock"),
        s.0.join("vm.json"),
        s.0.join("kvmkit.log"),
    );
    let (boot, machine, drive) = objects(&disk);
    let config = json!({
        "boot-source": boot,
        "machine-config": machine,
        "drives": [drive],
        "network-interfaces": [],
        "logger": {"log_path": log, "level": "Info"},
        "balloon": null,
        "vsock": null,
    });
    std::fs::write(&file, config.to_string()).unwrap();
    let vm = Background::spawn(
        Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .arg("--config-file")
            .arg(&file)
            .arg("--api-sock")
            .arg(&sock),
    );
    wait_for_path(&sock);
    assert_eq!(get(&sock, "/")["state"], "Running");
    let shown = get(&sock, "/vm/config");
    // What the file gave comes back; GET also shows the defaults of what it left out.
    assert_eq!(shown["boot-source"], config["boot-source"]);
    assert_eq!(shown["drives"], config["drives"]);
    for (field, value) in config["machine-config"].as_object().unwrap() {
        assert_eq!(&shown["machine-config"][field], value, "{field}");
    }
    assert_eq!(shown["machine-config"]["smt"], false);
    let ready = vm.wait_for_stdout("KVMKIT-CONTROL-READY", BOOT_LIMIT);
    assert!(
        ready,
        "the guest's init did not get to its control loop\n{}",
        vm.stdout()
    );
    assert!(vm.wait_for_stdout("KVMKIT-TICK 2", Duration::from_secs(60)));

    ok(
        &sock,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "SendCtrlAltDel"})),
    );
    let (stdout, stderr, code) = vm.finish(Duration::from_secs(120));
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("KVMKIT-CTRL-ALT-DEL"), "{context}");

    assert!(stderr.contains("kvmkit: guest rebooted"), "{context}");
    assert_eq!(code, Some(0), "{context}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("API: PUT /actions"), "{logged}");
}
