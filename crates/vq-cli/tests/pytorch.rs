//! The PyTorch export: `vq-cli export --pytorch` and its Python module (torch only) give the
//! same codes and pixels as vqvae-rs on CIFAR-10 test images, and a model saved back from
//! PyTorch loads in `vq-cli --checkpoint`.
//!
//! It needs a Python with PyTorch 2.13.0: `VQVAE_TORCH_PYTHON`, else LibTorch's own virtualenv
//! (`.libtorch/venv`), which `cargo xtask test` (or `cargo xtask setup --pytorch`) gives what
//! Python's torch needs beside the lean LibTorch (the CUDA wheels, even on a CPU).

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use vq_model::Checkpoint;

fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("VQVAE_TORCH_PYTHON") {
        return PathBuf::from(p);
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch/venv/bin/python");
    let imports = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        imports,
        "{} cannot import torch: run `cargo xtask setup --pytorch` (or the whole suite with `cargo xtask test`), or set VQVAE_TORCH_PYTHON to a Python with torch 2.13.0",
        python.display()
    );
    python
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cifar10-test-100")
}

fn vq_cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_vq-cli"))
        .args(["--device", "cpu"])
        .args(args)
        .env_remove("VQVAE_CHECKPOINT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `(N, 3, H, W)` uint8 pixels in the model's input range.
fn model_input(ckpt: &Checkpoint, images: &Tensor) -> Tensor {
    let (scale, offset) = ckpt.config.input_range.scale_offset();
    images.to_kind(Kind::Float) * scale as f64 + offset as f64
}

#[test]
fn the_exported_model_in_pytorch_gives_the_same_codes_and_pixels() {
    let python = torch_python();
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    vq_cli(&["export", "--pytorch", export.to_str().unwrap()]);
    for file in [
        "vqvae_rs.py",
        "README.md",
        "model/model.safetensors",
        "model/config.json",
        "sharp/model.safetensors",
        "prior/model.safetensors",
    ] {
        assert!(export.join(file).is_file(), "{file} was not written");
    }

    // vqvae-rs's own answers on the first 100 CIFAR-10 test images.
    let set = vq_data::load_split(fixture(), vq_data::Split::Test, &Default::default()).unwrap();
    let n = set.len() as i64;
    let images = Tensor::from_slice(set.images.as_slice().unwrap()).view([n, 3, 32, 32]);
    let plain = Checkpoint::bundled(Device::Cpu).unwrap();
    let sharp = Checkpoint::bundled_tuned_decoder(Device::Cpu).unwrap();
    let codes = plain.model.encode(&model_input(&plain, &images));
    let range = plain.config.input_range;
    let decoded = |c: &Checkpoint| c.model.decode(&codes);
    let (plain_out, sharp_out) = (decoded(&plain), decoded(&sharp));
    // A 45 × 38 image, through vq-cli's own path (edge padding), as its .npy of codes.
    let odd_png = tmp.path().join("odd.png");
    let odd = image::RgbImage::from_fn(45, 38, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 256) as u8])
    });
    odd.save(&odd_png).unwrap();
    let odd_codes_path = tmp.path().join("odd.npy");
    vq_cli(&[
        "encode",
        "--codes",
        odd_codes_path.to_str().unwrap(),
        odd_png.to_str().unwrap(),
    ]);
    let odd_codes =
        vq_codes::npy::Array::from_bytes(&std::fs::read(&odd_codes_path).unwrap()).unwrap();
    let odd_tensor = Tensor::from_slice(odd.as_raw())
        .view([38, 45, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .contiguous();
    let reference = tmp.path().join("reference.safetensors");
    Tensor::write_safetensors(
        &[
            ("images", images.shallow_clone()),
            ("codes", codes.contiguous()),
            (
                "plain_pixels",
                vq_model::to_unit(&plain_out, range).contiguous(),
            ),
            (
                "sharp_pixels",
                vq_model::to_unit(&sharp_out, range).contiguous(),
            ),
            (
                "plain_uint8",
                vq_model::to_bytes(&plain_out, range).contiguous(),
            ),
            (
                "sharp_uint8",
                vq_model::to_bytes(&sharp_out, range).contiguous(),
            ),
            ("odd_image", odd_tensor),
            (
                "odd_codes",
                Tensor::from_slice(&odd_codes.data).view([1, 1, 10, 12]),
            ),
        ],
        &reference,
    )
    .unwrap();

    let resaved = tmp.path().join("resaved");
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_pytorch.py"))
        .args([&export, &reference, &resaved])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("PyTorch against vqvae-rs: {figures}");
    // The bar: 99.9% of codes equal, decoded pixels within 1e-4 (both networks run in
    // f32 on the CPU; their kernels may sum in other orders).
    for name in ["plain", "sharp"] {
        let f = |k: &str| figures[format!("{name}_{k}")].as_f64().unwrap();
        assert!(f("codes_equal") >= 0.999, "{figures}");
        assert!(f("pixels_max_diff") <= 1e-4, "{figures}");
        assert!(f("uint8_max_diff") <= 1.0, "{figures}");
    }
    assert_eq!(
        figures["plain_codes_shape"],
        serde_json::json!([100, 1, 8, 8])
    );
    assert!(
        figures["odd_codes_equal"].as_f64().unwrap() >= 0.99,
        "{figures}"
    );

    // The other way: the model written by vqvae_rs.save loads in vq-cli --checkpoint and
    // encodes to the same codes.
    let back = tmp.path().join("back.npy");
    let split = format!("{}:test", fixture().display());
    vq_cli(&[
        "--checkpoint",
        resaved.to_str().unwrap(),
        "encode",
        "--codes",
        back.to_str().unwrap(),
        &split,
    ]);
    let back = vq_codes::npy::Array::from_bytes(&std::fs::read(&back).unwrap()).unwrap();
    let ours: Vec<i64> = Vec::<i64>::try_from(codes.flatten(0, -1)).unwrap();
    assert_eq!(back.data, ours);
}
