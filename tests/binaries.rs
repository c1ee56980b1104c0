//! The binaries start on their own (LibTorch found through the rpath), and fail cleanly on
//! missing or bad data.

use ndarray::{Array1, Array4};
use vq_data::{Cifar10, Split, CLASS_NAMES, DIR_NAME};
use vq_e2e::{run, stderr, stdout};

fn synthetic_split(n: usize) -> Cifar10 {
    Cifar10 {
        images: Array4::from_shape_fn((n, 3, 32, 32), |(i, c, h, w)| {
            ((i + c * 7 + h * 3 + w) % 256) as u8
        }),
        labels: Array1::from_shape_fn(n, |i| (i % 10) as u8),
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn cli_info_starts_without_library_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run("vq-cli", &["info", "--device", "cpu"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("device       Cpu") && text.contains("models/cifar10-default"),
        "{text}"
    );
}

#[test]
fn train_on_full_size_synthetic_data_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR_NAME);
    synthetic_split(50_000).save(&dir, Split::Train).unwrap();
    synthetic_split(10_000).save(&dir, Split::Test).unwrap();
    let config = tmp.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"model": {"hidden_channels": 8, "residual_hidden_channels": 4, "residual_layers": 1,
                      "codebook_size": 16, "code_dim": 4},
            "steps": 3, "batch_size": 8, "kmeans_init_images": 32, "eval_every": 100}"#,
    )
    .unwrap();
    let out = run(
        "vq-train",
        &[
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--run-dir",
            "run",
            "--device",
            "cpu",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 steps"), "{}", stdout(&out));
    assert!(stdout(&out).contains("/ 16 codes used"), "{}", stdout(&out));
    assert!(tmp
        .path()
        .join("run/checkpoints/last/model.safetensors")
        .is_file());
}

#[test]
fn train_without_data_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run("vq-train", &["--steps", "1", "--run-dir", "r"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("datasets/cifar-10-batches-bin"), "{err}");
    assert!(err.contains("cargo xtask download-cifar"), "{err}");
    assert!(
        !tmp.path().join("r").exists(),
        "no half-made run folder is left"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn train_on_a_truncated_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR_NAME);
    synthetic_split(50_000).save(&dir, Split::Train).unwrap();
    synthetic_split(10_000).save(&dir, Split::Test).unwrap();
    let victim = dir.join("data_batch_2.bin");
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let out = run(
        "vq-train",
        &["--data", dir.to_str().unwrap(), "--steps", "1"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("data_batch_2.bin") && err.contains("cut off"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A residual-VQ model from the quantizer flags: its `.vqz` files hold one level per codebook,
/// decode at every depth up to the model's, and `vq-cli eval` reports each level's usage.
#[test]
fn a_residual_model_trains_from_flags_and_its_files_decode_at_fewer_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR_NAME);
    synthetic_split(50_000).save(&dir, Split::Train).unwrap();
    synthetic_split(10_000).save(&dir, Split::Test).unwrap();
    let config = tmp.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"model": {"hidden_channels": 8, "residual": {"hidden_channels": 4, "layers": 1}},
            "schedule": {"steps": 3, "batch_size": 8, "eval_every": 100},
            "kmeans_init_images": 32, "format": 2}"#,
    )
    .unwrap();
    let flags = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run("vq-train", &args, tmp.path())
    };
    // Flags that do not fit the quantizer are refused by name.
    let out = flags(&["--quantizer", "fsq", "--depth", "3", "--run-dir", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--depth"), "{}", stderr(&out));
    let out = flags(&[
        "--quantizer",
        "residual",
        "--depth",
        "3",
        "--quantizer-dropout",
        "--codebook-size",
        "16",
        "--code-dim",
        "4",
        "--run-dir",
        "rvq",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = std::fs::read_to_string(tmp.path().join("rvq/summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        summary["final_eval"]["levels"].as_array().map(|l| l.len()),
        Some(3),
        "perplexity and codes used of each level: {summary}"
    );

    let image = image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x + y) * 3) as u8])
    });
    image.save(tmp.path().join("a.png")).unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["--device", "cpu", "--checkpoint", "rvq"];
        all.extend_from_slice(args);
        run("vq-cli", &all, tmp.path())
    };
    let out = cli(&[
        "--json",
        "eval",
        "--data",
        dir.to_str().unwrap(),
        "--limit",
        "16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let levels = eval["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 3, "{eval}");
    assert!(
        levels
            .iter()
            .all(|l| l["codes_used"].as_i64().unwrap() >= 1),
        "{eval}"
    );
    let out = cli(&["encode", "a.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(tmp.path().join("a.vqz")).unwrap();
    let file = vq_codes::CodeFile::from_bytes(&bytes).unwrap();
    assert_eq!((file.version, file.depth()), (3, 3));
    assert!(cli(&["reconstruct", "a.png"]).status.success());
    assert!(cli(&["decode", "a.vqz"]).status.success());
    let read = |name: &str| {
        image::open(tmp.path().join(name))
            .unwrap()
            .to_rgb8()
            .into_raw()
    };
    assert_eq!(read("a.decoded.png"), read("a.recon.png"));
    let mut decoded = Vec::new();
    for levels in ["1", "2", "3"] {
        let name = format!("a{levels}.png");
        let out = cli(&["decode", "a.vqz", "--levels", levels, "-o", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
        decoded.push(read(&name));
    }
    assert_eq!(decoded[2], read("a.recon.png"));
    assert_ne!(
        decoded[0], decoded[2],
        "one level is a different, coarser image"
    );
    let out = cli(&["decode", "a.vqz", "--levels", "4", "-o", "a4.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("holds 3 level"), "{}", stderr(&out));

    // A prior models the first level; its samples decode at that depth.
    let prior_config = tmp.path().join("prior.json");
    std::fs::write(
        &prior_config,
        r#"{"prior": {"kind": "transformer", "width": 16, "layers": 1, "heads": 2},
            "schedule": {"steps": 2, "batch_size": 8, "eval_every": 100},
            "format": 2}"#,
    )
    .unwrap();
    let out = run(
        "vq-train",
        &[
            "prior",
            "--vqvae",
            "rvq",
            "--config",
            prior_config.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--run-dir",
            "prior",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let prior: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("prior/checkpoints/last/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(prior["provenance"]["codes"]["depth"], 1, "{prior}");
    let out = cli(&["sample", "--prior", "prior", "-n", "4", "-o", "s.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join("s.png").is_file());
}
