//! Helpers for the end-to-end tests: build the workspace's binaries once and run them the way a
//! user does (no `LD_LIBRARY_PATH`, a fresh working directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
}

/// Path of a workspace binary, built (debug profile) on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--quiet", "-p", "vq-train", "-p", "vq-cli"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug").join(name)
}

/// Runs a binary with the given arguments in `cwd`, without `LD_LIBRARY_PATH`, so that it must
/// find LibTorch through its rpath.
pub fn run(name: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(binary(name))
        .args(args)
        .current_dir(cwd)
        .env_remove("LD_LIBRARY_PATH")
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `script` (`sh -c`, with `args` as `$1`...) as root of a private mount namespace
/// (`unshare -rm`), where it may mount a small tmpfs that vanishes with it. `None`, with a note
/// on stderr, where this machine allows no such namespace.
pub fn in_mount_namespace(script: &str, args: &[&Path]) -> Option<Output> {
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: no private mount namespace here (unshare -rm), cannot make a tmpfs");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-rm", "sh", "-c", script, "sh"]);
    cmd.args(args);
    Some(
        cmd.env_remove("LD_LIBRARY_PATH")
            .env("RUST_LOG", "warn")
            .output()
            .expect("running unshare"),
    )
}
