//! Build script shared by every crate that links LibTorch (`build = "../libtorch-link.rs"`).
//!
//! tch's own build script adds an rpath only to tch's targets (`rustc-link-arg` is not
//! transitive), so binaries and tests of our crates would need `LD_LIBRARY_PATH` to start. A
//! direct dependency on torch-sys hands us its library folder as `DEP_TCH_LIBTORCH_LIB`; we
//! bake it into every target of the crate. When the CUDA libraries are really installed we also
//! keep `libtorch_cuda` linked: with the default `--as-needed` the linker drops it (no symbol of
//! ours refers to it) and `Cuda::is_available()` would then be false.

use std::path::Path;
use std::process::Command;

pub fn main() {
    println!("cargo:rerun-if-changed=../libtorch-link.rs");
    // Where `cargo xtask setup` installs what the binaries need beside LibTorch (the FID
    // network): the checkout's `.libtorch`, a link to the per-user data folder, which the rpath
    // below points into as well. Both are baked in as the real folder, not the link, so that an
    // installed binary keeps working after its checkout is deleted.
    let mut setup_home = None;
    if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
        let home = Path::new(&dir).join("../../.libtorch");
        println!("cargo:rerun-if-changed={}", home.display());
        let home = home.canonicalize().unwrap_or(home);
        println!("cargo:rustc-env=VQ_LIBTORCH_HOME={}", home.display());
        // Watched only where set-up wrote it: cargo reruns a build script on every build while
        // a watched file is missing (a LibTorch of the user's own has none).
        let marker = home.join("installed.json");
        if marker.exists() {
            println!("cargo:rerun-if-changed={}", marker.display());
        }
        setup_home = Some(home);
    }
    println!("cargo:rerun-if-env-changed=VQ_LINK_CUDA");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // vq-store links LibTorch only with its `tch` feature (the xtask uses it without).
        let optional = std::env::var("CARGO_PKG_NAME").as_deref() == Ok("vq-store")
            && std::env::var_os("CARGO_FEATURE_TCH").is_none();
        if !optional {
            println!("cargo:warning=torch-sys did not report its library folder; no rpath set");
        }
        return;
    };
    let lib = Path::new(&lib);
    let lib = &lib.canonicalize().unwrap_or_else(|_| lib.to_path_buf());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The CUDA wheels land beside torch in site-packages/nvidia: rerun when that set changes.
    for watched in [lib.to_path_buf(), lib.join("../../nvidia")] {
        if watched.exists() {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    let cuda = match std::env::var("VQ_LINK_CUDA").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        // Set-up's own install says which set it is: the CPU set may hold the CUDA libraries
        // too (Python's torch needs them for the export test) without being meant for a GPU,
        // and linking them would cost every process a tenth of a second at start-up.
        _ => setup_home
            .filter(|home| lib.starts_with(home))
            .and_then(|home| std::fs::read_to_string(home.join("installed.json")).ok())
            .map(|marker| marker.contains("\"cuda\""))
            .unwrap_or_else(|| cuda_loadable(&lib.join("libtorch_cuda.so"))),
    };
    if cuda {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
}

/// True when `libtorch_cuda.so` exists and all of its dependencies resolve (the lean CPU
/// install ships the library without cuBLAS/cuDNN, and linking it then would break start-up).
fn cuda_loadable(lib: &Path) -> bool {
    if !lib.exists() {
        return false;
    }
    match Command::new("ldd").arg(lib).output() {
        Ok(out) if out.status.success() => {
            !String::from_utf8_lossy(&out.stdout).contains("not found")
        }
        _ => false,
    }
}
