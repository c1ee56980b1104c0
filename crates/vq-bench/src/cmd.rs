use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command with inherited stdio and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    tracing::debug!("running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

/// `cargo`, the same one that runs this xtask, in the workspace root.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}
