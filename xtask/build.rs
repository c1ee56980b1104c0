//! The xtask never calls LibTorch, but in a workspace-wide build (`cargo test --workspace`,
//! clippy) Cargo unifies features, vq-store gets its `tch` feature, and the xtask's binaries
//! then link LibTorch; they need its folder as an rpath to start. `cargo xtask` alone builds
//! vq-store without LibTorch, before LibTorch is installed. `LIBTORCH` comes from
//! `.cargo/config.toml` (or the user).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
