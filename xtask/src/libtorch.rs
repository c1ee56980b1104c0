//! `cargo xtask setup`: LibTorch from PyPI's `torch` wheel, in a virtualenv in the per-user data
//! folder ([`data_home`]), so that installed binaries keep working after their checkout is
//! deleted (their rpath and the FID network's path point there).
//!
//! The checkout's `.libtorch` is a symlink to that folder's `libtorch/`; `.cargo/config.toml`
//! points `LIBTORCH` at `.libtorch/torch`, a symlink this module makes to the wheel's `torch`
//! folder (it holds `include/` and `lib/`, which is all torch-sys needs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd;

/// The PyTorch version tch 0.26 is built against (`TORCH_VERSION` in torch-sys's build.rs).
pub const TORCH_VERSION: &str = "2.13.0";
/// `libtorch_cpu.so` of the CUDA 13 wheel links the CUDA runtime and CUPTI even on a CPU-only
/// machine; these two wheels are all it needs beside torch itself (1.2 GB instead of 4.7 GB).
const CPU_EXTRA_WHEELS: [&str; 2] = ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// torch without its dependencies, plus the two CUDA runtime wheels: runs on CPU only.
    Cpu,
    /// The full wheel set, including cuBLAS and cuDNN: runs on an NVIDIA GPU.
    Cuda,
}

#[derive(Debug, Serialize, Deserialize)]
struct Installed {
    version: String,
    variant: Variant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaChoice {
    /// CUDA if `nvidia-smi` reports a GPU.
    Auto,
    Force,
}

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            dir: root.join(".libtorch"),
        }
    }
    fn venv(&self) -> PathBuf {
        self.dir.join("venv")
    }
    /// What `.cargo/config.toml` sets `LIBTORCH` to.
    pub fn link(&self) -> PathBuf {
        self.dir.join("torch")
    }
    fn marker(&self) -> PathBuf {
        self.dir.join("installed.json")
    }
}

fn gpu_present() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
        .unwrap_or(false)
}

/// Reads `torch/version.py` (importing torch would need the Python dependencies the lean
/// install leaves out).
pub(crate) fn wheel_version(torch_dir: &Path) -> Result<String> {
    let path = torch_dir.join("version.py");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_owned())
        .with_context(|| format!("{}: no __version__ line", path.display()))
}

/// The user's own LibTorch, if they set one: then setup has nothing to do. (Cargo's `[env]`
/// sets `LIBTORCH` to ours for every cargo-run process, the xtask included.)
fn user_libtorch(root: &Path) -> Option<String> {
    if let Ok(v) = std::env::var("LIBTORCH_USE_PYTORCH") {
        return Some(format!("LIBTORCH_USE_PYTORCH={v}"));
    }
    let set = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let checkout = set
        .parent()
        .filter(|p| {
            p.file_name() == Some(".libtorch".as_ref()) && set.file_name() == Some("torch".as_ref())
        })
        .and_then(Path::parent)
        .and_then(|p| std::fs::canonicalize(p).ok());
    let ours = checkout.is_some() && checkout == std::fs::canonicalize(root).ok();
    (!ours).then(|| format!("LIBTORCH={}", set.display()))
}

/// The per-user data folder set-up installs into: `$VQVAE_HOME`, else
/// `$XDG_DATA_HOME/vqvae-rs`, else `~/.local/share/vqvae-rs` (the XDG base-directory default).
pub fn data_home() -> Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("VQVAE_HOME") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("vqvae-rs"));
    }
    let home = non_empty("HOME").context(
        "neither VQVAE_HOME, XDG_DATA_HOME nor HOME is set: set VQVAE_HOME to the folder set-up may install into",
    )?;
    Ok(PathBuf::from(home).join(".local/share/vqvae-rs"))
}

/// Makes the checkout's `.libtorch` a symlink to the data folder's `libtorch/`. An install an
/// earlier set-up left inside the checkout is moved there (or, when the data folder already
/// holds one, removed: both are this tool's downloads).
pub fn link_checkout(root: &Path) -> Result<()> {
    let shared = data_home()?.join("libtorch");
    let local = root.join(".libtorch");
    match std::fs::symlink_metadata(&local) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&local).ok().as_deref() == Some(shared.as_path()) {
                return Ok(());
            }
            std::fs::remove_file(&local)
                .with_context(|| format!("replacing the link {}", local.display()))?;
        }
        Ok(meta) if meta.is_dir() => {
            if shared.exists() {
                tracing::info!(
                    "{} already holds LibTorch: removing the copy in {}",
                    shared.display(),
                    local.display()
                );
                std::fs::remove_dir_all(&local)
                    .with_context(|| format!("removing {}", local.display()))?;
            } else {
                std::fs::create_dir_all(shared.parent().expect("a folder below the data home"))?;
                tracing::info!("moving {} to {}", local.display(), shared.display());
                if let Err(e) = std::fs::rename(&local, &shared) {
                    tracing::warn!(
                        "cannot move {} to {} ({e}): keeping it in the checkout",
                        local.display(),
                        shared.display()
                    );
                    return Ok(());
                }
            }
        }
        Ok(_) => bail!("{} is neither a folder nor a link", local.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", local.display())),
    }
    std::fs::create_dir_all(&shared)
        .with_context(|| format!("creating the data folder {}", shared.display()))?;
    symlink(&shared, &local)
}

/// Makes sure LibTorch is installed; quick and silent when it already is.
pub fn ensure(root: &Path, cuda: CudaChoice) -> Result<()> {
    link_checkout(root)?;
    let layout = Layout::new(root);
    if let Some(user) = user_libtorch(root) {
        tracing::info!("{user} is set: using that LibTorch, installing nothing");
        return Ok(());
    }
    let want = if cuda == CudaChoice::Force || gpu_present() {
        Variant::Cuda
    } else {
        Variant::Cpu
    };
    if let Some(have) = current(&layout) {
        if have == Variant::Cuda || want == Variant::Cpu {
            tracing::debug!("LibTorch {TORCH_VERSION} ({have:?}) already installed");
            return Ok(());
        }
        tracing::info!("LibTorch is the CPU-only set; installing the CUDA set");
    }
    install(&layout, want)
}

/// The installed variant, if the install is complete and of the right version.
fn current(layout: &Layout) -> Option<Variant> {
    let text = std::fs::read_to_string(layout.marker()).ok()?;
    let installed: Installed = serde_json::from_str(&text).ok()?;
    let version = wheel_version(&layout.link()).ok()?;
    (installed.version == TORCH_VERSION && version.split('+').next() == Some(TORCH_VERSION))
        .then_some(installed.variant)
}

fn install(layout: &Layout, variant: Variant) -> Result<()> {
    std::fs::create_dir_all(&layout.dir)?;
    let venv = layout.venv();
    let python = venv.join("bin").join("python");
    if !python.exists() {
        tracing::info!("creating a Python virtualenv at {}", venv.display());
        let py = ["python3", "python"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .context("LibTorch is installed from PyPI's torch wheel, which needs Python 3 (python3) on PATH")?;
        cmd::run(Command::new(py).args(["-m", "venv"]).arg(&venv))
            .context("creating the virtualenv (on Debian/Ubuntu: apt-get install python3-venv)")?;
    }
    let torch = format!("torch=={TORCH_VERSION}");
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ]);
    match variant {
        Variant::Cpu => {
            tracing::info!("installing LibTorch {TORCH_VERSION}, CPU-only set (about 1.2 GB)");
            pip.args(["--no-deps", "--no-cache-dir"])
                .arg(&torch)
                .args(CPU_EXTRA_WHEELS);
        }
        Variant::Cuda => {
            tracing::info!("installing LibTorch {TORCH_VERSION} with CUDA (about 4.7 GB)");
            pip.arg("--no-cache-dir").arg(&torch);
        }
    }
    cmd::run(&mut pip).context("pip could not install torch")?;

    let site = find_site_packages(&venv)?;
    let torch_dir = site.join("torch");
    let version = wheel_version(&torch_dir)?;
    if version.split('+').next() != Some(TORCH_VERSION) {
        bail!("pip installed torch {version}, but tch 0.26 needs exactly {TORCH_VERSION}");
    }
    for needed in [
        "include/torch/csrc/api/include/torch/torch.h",
        "lib/libtorch_cpu.so",
    ] {
        if !torch_dir.join(needed).exists() {
            bail!(
                "{} lacks {needed}: not a usable LibTorch",
                torch_dir.display()
            );
        }
    }
    let link = layout.link();
    let target = torch_dir
        .strip_prefix(&layout.dir)
        .map(Path::to_path_buf)
        .unwrap_or(torch_dir.clone());
    let _ = std::fs::remove_file(&link);
    symlink(&target, &link)?;
    let marker = serde_json::to_string_pretty(&Installed {
        version: TORCH_VERSION.into(),
        variant,
    })?;
    vq_data::write_atomic(&layout.marker(), |w| w.write_all(marker.as_bytes()))?;
    tracing::info!(
        "LibTorch {version} ({variant:?}) ready at {}",
        link.display()
    );
    Ok(())
}

pub(crate) fn find_site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages");
        if candidate.join("torch").is_dir() {
            return Ok(candidate);
        }
    }
    bail!("no site-packages/torch under {}", lib.display())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> Result<()> {
    bail!("the LibTorch set-up supports Linux and macOS; set LIBTORCH to your LibTorch instead")
}

/// What Python's `torch` module needs beside the lean LibTorch install: the pure-Python
/// dependencies and the CUDA libraries `libtorch_cuda.so` and `libtorch_python.so` link, which
/// the dynamic loader wants even on a CPU. The versions are what pip resolves for torch 2.13.0's
/// requirements; left out: triton (0.7 GB, only for `torch.compile` on a GPU), cuSOLVER (loaded
/// lazily) and the CUDA Python bindings. Installed without dependencies, so nothing else comes.
const PYTHON_WHEELS: &[&str] = &[
    "filelock==4.3.2",
    "typing-extensions==4.16.0",
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "fsspec==2026.9.0",
    "numpy==2.4.6",
    "nvidia-cublas==13.1.1.3",
    "nvidia-cuda-cupti==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cudnn-cu13==9.20.0.48",
    "nvidia-cufft==12.0.0.61",
    "nvidia-cufile==1.15.1.6",
    "nvidia-curand==10.4.0.35",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nccl-cu13==2.29.7",
    "nvidia-nvjitlink==13.5.37",
    "nvidia-nvshmem-cu13==3.4.5",
    "nvidia-nvtx==13.0.85",
];

/// A Python that imports PyTorch 2.13.0, for the PyTorch-export test (`vq-cli export
/// --pytorch`): LibTorch's own virtualenv, given the wheels Python's `torch` needs
/// ([`PYTHON_WHEELS`], about 2.6 GB more), so that one copy of torch serves the binaries and
/// Python. With a LibTorch of the user's own, a separate virtualenv in the data folder's
/// `pytorch/`. An earlier set-up's separate `pytorch/` (4.7 GB) is removed once LibTorch's
/// virtualenv imports torch.
pub fn ensure_pytorch(root: &Path) -> Result<PathBuf> {
    let separate = data_home()?.join("pytorch");
    let venv = if user_libtorch(root).is_some() {
        separate.clone()
    } else {
        Layout::new(root).venv()
    };
    let python = venv.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args([
                "-c",
                &format!("import torch; assert torch.__version__.startswith('{TORCH_VERSION}')"),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        if !python.exists() {
            std::fs::create_dir_all(&venv)?;
            cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
                "creating the PyTorch virtualenv (on Debian/Ubuntu: apt-get install python3-venv)",
            )?;
        }
        tracing::info!(
            "installing what Python's torch {TORCH_VERSION} needs into {} (about 2.6 GB)",
            venv.display()
        );
        cmd::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--no-cache-dir",
                    "--no-deps",
                    &format!("torch=={TORCH_VERSION}"),
                ])
                .args(PYTHON_WHEELS),
        )
        .context("pip could not install PyTorch's Python dependencies")?;
        if !ready() {
            bail!(
                "{}: torch {TORCH_VERSION} does not import",
                python.display()
            );
        }
    }
    if venv != separate && separate.join("bin").join("python").exists() {
        tracing::info!(
            "removing {}: LibTorch's virtualenv now runs PyTorch",
            separate.display()
        );
        std::fs::remove_dir_all(&separate)
            .with_context(|| format!("removing {}", separate.display()))?;
    }
    Ok(python)
}
