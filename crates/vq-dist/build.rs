//! Compiles the c10d shim against the LibTorch torch-sys links (its headers, `gloo-decl/` for
//! the gloo names they mention), then does what every LibTorch-linking crate's build script
//! does (`../libtorch-link.rs`: the rpath).

#[path = "../libtorch-link.rs"]
mod link;

fn main() {
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=cpp/gloo-decl");
    link::main();
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report LibTorch's folder: run `cargo xtask setup`");
    };
    let root = std::path::Path::new(&lib).join("..");
    cc::Build::new()
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
}
