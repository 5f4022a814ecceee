//! Disk images for boot tests: scratch directories, ext4 images made and read on the host with
//! e2fsprogs (mkfs.ext4 -d, debugfs, e2fsck), so that every assertion is about bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What the host puts in `hello.txt` on the test image.
pub const HELLO: &str = "hello from the host image";

/// A scratch directory, removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory `kvmkit-{name}-{pid}` for test `name` (removed first if a killed run
    /// left it).
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kvmkit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a scratch directory");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` and fails the test (with its stderr) unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 16 MiB ext4 image holding the files of `dir`.
pub fn ext4_image(image: &Path, dir: &Path) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(image)
        .arg("16M"));
}

/// The contents of `file` inside an ext4 image, read on the host.
pub fn read_from_image(image: &Path, file: &str) -> String {
    let out = run(Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// e2fsck finds the file system clean.
pub fn assert_clean(image: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(image));
}

/// Two disks in `s`: an ext4 image with hello.txt (for vda), and a blank 1 MiB image (for a
/// read-only vdb).
pub fn two_disks(s: &Scratch) -> (PathBuf, PathBuf) {
    let files = s.0.join("files");
    std::fs::create_dir_all(&files).expect("create the image's files");
    std::fs::write(files.join("hello.txt"), format!("{HELLO}\n")).expect("write hello.txt");
    let a = s.0.join("a.img");
    ext4_image(&a, &files);
    let b = s.0.join("b.img");
    std::fs::write(&b, vec![0u8; 1 << 20]).expect("write the blank image");
    (a, b)
}

/// The `--disk` arguments for [`two_disks`]: vda with serial disk-A, vdb read-only with serial ro-B.
pub fn two_disk_args(a: &Path, b: &Path) -> Vec<String> {
    vec![
        "--disk".into(),
        format!("path={},serial=disk-A", a.display()),
        "--disk".into(),
        format!("path={},readonly=on,serial=ro-B", b.display()),
    ]
}
