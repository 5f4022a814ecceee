//! The virtio console (hvc0) with a real kernel, driven as a person would:
//! - through its pseudo-terminal (`--console pty`, under `--landlock`): kvmkit prints the pty's path,
//!   the guest's init writes a line to /dev/hvc0, and the test types commands into the pty for the
//!   test init's shell on hvc0 and reads their output, including the terminal's size before and
//!   after the test sets the pty's size as a terminal emulator would;
//! - through its socket (`--console socket=PATH`): a client attaches, runs a command, leaves, and the
//!   next client finds the shell still there; the serial console is on a socket too
//!   (`--serial socket=PATH`), and the test reads the init's lines from it;
//! - through tmux (`--console tty` in a tmux session): the test init's shell on hvc0 gets commands
//!   typed with `tmux send-keys`, and the test reads their output from the screen, including the
//!   terminal's size before and after tmux resizes the window.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use kvmkit_integration_tests::{Background, test_guest_args};

/// Reads `pty` until what was read contains `marker` (or fails the test after `limit`, showing
/// what kvmkit said).
fn read_until(
    pty: &mut impl Read,
    seen: &mut String,
    marker: &str,
    limit: Duration,
    kvmkit: &Background,
) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    while !seen.contains(marker) {
        assert!(
            Instant::now() < deadline,
            "{marker:?} never came through the pty; it gave: {seen:?}\nkvmkit's stderr: {}",
            kvmkit.stderr()
        );
        match pty.read(&mut buf) {
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("reading the pty: {e}; it gave: {seen:?}"),
        }
    }
}

/// Sets the terminal size of `pty` (as a terminal emulator attached to it does).
fn set_size(pty: &std::fs::File, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which `ws` is; the fd is the test's open pty.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(pty), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

#[test]
fn a_person_at_the_console_s_pty_types_commands_and_the_terminal_size_follows() {
    let kvmkit = Background::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .args(test_guest_args("kvmkit_init=hvc,shell,poweroff"))
            .args(["--serial", "stdio", "--console", "pty", "--landlock"]),
    );
    let announced = "kvmkit: virtio console (hvc0) on ";
    assert!(
        kvmkit.wait_for_stderr(announced, Duration::from_secs(60)),
        "no pty announced: {}",
        kvmkit.stderr()
    );
    let stderr = kvmkit.stderr();
    let path = kvmkit_integration_tests::line(&stderr, announced)
        .trim_start_matches(announced)
        .trim()
        .to_owned();
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let mut seen = String::new();
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(60);
    read_until(
        &mut pty,
        &mut seen,
        "KVMKIT-HVC-OK written through hvc0",
        long,
        &kvmkit,
    );
    read_until(&mut pty, &mut seen, "kvmkit-guest# ", long, &kvmkit);
    // Each command is typed at a prompt, and its output read up to the next prompt.
    let mut run = |pty: &mut std::fs::File, command: &str, output: &str| {
        let mut answer = String::new();
        pty.write_all(format!("{command}\r").as_bytes()).unwrap();
        read_until(pty, &mut answer, "kvmkit-guest# ", short, &kvmkit);
        assert!(answer.contains(output), "{command:?} gave {answer:?}");
        seen.push_str(&answer);
    };
    // The size kvmkit gives a new pty, then the one a terminal attached to it sets.
    run(&mut pty, "size", "\nrows 24 cols 80\r\n");
    set_size(&pty, 100, 30);
    std::thread::sleep(Duration::from_secs(2));
    run(&mut pty, "size", "\nrows 30 cols 100\r\n");
    run(
        &mut pty,
        "echo typed into the pty",
        "\ntyped into the pty\r\n",
    );
    pty.write_all(b"exit\r").unwrap();
    let (stdout, stderr, code) = kvmkit.finish(Duration::from_secs(120));
    let context =
        format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- pty ---\n{seen}");
    assert_eq!(code, Some(0), "{context}");
    assert!(stdout.contains("KVMKIT-HVC open="), "{context}");
    assert!(
        !stdout.contains("KVMKIT-HVC open=-"),
        "hvc0 opened: {context}"
    );
    assert!(stdout.contains("KVMKIT-SHELL-EXIT"), "{context}");
}

#[test]
fn a_client_attaches_to_the_console_s_socket_detaches_and_attaches_again() {
    // The serial console is on a socket too: the test reads the init's lines from it.
    let sock = std::env::temp_dir().join(format!("kvmkit-hvc-test-{}.sock", std::process::id()));
    let serial =
        std::env::temp_dir().join(format!("kvmkit-ttyS0-test-{}.sock", std::process::id()));
    for path in [&sock, &serial] {
        let _ = std::fs::remove_file(path);
    }
    let kvmkit = Background::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .args(test_guest_args("kvmkit_init=shell,poweroff"))
            .arg("--serial")
            .arg(format!("socket={}", serial.display()))
            .arg("--console")
            .arg(format!("socket={}", sock.display())),
    );
    let attach = |path: &std::path::Path| {
        kvmkit_integration_tests::wait_for_path(path);
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(60);
    let mut ttys0 = attach(&serial);
    let mut serial_seen = String::new();
    read_until(
        &mut ttys0,
        &mut serial_seen,
        "KVMKIT-SHELL open=",
        long,
        &kvmkit,
    );
    // The first client waits for the shell, runs a command and leaves.
    let mut first = attach(&sock);
    let mut seen = String::new();
    first.write_all(b"\r").unwrap();
    read_until(&mut first, &mut seen, "kvmkit-guest# ", long, &kvmkit);
    // (What a command prints must not be in the command: the terminal echoes what is typed, and
    // a prompt may come between.)
    first.write_all(b"uname\r").unwrap();
    read_until(&mut first, &mut seen, "Linux 6.", short, &kvmkit);
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    // The guest went on; the next client gets a shell that still works.
    let mut second = attach(&sock);
    let mut again = String::new();
    second.write_all(b"uname\r").unwrap();
    read_until(&mut second, &mut again, "Linux 6.", short, &kvmkit);
    second.write_all(b"exit\r").unwrap();
    read_until(
        &mut ttys0,
        &mut serial_seen,
        "KVMKIT-SHELL-EXIT",
        short,
        &kvmkit,
    );
    let (stdout, stderr, code) = kvmkit.finish(Duration::from_secs(120));
    let context =
        format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- ttyS0 ---\n{serial_seen}");
    assert_eq!(code, Some(0), "{context}");
    assert!(serial_seen.contains("KVMKIT-INIT-OK"), "{context}");
    assert!(
        stdout.is_empty(),
        "the serial console is on its socket: {context}"
    );
    for path in [&sock, &serial] {
        assert!(!path.exists(), "{} is removed at the end", path.display());
    }
}

/// A tmux server of the test's own, for one session.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux (the tmux package)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The session's screen and its scrollback.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "guest", "-S", "-500"])
    }

    /// Waits until a line of the screen is `line` (trailing blanks ignored).
    fn wait_for_line(&self, line: &str, limit: Duration) {
        self.wait_for(line, limit, |l| l == line);
    }

    /// Waits until a line of the screen satisfies `ok` (`what` names it for a failure).
    fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if screen.lines().any(|l| ok(l.trim_end())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no line {what:?} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `keys` and Enter.
    fn type_line(&self, keys: &str) {
        self.run(&["send-keys", "-t", "guest", "-l", keys]);
        self.run(&["send-keys", "-t", "guest", "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// Quotes `s` for the shell tmux runs the command with.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn a_person_at_tmux_types_commands_on_hvc0_and_reads_their_output() {
    let command = std::iter::once(env!("CARGO_BIN_EXE_kvmkit-e2e").to_owned())
        .chain(test_guest_args("kvmkit_init=shell,poweroff"))
        .chain(["--serial", "off", "--console", "tty"].map(String::from))
        .map(|a| quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let tmux = Tmux {
        socket: format!("kvmkit-test-{}", std::process::id()),
    };
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "guest",
        "-x",
        "120",
        "-y",
        "40",
        &format!("{command}; echo KVMKIT-EXIT $?; sleep 600"),
    ]);
    tmux.wait_for_line("kvmkit-guest#", Duration::from_secs(600));
    tmux.type_line("uname");
    tmux.wait_for("Linux 6.x", Duration::from_secs(60), |l| {
        l.starts_with("Linux 6.")
    });
    tmux.type_line("echo hello from tmux");
    tmux.wait_for_line("hello from tmux", Duration::from_secs(60));
    // The guest's terminal has tmux's size, and follows it.
    tmux.type_line("size");
    tmux.wait_for_line("rows 40 cols 120", Duration::from_secs(60));
    tmux.run(&["resize-window", "-t", "guest", "-x", "100", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.type_line("size");
    tmux.wait_for_line("rows 30 cols 100", Duration::from_secs(60));
    tmux.type_line("nosuchcommand");
    tmux.wait_for_line("sh: nosuchcommand: not found", Duration::from_secs(60));
    tmux.type_line("exit");
    tmux.wait_for_line("KVMKIT-EXIT 0", Duration::from_secs(120));
}
