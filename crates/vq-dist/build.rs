//! Compiles the c10d shim against the LibTorch torch-sys links (its headers, `gloo-decl/` for
//! the gloo names they mention), then does what every LibTorch-linking crate's build script
//! does (`../libtorch-link.rs`: the rpath).
//!
//! NCCL: with `VQ_LINK_CUDA=1` (a CUDA LibTorch, linked for real) and `VQ_CUDA_INCLUDE` (the
//! NVIDIA wheels' header folders, `:`-separated: CUDA runtime, cuBLAS, cuSPARSE, cuSOLVER, CCCL,
//! NCCL; `cargo xtask gpu-bundle` fetches them) the shim also builds `ProcessGroupNCCL` groups,
//! and links `libtorch_cuda` and `libc10_cuda`, where they live. The shim calls no CUDA or NCCL
//! function itself, so only LibTorch's libraries are needed to link.

#[path = "../libtorch-link.rs"]
mod link;

fn main() {
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=cpp/gloo-decl");
    println!("cargo:rerun-if-env-changed=VQ_CUDA_INCLUDE");
    link::main();
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report LibTorch's folder: run `cargo xtask setup`");
    };
    let root = std::path::Path::new(&lib).join("..");
    let cuda_includes: Vec<String> = match (
        std::env::var("VQ_LINK_CUDA").as_deref(),
        std::env::var("VQ_CUDA_INCLUDE"),
    ) {
        (Ok("1"), Ok(dirs)) => dirs
            .split(':')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let nccl = !cuda_includes.is_empty();
    // Other headers at the same folders (another wheel set) must recompile the shim.
    for dir in &cuda_includes {
        println!("cargo:rerun-if-changed={dir}");
    }
    // For the tests: whether this build was meant to have NCCL.
    println!("cargo:rustc-env=VQ_DIST_NCCL={}", u8::from(nccl));
    let mut build = cc::Build::new();
    if nccl {
        build.define("USE_C10D_NCCL", None).define("VQD_NCCL", None);
        for dir in &cuda_includes {
            build.include(dir);
        }
    }
    build
        .cpp(true)
        .std("c++17")
        .file("cpp/shim.cpp")
        .include("cpp/gloo-decl")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("vq_dist_shim");
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}
