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

/// Runs `tests/SCRIPT` with `python` and `args`; its one JSON line of figures.
fn run_script(python: &Path, script: &str, args: &[&Path]) -> serde_json::Value {
    let out = Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {script}: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    // The bundled prior's logits of those codes given their classes.
    let labels = Tensor::from_slice(&set.labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>());
    let prior = vqvae::Prior::bundled(&vqvae::Tokenizer::bundled().unwrap()).unwrap();
    let prior_logits = {
        let _guard = tch::no_grad_guard();
        prior
            .checkpoint()
            .model
            .logits(&codes.select(1, 0), Some(&labels), false)
    };
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
            ("labels", labels.shallow_clone()),
            ("prior_logits", prior_logits.contiguous()),
            (
                "odd_codes",
                Tensor::from_slice(&odd_codes.data).view([1, 1, 10, 12]),
            ),
        ],
        &reference,
    )
    .unwrap();

    let resaved = tmp.path().join("resaved");
    let figures = run_script(
        &python,
        "check_pytorch.py",
        &[&export, &reference, &resaved, &odd_codes_path],
    );
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
    // The prior: the same logits (f32 both sides, summed in other orders), and samples drawn
    // in Python that the prior finds likely (far below the 9 bits of a uniform code out of
    // 512; CIFAR-10's own test codes cost about 6.6).
    assert!(
        figures["prior_logits_max_diff"].as_f64().unwrap() <= 1e-3,
        "{figures}"
    );
    assert!(
        figures["prior_argmax_equal"].as_f64().unwrap() >= 0.999,
        "{figures}"
    );
    assert_eq!(figures["prior_samples_shape"], serde_json::json!([8, 8, 8]));
    let sampled = figures["prior_samples_bits_per_code"].as_f64().unwrap();
    assert!((1.0..8.0).contains(&sampled), "{figures}");
    // The NumPy reader of the Python side reads vq-cli's array of codes.
    assert_eq!(
        figures["odd_npy_equal"],
        serde_json::json!(true),
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

/// NumPy itself reads the `.npy` arrays vqvae-rs writes (and `numpy.save` writes the same
/// bytes), and vqvae-rs reads NumPy's, every integer type and both byte orders.
#[test]
fn numpy_and_vqvae_rs_read_each_others_arrays() {
    use vq_codes::npy::{Array, Dtype};
    let python = torch_python();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let types = [
        ("i1", Dtype::I8, vec![3, 4]),
        ("u1", Dtype::U8, vec![2, 3, 4]),
        ("i2", Dtype::I16, vec![2, 1, 3, 4]),
        ("u2", Dtype::U16, vec![5]),
        ("i4", Dtype::I32, vec![2, 2]),
        ("u4", Dtype::U32, vec![3]),
        ("i8", Dtype::I64, vec![4, 1, 2, 2]),
        ("u8", Dtype::U64, vec![2]),
    ];
    // check_numpy.py's `expected`: (i · 37) mod 200, less 100 for signed types.
    let expected = |code: &str, shape: &[usize]| -> Vec<i64> {
        let n: usize = shape.iter().product();
        let shift = if code.starts_with('i') { 100 } else { 0 };
        (0..n as i64).map(|i| (i * 37) % 200 - shift).collect()
    };
    for (code, dtype, shape) in &types {
        let array = Array::new(shape.clone(), expected(code, shape), *dtype).unwrap();
        std::fs::write(dir.join(format!("ours_{code}.npy")), array.to_bytes()).unwrap();
    }
    let report = run_script(&python, "check_numpy.py", &[dir]);
    eprintln!("NumPy against vq_codes::npy: {report}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
    assert_eq!(report["checked"].as_array().unwrap().len(), types.len());
    for (code, dtype, shape) in &types {
        let mut files = vec![format!("numpy_{code}.npy")];
        if dtype.size() > 1 {
            files.push(format!("numpy_big_{code}.npy"));
        }
        for file in files {
            let read = Array::from_bytes(&std::fs::read(dir.join(&file)).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(read.shape, *shape, "{file}");
            assert_eq!(read.dtype, *dtype, "{file}");
            assert_eq!(read.data, expected(code, shape), "{file}");
        }
    }
}
