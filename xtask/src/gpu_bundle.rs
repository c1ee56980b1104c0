//! `cargo xtask gpu-bundle`: everything the GPU check (scripts/gpu-check.sh) needs, built here
//! for a machine that has a GPU and PyTorch 2.11 but no Rust and no internet.
//!
//! That machine's LibTorch is the one inside its `torch==2.11.0+cu130` Python package, so the
//! binaries are built against 2.11 with tch 0.24 (torch-sys 0.24's `TORCH_VERSION` is "2.11.0";
//! tch 0.26, our normal build, needs 2.13). Different tch versions cannot live in one Cargo
//! workspace, so the bundle builds a **copy** of the workspace whose manifest asks for tch
//! 0.24, with its own target folder: the normal build, its lock file and its LibTorch are never
//! touched. The copy is refreshed file by file (unchanged files keep their timestamps), so a
//! second bundle only recompiles what changed.
//!
//! Here LibTorch 2.11 is PyPI's CUDA wheel without its NVIDIA dependency wheels (530 MB instead
//! of several GB): `libtorch_cuda` is linked for real (`VQ_LINK_CUDA=1`: kept with
//! `--no-as-needed`, see crates/libtorch-link.rs) while the CUDA libraries it needs are only
//! found at run time on the GPU machine (`--allow-shlib-undefined` lets the linker leave them).
//!
//! NCCL: vq-dist's shim is compiled with `ProcessGroupNCCL` (`VQ_CUDA_INCLUDE`), which needs the
//! CUDA and NCCL headers LibTorch's own headers include. They come from the NVIDIA wheels that
//! torch 2.11 pins ([`HEADER_WHEELS`]): downloaded once, their `include` folders kept
//! (about 25 MB), the wheels themselves deleted. Nothing of NVIDIA's is linked or carried: the
//! GPU machine's own torch install has libnccl and the CUDA runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cmd;

/// What the GPU machine has; torch-sys 0.24 is built for it.
pub const TORCH_VERSION: &str = "2.11.0";
const TCH_VERSION: &str = "0.24.0";
/// The NVIDIA wheels whose headers the NCCL shim compiles against: the versions torch 2.11.0's
/// wheel requires (`cuda-toolkit==13.0.2`'s parts, `nvidia-nccl-cu13==2.28.9`).
const HEADER_WHEELS: [&str; 7] = [
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cublas==13.1.0.3",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-cusolver==12.0.4.66",
    "nvidia-nccl-cu13==2.28.9",
];
/// The `device` tool carries at most 64 MiB; leave room for the rest of the working tree.
const MAX_BUNDLE_BYTES: u64 = 60 << 20;
/// The test suites that take a device (`VQ_TEST_DEVICE=cuda`), and those of the commands that
/// run the models.
const TEST_PACKAGES: [&str; 6] = [
    "vq-model", "vq-prior", "vq-fid", "vq-cli", "vq-train", "vq-dist",
];
/// The benchmark executables the check runs (package, bench target).
const BENCHES: [(&str, &str); 3] = [
    ("vq-train", "train_step"),
    ("vq-prior", "sampling"),
    ("vq-fid", "features"),
];
/// Tracked paths the copy of the workspace needs to build.
const SOURCES: [&str; 6] = [
    "Cargo.toml",
    "Cargo.lock",
    ".cargo",
    "crates",
    "models",
    "tests",
];

#[derive(clap::Args, Clone)]
pub struct GpuBundleArgs {
    /// Training images carried (the first N of the CIFAR-10 training split).
    #[arg(long, default_value_t = 10_000)]
    pub train_images: usize,
    /// Test images carried (the first N of the test split).
    #[arg(long, default_value_t = 1_000)]
    pub test_images: usize,
    /// The dataset the subset is cut from.
    #[arg(long, default_value = "datasets/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// A rehearsal bundle instead (target/gpu-bundle/rehearsal.tar): the same contents from
    /// the normal CPU build (gloo only), so that `GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh
    /// target/gpu-bundle/rehearsal.tar` runs the whole check here first.
    #[arg(long)]
    pub rehearsal: bool,
}

struct Layout {
    /// target/gpu-bundle
    dir: PathBuf,
    rehearsal: bool,
}

impl Layout {
    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }
    fn target(&self) -> PathBuf {
        self.dir.join("target")
    }
    fn stage(&self) -> PathBuf {
        self.dir.join(if self.rehearsal {
            "rehearsal-stage"
        } else {
            "stage"
        })
    }
    /// The file the `device` tool carries.
    /// A rehearsal stays here and is not compressed (its binaries keep their debug lines).
    fn archive(&self) -> PathBuf {
        self.dir.join(if self.rehearsal {
            "rehearsal.tar"
        } else {
            "bundle.tar.xz"
        })
    }
}

pub fn run(root: &Path, args: &GpuBundleArgs) -> Result<()> {
    let layout = Layout {
        dir: root.join("target/gpu-bundle"),
        rehearsal: args.rehearsal,
    };
    let torch = if args.rehearsal {
        None
    } else {
        let torch = ensure_libtorch(root)?;
        ensure_cuda_headers(root)?;
        let changed = sync_sources(root, &layout.src())?;
        tracing::info!(
            "workspace copy at {} ({changed} files changed)",
            layout.src().display()
        );
        pin_tch(&layout.src())?;
        Some(torch)
    };
    let torch = torch.as_deref();

    let stage = layout.stage();
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    for sub in ["bin", "tests", "benches", "data", "fid"] {
        std::fs::create_dir_all(stage.join(sub))?;
    }

    let bins = build(
        root,
        &layout,
        torch,
        &[
            "build",
            "--release",
            "-p",
            "vq-cli",
            "-p",
            "vq-train",
            "-p",
            "vq-dist",
            "--bin",
            "vq-cli",
            "--bin",
            "vq-train",
            "--bin",
            "vq-dist-probe",
        ],
    )?;
    copy_executables(
        &bins,
        &["vq-cli", "vq-train", "vq-dist-probe"],
        &stage.join("bin"),
    )?;
    let mut test_args = vec!["test", "--release", "--no-run", "--lib"];
    for p in TEST_PACKAGES {
        test_args.extend(["-p", p]);
    }
    let tests = build(root, &layout, torch, &test_args)?;
    let test_names: Vec<&str> = tests.iter().map(|e| e.name.as_str()).collect();
    copy_executables(&tests, &test_names, &stage.join("tests"))?;
    for (package, bench) in BENCHES {
        let built = build(
            root,
            &layout,
            torch,
            &["bench", "--no-run", "-p", package, "--bench", bench],
        )?;
        copy_executables(&built, &[bench], &stage.join("benches"))?;
    }
    if !args.rehearsal {
        check_cuda_linked(&stage.join("bin/vq-cli"))?;
        check_nccl_linked(&stage.join("bin/vq-dist-probe"))?;
    }

    cut_cifar(&root.join(&args.data), &stage.join("data"), args)?;
    zeroed_inception(root, &stage.join("fid/inception-zeroed.pt"))?;

    let archive = layout.archive();
    let partial = archive.with_extension("partial");
    // The executables embed the same model weights several times over (vq-cli carries all
    // four, the test and bench executables two or three): xz's window must span the whole
    // archive (about 200 MB, most of it the zeroed FID network) for the copies after the first
    // to cost nothing. A 256 MiB window: 49 MiB instead of 63.5 MiB with `-9`'s 64 MiB
    // (docs/experiments.md); packing needs about 2.7 GiB of memory, unpacking 256 MiB. One
    // thread: xz's threads split
    // the input into blocks, each with its own window.
    cmd::run(
        Command::new("tar")
            .env("XZ_OPT", "--lzma2=preset=9,dict=256MiB -T1")
            .arg("--sort=name")
            .arg(if args.rehearsal { "-cf" } else { "-cJf" })
            .arg(&partial)
            .arg("-C")
            .arg(&stage)
            .arg("."),
    )
    .context("packing the bundle (needs tar and xz)")?;
    std::fs::rename(&partial, &archive)?;
    let bytes = std::fs::metadata(&archive)?.len();
    tracing::info!(
        "{}: {:.1} MiB",
        archive.display(),
        bytes as f64 / (1 << 20) as f64
    );
    if bytes > MAX_BUNDLE_BYTES && !args.rehearsal {
        bail!(
            "{} is {:.1} MiB, over the {} MiB the device tool carries with the working tree: carry fewer images (--train-images, --test-images)",
            archive.display(),
            bytes as f64 / (1 << 20) as f64,
            MAX_BUNDLE_BYTES >> 20
        );
    }
    println!("bundle ready: {}", archive.display());
    if args.rehearsal {
        println!("rehearse the check here, on the CPU:");
        println!("  GPU_CHECK_QUICK=1 GPU_CHECK_DEVICE=cpu PYTHON=.libtorch/venv/bin/python OUT=target/gpu-bundle/rehearsal-out bash scripts/gpu-check.sh target/gpu-bundle/rehearsal.tar");
        return Ok(());
    }
    println!("run it on the GPU machine (device tool), carrying that one file:");
    println!("  command: bash scripts/gpu-check.sh target/gpu-bundle/bundle.tar.xz");
    println!("  carry:   [\"target/gpu-bundle/bundle.tar.xz\"]");
    println!("  timeout: 540 s (the script stops itself within 8 minutes)");
    Ok(())
}

/// LibTorch 2.11 (`torch==2.11.0` from PyPI, CUDA build, no NVIDIA wheels) in
/// `.libtorch/torch-2.11/venv`; returns its `torch` folder.
fn ensure_libtorch(root: &Path) -> Result<PathBuf> {
    let dir = root.join(".libtorch/torch-2.11");
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    // The same reading of a torch install as `cargo xtask setup`'s (libtorch.rs).
    let torch_dir = |venv: &Path| -> Option<PathBuf> {
        let t = crate::libtorch::find_site_packages(venv)
            .ok()?
            .join("torch");
        t.join("lib/libtorch_cuda.so").exists().then_some(t)
    };
    if let Some(t) = torch_dir(&venv) {
        let version = crate::libtorch::wheel_version(&t).unwrap_or_default();
        if version.split('+').next() == Some(TORCH_VERSION) {
            return Ok(t);
        }
    }
    std::fs::create_dir_all(&dir)?;
    if !python.exists() {
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the virtualenv for LibTorch 2.11")?;
    }
    tracing::info!("installing torch=={TORCH_VERSION} (CUDA build, without the NVIDIA wheels: about 530 MB) into {}", venv.display());
    cmd::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-deps",
        &format!("torch=={TORCH_VERSION}"),
    ]))
    .context("pip could not install torch 2.11")?;
    torch_dir(&venv).with_context(|| {
        format!(
            "{} holds no torch with lib/libtorch_cuda.so after the install",
            venv.display()
        )
    })
}

/// The CUDA and NCCL headers of [`HEADER_WHEELS`] in `.libtorch/torch-2.11/cuda-include`
/// (`nvidia/cu13/include`, `nvidia/nccl/include`); returns the folders to include, in
/// `VQ_CUDA_INCLUDE`'s form.
fn ensure_cuda_headers(root: &Path) -> Result<String> {
    let dir = root.join(".libtorch/torch-2.11/cuda-include");
    let marker = dir.join("wheels.txt");
    let want = HEADER_WHEELS.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        let python = root.join(".libtorch/torch-2.11/venv/bin/python");
        let download = root.join(".libtorch/torch-2.11/header-wheels");
        // Wheels an earlier, failed fetch left would be unpacked too: start empty.
        for stale in [&dir, &download] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)?;
            }
        }
        std::fs::create_dir_all(&download)?;
        tracing::info!("fetching the CUDA and NCCL headers (NVIDIA wheels, about 1 GB to download, 25 MB kept)");
        cmd::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--no-deps",
                    "-d",
                ])
                .arg(&download)
                .args(HEADER_WHEELS),
        )
        .context("pip could not download the NVIDIA wheels whose headers the NCCL shim needs")?;
        let partial = dir.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        for entry in std::fs::read_dir(&download)? {
            let wheel = entry?.path();
            if wheel.extension().is_some_and(|e| e == "whl") {
                extract_includes(&wheel, &partial)
                    .with_context(|| format!("unpacking the headers of {}", wheel.display()))?;
            }
        }
        std::fs::write(partial.join("wheels.txt"), &want)?;
        std::fs::rename(&partial, &dir)?;
        std::fs::remove_dir_all(&download)?;
    }
    let includes = [
        "nvidia/cu13/include",
        "nvidia/cu13/include/cccl",
        "nvidia/nccl/include",
    ];
    for sub in includes {
        if !dir.join(sub).is_dir() {
            bail!(
                "{}: no {sub} in the NVIDIA wheels' headers (delete the folder to fetch again)",
                dir.display()
            );
        }
    }
    Ok(includes
        .iter()
        .map(|sub| dir.join(sub).display().to_string())
        .collect::<Vec<_>>()
        .join(":"))
}

/// Writes the wheel's `nvidia/<part>/include/...` files under `dest`.
fn extract_includes(wheel: &Path, dest: &Path) -> Result<()> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(wheel)?)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(name) = entry.enclosed_name().map(Path::to_path_buf) else {
            continue;
        };
        let mut parts = name.components().map(|c| c.as_os_str());
        let is_header = parts.next().is_some_and(|p| p == "nvidia")
            && parts.next().is_some()
            && parts.next().is_some_and(|p| p == "include")
            && entry.is_file();
        if !is_header {
            continue;
        }
        let out = dest.join(&name);
        std::fs::create_dir_all(out.parent().expect("a file has a parent"))?;
        let mut file = std::fs::File::create(&out)?;
        std::io::copy(&mut entry, &mut file)?;
    }
    Ok(())
}

/// Copies the tracked files under [`SOURCES`] into `dest`, writing only files whose bytes
/// differ and deleting files no longer tracked. Returns how many files were written or removed.
fn sync_sources(root: &Path, dest: &Path) -> Result<usize> {
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
        ])
        .args(SOURCES)
        .output()
        .context("listing the tracked files (git ls-files)")?;
    if !out.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files: Vec<PathBuf> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
        .collect();
    let mut changed = 0;
    for rel in &files {
        let (from, to) = (root.join(rel), dest.join(rel));
        let Ok(bytes) = std::fs::read(&from) else {
            continue; // deleted in the work tree, not yet in git
        };
        if std::fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            std::fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
            changed += 1;
        }
    }
    // Files the copy has that are no longer sources (renamed or deleted here).
    let keep: std::collections::HashSet<PathBuf> = files.into_iter().collect();
    for top in SOURCES {
        let mut stack = vec![dest.join(top)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p)?.flatten().map(|e| e.path()));
            } else if p.is_file() {
                let rel = p.strip_prefix(dest).expect("under dest").to_path_buf();
                if !keep.contains(&rel) && rel != Path::new("Cargo.lock") {
                    std::fs::remove_file(&p)?;
                    changed += 1;
                }
            }
        }
    }
    Ok(changed)
}

/// Points the copy's manifest at tch 0.24 and leaves the xtask out (it builds only here).
fn pin_tch(src: &Path) -> Result<()> {
    let path = src.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut pinned = String::new();
    let (mut tch, mut sys) = (false, false);
    for line in text.lines() {
        let out = if line.starts_with("tch = ") {
            tch = true;
            format!("tch = \"={TCH_VERSION}\"")
        } else if line.starts_with("torch-sys = ") {
            sys = true;
            format!("torch-sys = \"={TCH_VERSION}\"")
        } else if line.trim() == "\"xtask\"," {
            continue;
        } else {
            line.to_owned()
        };
        pinned.push_str(&out);
        pinned.push('\n');
    }
    if !(tch && sys) {
        bail!(
            "{}: no `tch = ` and `torch-sys = ` lines to pin to {TCH_VERSION}",
            path.display()
        );
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pinned.as_str()) {
        std::fs::write(&path, pinned)?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Executable {
    /// The target's name (a test executable: its crate's name with underscores).
    name: String,
    path: PathBuf,
}

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    target: Option<ArtifactTarget>,
}

#[derive(Deserialize)]
struct ArtifactTarget {
    name: String,
}

/// Runs cargo, in the copy against LibTorch 2.11 (`torch`), or for a rehearsal (`None`) in the
/// checkout as usual, and returns the executables it built.
fn build(
    root: &Path,
    layout: &Layout,
    torch: Option<&Path>,
    args: &[&str],
) -> Result<Vec<Executable>> {
    let mut cargo = match torch {
        Some(torch) => {
            let mut cargo = cmd::cargo(&layout.src());
            cargo
                .env("CARGO_TARGET_DIR", layout.target())
                .env("LIBTORCH", torch)
                .env_remove("LIBTORCH_USE_PYTORCH")
                .env("VQ_LINK_CUDA", "1")
                .env("VQ_CUDA_INCLUDE", ensure_cuda_headers(root)?)
                .env("RUSTFLAGS", "-C link-arg=-Wl,--allow-shlib-undefined")
                .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
                .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
                .env("CARGO_PROFILE_BENCH_DEBUG", "false")
                .env("CARGO_PROFILE_BENCH_STRIP", "symbols");
            tracing::info!(
                "cargo {} (tch {TCH_VERSION}, LibTorch {TORCH_VERSION})",
                args.join(" ")
            );
            cargo
        }
        None => {
            tracing::info!("cargo {} (rehearsal: the normal build)", args.join(" "));
            cmd::cargo(root)
        }
    };
    cargo
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(std::process::Stdio::piped());
    let out = cargo
        .output()
        .context("could not start cargo for the GPU build")?;
    if !out.status.success() {
        bail!("the GPU build failed: cargo {}", args.join(" "));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(a) = serde_json::from_str::<Artifact>(line) else {
            continue;
        };
        if let (true, Some(path), Some(target)) =
            (a.reason == "compiler-artifact", a.executable, a.target)
        {
            found.push(Executable {
                name: target.name,
                path,
            });
        }
    }
    Ok(found)
}

fn copy_executables(built: &[Executable], names: &[&str], dest: &Path) -> Result<()> {
    for name in names {
        let exe = built
            .iter()
            .find(|e| e.name == *name)
            .with_context(|| format!("the GPU build made no executable named {name}"))?;
        std::fs::copy(&exe.path, dest.join(name))
            .with_context(|| format!("copying {}", exe.path.display()))?;
    }
    Ok(())
}

/// The known failure of a CUDA build: the linker drops `libtorch_cuda` and the binary sees no
/// GPU. Its dynamic section must name it.
fn check_cuda_linked(exe: &Path) -> Result<()> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(exe)
        .output()
        .context("running readelf (binutils) on the bundled binary")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("[libtorch_cuda.so]") {
        bail!(
            "{} does not link libtorch_cuda.so: it would see no GPU",
            exe.display()
        );
    }
    Ok(())
}

/// The NCCL path is in: the probe's dynamic symbols name `ProcessGroupNCCL` (from
/// libtorch_cuda), so vq-dist's shim was compiled with it.
fn check_nccl_linked(exe: &Path) -> Result<()> {
    let out = Command::new("readelf")
        .args(["--dyn-syms", "-W"])
        .arg(exe)
        .output()
        .context("running readelf (binutils) on the bundled probe")?;
    if !String::from_utf8_lossy(&out.stdout).contains("ProcessGroupNCCL") {
        bail!(
            "{} has no ProcessGroupNCCL: vq-dist was built without NCCL (VQ_CUDA_INCLUDE)",
            exe.display()
        );
    }
    Ok(())
}

/// The first N training and test records, as a `cifar-10-batches-bin` folder whose training
/// files after the first are empty (training reads it with `any_record_count`).
fn cut_cifar(from: &Path, dest: &Path, args: &GpuBundleArgs) -> Result<()> {
    use vq_data::{RECORDS_PER_FILE, RECORD_BYTES, TEST_FILES, TRAIN_FILES};
    if args.train_images > TRAIN_FILES.len() * RECORDS_PER_FILE
        || args.test_images > RECORDS_PER_FILE
        || args.train_images == 0
        || args.test_images == 0
    {
        bail!("--train-images must be 1 to 50000 and --test-images 1 to 10000");
    }
    let out = dest.join(vq_data::DIR_NAME);
    std::fs::create_dir_all(&out)?;
    std::fs::copy(from.join(vq_data::META_FILE), out.join(vq_data::META_FILE)).with_context(
        || {
            format!(
                "{}: no CIFAR-10 here (cargo xtask download-cifar)",
                from.display()
            )
        },
    )?;
    let mut left = args.train_images;
    for name in TRAIN_FILES {
        let take = left.min(RECORDS_PER_FILE);
        left -= take;
        copy_records(&from.join(name), &out.join(name), take * RECORD_BYTES)?;
    }
    copy_records(
        &from.join(TEST_FILES[0]),
        &out.join(TEST_FILES[0]),
        args.test_images * RECORD_BYTES,
    )
}

fn copy_records(from: &Path, to: &Path, bytes: usize) -> Result<()> {
    let mut data = Vec::new();
    if bytes > 0 {
        data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        if data.len() < bytes {
            bail!("{}: shorter than {bytes} bytes", from.display());
        }
        data.truncate(bytes);
    }
    std::fs::write(to, data).with_context(|| format!("writing {}", to.display()))
}

/// The FID network with every stored tensor zeroed: the same graph, shapes and number types,
/// so the same work per image, in a few kilobytes once compressed (the real one is 87 MB, more
/// than the bundle may carry). Good for the GPU's feature-extraction rate only; it computes no
/// FID (its checksum differs, so `vq-cli fid` refuses it).
fn zeroed_inception(root: &Path, dest: &Path) -> Result<()> {
    let real = root.join(".libtorch/fid/default_1.pt");
    let file = std::fs::File::open(&real)
        .with_context(|| format!("{}: missing (cargo xtask setup)", real.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("reading {}", real.display()))?;
    let out = std::fs::File::create(dest)?;
    let mut writer = zip::ZipWriter::new(out);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().to_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        // TorchScript archives keep each tensor's storage as `<archive>/data/<key>`.
        let is_storage = name
            .rsplit_once("/data/")
            .is_some_and(|(_, key)| !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()));
        if is_storage {
            bytes.iter_mut().for_each(|b| *b = 0);
        }
        let options = zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() > u32::MAX as usize / 2);
        writer.start_file(name, options)?;
        std::io::Write::write_all(&mut writer, &bytes)?;
    }
    writer.finish()?;
    Ok(())
}
