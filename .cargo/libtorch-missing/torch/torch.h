// Found only when LibTorch is not: `.cargo/config.toml` adds this folder to CPATH, which the
// compiler searches after torch-sys's own include folders.
#error "LibTorch not found where LIBTORCH points (by default .libtorch/torch in the checkout). Run `cargo xtask setup` to install it, or set LIBTORCH to your own LibTorch 2.13.0."
