//! Your own images end to end: an image folder (odd sizes, grayscale, a corrupt file) imported
//! at 64×64, a short VQ-VAE run and a short prior run on it, then `vq-cli` with both, and the
//! refusal of a prior that belongs to another VQ-VAE.

use std::path::Path;

use vq_e2e::{run, stderr, stdout};

fn picture(width: u32, height: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
        let s = seed as f32;
        image::Rgb([
            v(x as f32 * 0.11 + s),
            v(y as f32 * 0.07 + 2.0 * s),
            v((x + y) as f32 * 0.05 + 3.0 * s),
        ])
    })
}

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::write(path, value.to_string()).unwrap();
}

#[test]
fn import_train_and_sample_on_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("photos");
    for (split, n) in [("train", 12u32), ("test", 3)] {
        for class in ["boats", "cars"] {
            std::fs::create_dir_all(root.join(split).join(class)).unwrap();
            for i in 0..n {
                let seed = i + if class == "cars" { 50 } else { 0 };
                let path = root.join(format!("{split}/{class}/{i:02}"));
                match i % 5 {
                    0 => picture(70 + i, 50, seed)
                        .save(path.with_extension("png"))
                        .unwrap(),
                    1 => picture(64, 81, seed)
                        .save(path.with_extension("jpg"))
                        .unwrap(),
                    2 => image::DynamicImage::ImageRgb8(picture(90, 90, seed))
                        .to_luma8()
                        .save(path.with_extension("bmp"))
                        .unwrap(),
                    3 => picture(66, 70, seed)
                        .save(path.with_extension("gif"))
                        .unwrap(),
                    _ => picture(80, 64, seed)
                        .save(path.with_extension("tiff"))
                        .unwrap(),
                }
            }
        }
    }
    std::fs::write(root.join("train/cars/corrupt.jpg"), b"\xff\xd8\xff\xe0 cut").unwrap();

    // `vq-cli import`, as an installed vq-cli runs it: every format it reads (GIF and TIFF
    // too), the corrupt file skipped and named.
    let data = dir.join("datasets/mine");
    let out = run(
        "vq-cli",
        &[
            "--json",
            "import",
            root.to_str().unwrap(),
            "-o",
            data.to_str().unwrap(),
            "--size",
            "64",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (report["train"].as_u64(), report["test"].as_u64()),
        (Some(24), Some(6)),
        "{report}"
    );
    assert_eq!(report["classes"], serde_json::json!(["boats", "cars"]));
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert!(skipped[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("corrupt.jpg"));
    // An output folder that is not empty is refused, and nothing in it is touched.
    let again = run(
        "vq-cli",
        &[
            "import",
            root.to_str().unwrap(),
            "-o",
            data.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("mine"), "{}", stderr(&again));

    // A short VQ-VAE run on it: 64×64 images give a 16×16 code grid. (The config files of
    // this test are in the flat layout of format 1, which must keep working.)
    let config = dir.join("vqvae.json");
    write_json(
        &config,
        serde_json::json!({
            "model": {"hidden_channels": 16, "residual_hidden_channels": 8, "residual_layers": 1,
                      "codebook_size": 32, "code_dim": 8, "dead_code_steps": 4},
            "data": data, "steps": 4, "batch_size": 8, "lr": 2e-3, "warmup_steps": 1,
            "kmeans_init_images": 8, "kmeans_iters": 3, "log_every": 2, "eval_every": 2,
            "eval_images": 6, "checkpoint_every": 2, "threads": 1, "device": "cpu",
            "fid": true
        }),
    );
    let out = run(
        "vq-train",
        &["--config", config.to_str().unwrap(), "--run-dir", "vq"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The run ends with the reconstructions' FID, as its config asked.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vq/summary.json")).unwrap())
            .unwrap();
    let rfid = summary["generation"]["rfid"].as_f64().unwrap();
    assert!(rfid.is_finite() && rfid > 0.0, "{summary}");
    assert_eq!(summary["generation"]["images"], 6);
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vq/data.json")).unwrap()).unwrap();
    assert_eq!(recorded["kind"], "image-set");
    assert_eq!(recorded["side"], 64);
    assert_eq!(
        recorded["class_names"],
        serde_json::json!(["boats", "cars"])
    );
    // The reconstruction grid holds 64-pixel tiles: 6 test images and their reconstructions,
    // enlarged 3 times.
    let grid = image::open(dir.join("vq/recon-step-000004.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (3 * (8 * 66 + 2), 3 * (2 * 66 + 2))
    );

    // A short prior run on its codes.
    let prior_config = dir.join("prior.json");
    write_json(
        &prior_config,
        serde_json::json!({"prior": {"channels": 8, "layers": 2}, "steps": 3, "batch_size": 8,
                           "eval_every": 3, "checkpoint_every": 3, "threads": 1, "device": "cpu",
                           "fid_samples": 4}),
    );
    let out = run(
        "vq-train",
        &[
            "prior",
            "--vqvae",
            "vq",
            "--data",
            data.to_str().unwrap(),
            "--config",
            prior_config.to_str().unwrap(),
            "--run-dir",
            "prior",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let prior: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("prior/checkpoints/last/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(prior["format"], 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prior/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["generation"]["samples"], 4, "{summary}");
    assert!(summary["generation"]["fid"].as_f64().unwrap().is_finite());
    let provenance = &prior["provenance"];
    assert_eq!(provenance["grid_side"], 16);
    assert_eq!(provenance["image_side"], 64);
    assert_eq!(provenance["classes"], 2);

    // vq-cli samples 64×64 images of a class by its folder name...
    let out = run(
        "vq-cli",
        &[
            "--device",
            "cpu",
            "--checkpoint",
            "vq",
            "sample",
            "-n",
            "3",
            "--class",
            "cars",
            "--prior",
            "prior",
            "-o",
            "s.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("images/s"));
    let samples = image::open(dir.join("s.png")).unwrap();
    assert_eq!(
        (samples.width(), samples.height()),
        (3 * (8 * 66 + 2), 3 * (66 + 2))
    );
    // ...refuses guidance for the PixelCNN, which has no unconditional model...
    let out = run(
        "vq-cli",
        &[
            "--device",
            "cpu",
            "--checkpoint",
            "vq",
            "sample",
            "-n",
            "2",
            "--prior",
            "prior",
            "--guidance",
            "2",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no unconditional model"),
        "{}",
        stderr(&out)
    );
    // ...but a transformer prior samples with guidance, from its key/value cache...
    let transformer_config = dir.join("transformer.json");
    write_json(
        &transformer_config,
        serde_json::json!({"format": 2,
                           "prior": {"kind": "transformer", "width": 16, "layers": 1, "heads": 2},
                           "schedule": {"steps": 3, "batch_size": 8, "eval_every": 3,
                                        "checkpoint_every": 3},
                           "runtime": {"threads": 1, "device": "cpu"}}),
    );
    let out = run(
        "vq-train",
        &[
            "prior",
            "--vqvae",
            "vq",
            "--data",
            data.to_str().unwrap(),
            "--config",
            transformer_config.to_str().unwrap(),
            "--run-dir",
            "transformer",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        "vq-cli",
        &[
            "--device",
            "cpu",
            "--checkpoint",
            "vq",
            "sample",
            "-n",
            "3",
            "--class",
            "boats",
            "--prior",
            "transformer",
            "--guidance",
            "2",
            "--top-k",
            "10",
            "-o",
            "t.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("guidance 2"), "{}", stdout(&out));
    // ...and with no flag, draws with the settings its config records.
    let config_path = dir.join("transformer/checkpoints/last/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["sampling"] = serde_json::json!({"guidance": 1.5, "temperature": 0.9});
    write_json(&config_path, config);
    let out = run(
        "vq-cli",
        &[
            "--device",
            "cpu",
            "--checkpoint",
            "vq",
            "sample",
            "-n",
            "3",
            "--prior",
            "transformer",
            "-o",
            "t2.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("temperature 0.9, guidance 1.5"),
        "{}",
        stdout(&out)
    );
    // ...refuses a class the dataset does not have...
    let out = run(
        "vq-cli",
        &[
            "--device",
            "cpu",
            "--checkpoint",
            "vq",
            "sample",
            "--class",
            "cat",
            "--prior",
            "prior",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("boats, cars"), "{}", stderr(&out));
    // ...and a prior that belongs to another VQ-VAE (here the bundled one).
    let out = run(
        "vq-cli",
        &["--device", "cpu", "sample", "--prior", "prior"],
        dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this prior was trained on the codes of model"),
        "{}",
        stderr(&out)
    );
    // The reconstructions' FID against the test split, whose statistics are cached beside the
    // dataset and reused.
    let eval_fid = || {
        let out = run(
            "vq-cli",
            &[
                "--device",
                "cpu",
                "--checkpoint",
                "vq",
                "--json",
                "eval",
                "--data",
                data.to_str().unwrap(),
                "--fid",
            ],
            dir,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let e: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        e["rfid"].as_f64().unwrap()
    };
    let rfid = eval_fid();
    assert!(rfid.is_finite() && rfid > 0.0, "{rfid}");
    // (The training split's are there too: the prior run measured its samples against them.)
    let cached: Vec<_> = std::fs::read_dir(data.join("fid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("test-"))
        .collect();
    assert!(
        cached.len() == 1 && cached[0].ends_with(".fidstats"),
        "{cached:?}"
    );
    assert_eq!(eval_fid(), rfid);

    // Its codes are refused by the bundled model too.
    picture(64, 64, 9).save(dir.join("p.png")).unwrap();
    let out = run(
        "vq-cli",
        &["--device", "cpu", "--checkpoint", "vq", "encode", "p.png"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("vq-cli", &["--device", "cpu", "decode", "p.vqz"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("made by model"), "{}", stderr(&out));
}

#[test]
fn an_output_folder_mirrors_sub_folders_and_never_writes_one_output_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("in");
    for sub in ["a", "b"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        picture(32, 32, 1)
            .save(root.join(sub).join("x.png"))
            .unwrap();
    }
    // Same name, two formats, one folder: both would be `y.recon.png`.
    picture(32, 32, 2).save(root.join("a/y.png")).unwrap();
    picture(32, 32, 3).save(root.join("a/y.jpg")).unwrap();
    let out = run("vq-cli", &["--json", "reconstruct", "in", "-o", "out"], dir);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the clash must fail the command"
    );
    // With --json the failures are JSON objects too, beside the reports.
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<&str> = lines.iter().filter_map(|l| l["error"].as_str()).collect();
    assert_eq!(errors.len(), 2, "{lines:?}");
    assert!(
        errors[0].contains("y.png")
            && errors[0].contains("already the output of")
            && errors[0].contains("y.jpg"),
        "{errors:?}"
    );
    assert!(errors[1].contains("1 of 4 inputs failed"), "{errors:?}");
    // Without --json they are text on standard error.
    let out = run("vq-cli", &["reconstruct", "in", "-o", "out2"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 of 4 inputs failed"),
        "{}",
        stderr(&out)
    );
    for written in [
        "out/a/x.recon.png",
        "out/b/x.recon.png",
        "out/a/y.recon.png",
    ] {
        assert!(dir.join(written).is_file(), "{written} missing");
    }
    // The clash kept the first input's output: the JPEG's (sorted first).
    let reports: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("error").is_none()).collect();
    assert_eq!(reports.len(), 3);
    assert!(reports
        .iter()
        .any(|r| r["input"].as_str().unwrap().ends_with("a/y.jpg")));
}
