//! A decoder tuned adversarially (`vq-train decoder`) from the bundled model, end to end: the
//! encoder and codebook stay bit for bit, the codes of an image do not change, `.vqz` files of
//! the bundled model decode with the tuned checkpoint, its prior samples with it, and a file of
//! an unrelated model is still refused.

use std::collections::BTreeMap;
use std::path::Path;

use vq_data::{Cifar10, Split};
use vq_e2e::{root, run, stderr};

/// Tensor name → its bytes, from a safetensors file (8-byte header length, JSON header, data).
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, info)| {
            let range = info["data_offsets"].as_array().unwrap();
            let (a, b) = (
                range[0].as_u64().unwrap() as usize,
                range[1].as_u64().unwrap() as usize,
            );
            (name.clone(), data[a..b].to_vec())
        })
        .collect()
}

fn dataset(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    for (split, n, seed) in [(Split::Train, 60usize, 1u32), (Split::Test, 16, 2)] {
        let images = ndarray::Array4::from_shape_fn((n, 3, 32, 32), |(i, c, y, x)| {
            let s = (i as u32 * 7 + seed) as f32;
            (((x as f32 * 0.2 + s).sin() * (y as f32 * 0.15 + c as f32).cos() * 0.5 + 0.5) * 255.0)
                as u8
        });
        Cifar10 {
            images,
            labels: ndarray::Array1::from_shape_fn(n, |i| (i % 10) as u8),
            class_names: vq_data::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        }
        .save(&data, split)
        .unwrap();
    }
    data
}

fn cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut all = vec!["--device", "cpu"];
    all.extend_from_slice(args);
    run("vq-cli", &all, cwd)
}

#[test]
fn a_tuned_decoder_keeps_the_codes_and_reads_the_same_files_and_prior() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    train_decoder(dir, &[]);

    // Encoder and codebook bit for bit; the decoder trained.
    let before = tensors(&root().join("models/cifar10-default/model.safetensors"));
    let after = tensors(&dir.join("sharp/checkpoints/last/model.safetensors"));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let mut decoder_changed = 0;
    for (name, bytes) in &before {
        if name.starts_with("decoder.") {
            decoder_changed += usize::from(after[name] != *bytes);
        } else {
            assert!(after[name] == *bytes, "{name} changed");
        }
    }
    assert!(decoder_changed > 0, "the decoder did not train");
    same_codes_other_pixels(dir);
}

/// A new decoder of its own shape (`--decoder-stages`) for the bundled model's frozen codes:
/// the encoder and codebook are the bundled model's bit for bit, the decoder's variables are
/// the new shape's, and it reads and writes the same files and prior.
#[test]
fn a_new_decoder_of_its_own_shape_keeps_the_codes_and_reads_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    train_decoder(dir, &["--decoder-stages", "16x1,8x1,8x1"]);
    let before = tensors(&root().join("models/cifar10-default/model.safetensors"));
    let after = tensors(&dir.join("sharp/checkpoints/last/model.safetensors"));
    let outside = |t: &BTreeMap<String, Vec<u8>>| {
        t.iter()
            .filter(|(name, _)| !name.starts_with("decoder."))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        outside(&before),
        outside(&after),
        "the encoder or codebook changed"
    );
    assert!(after.contains_key("decoder.to_pixels.weight"));
    assert!(after.contains_key("decoder.stage2.0.conv3.weight"));
    assert!(!after.contains_key("decoder.res.0.conv3.weight"));
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("sharp/checkpoints/last/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["decoder"]["stages"][0]["channels"], 16);
    same_codes_other_pixels(dir);
    // A shape that does not fit the model's downsampling is refused before training.
    let out = run(
        "vq-train",
        &[
            "decoder",
            "--config",
            "decoder.json",
            "--decoder-stages",
            "16x1,8x1",
            "--run-dir",
            "bad",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("3 stages"), "{}", stderr(&out));
}

/// A run that continues an adversarial one (`--vqvae RUN --discriminator-from RUN`) starts from
/// its discriminator: at a learning rate too small to move a weight, the new run's
/// discriminator is the old one's bit for bit, and without the flag it is a fresh one; a
/// folder without a discriminator is refused, naming it.
#[test]
fn a_continued_adversarial_run_starts_from_the_earlier_discriminator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    train_decoder(dir, &[]);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("decoder.json")).unwrap()).unwrap();
    config["schedule"]["lr"] = serde_json::json!(1e-30);
    config["schedule"]["steps"] = serde_json::json!(2);
    config["disc_start"] = serde_json::json!(0);
    std::fs::write(dir.join("still.json"), config.to_string()).unwrap();
    let continued = |run_dir: &str, flags: &[&str]| {
        let mut args = vec![
            "decoder",
            "--config",
            "still.json",
            "--vqvae",
            "sharp",
            "--run-dir",
            run_dir,
        ];
        args.extend_from_slice(flags);
        run("vq-train", &args, dir)
    };
    let disc = |run_dir: &str| {
        tensors(
            &dir.join(run_dir)
                .join("checkpoints/last/discriminator.safetensors"),
        )
    };
    let out = continued("more", &["--discriminator-from", "sharp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(disc("more"), disc("sharp"));
    let out = continued("fresh", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(disc("fresh"), disc("sharp"));

    let bundled = root().join("models/cifar10-default");
    let out = continued("bad", &["--discriminator-from", bundled.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cifar10-default") && err.contains("has no discriminator.safetensors"),
        "{err}"
    );
}

/// `vq-train decoder` for a few steps from the bundled model on a small dataset, into
/// `DIR/sharp`, with `flags` added.
fn train_decoder(dir: &Path, flags: &[&str]) {
    let data = dataset(dir);
    std::fs::write(
        dir.join("decoder.json"),
        serde_json::json!({
            "format": 2,
            "data": {"path": data, "any_record_count": true},
            "discriminator": {"channels": 4, "compute": "f32"},
            "schedule": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1,
                         "log_every": 2, "eval_every": 6, "checkpoint_every": 6},
            "runtime": {"threads": 1, "device": "cpu"},
            "eval_images": 8, "disc_start": 2
        })
        .to_string(),
    )
    .unwrap();
    let mut args = vec!["decoder", "--config", "decoder.json", "--run-dir", "sharp"];
    args.extend_from_slice(flags);
    let out = run("vq-train", &args, dir);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The checkpoint in `DIR/sharp` declares the bundled model's codes, writes the same `.vqz`
/// bytes, decodes the bundled model's files to other pixels, samples the bundled prior, and
/// refuses a file of an unrelated model.
fn same_codes_other_pixels(dir: &Path) {
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("sharp/checkpoints/last/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["codes_of"], "44edb453f42c4f592c84cbfa10c71318");

    // The same image gives the same code file with either checkpoint.
    image::RgbImage::from_fn(40, 28, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 9) as u8, ((x + y) * 3) as u8])
    })
    .save(dir.join("a.png"))
    .unwrap();
    assert!(cli(&["encode", "a.png", "-o", "old.vqz"], dir)
        .status
        .success());
    let sharp = dir.join("sharp");
    let sharp = sharp.to_str().unwrap();
    let out = cli(
        &["--checkpoint", sharp, "encode", "a.png", "-o", "new.vqz"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.join("old.vqz")).unwrap(),
        std::fs::read(dir.join("new.vqz")).unwrap()
    );
    // The bundled model's file decodes with the tuned decoder, to other pixels.
    let out = cli(
        &[
            "--checkpoint",
            sharp,
            "decode",
            "old.vqz",
            "-o",
            "sharp.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cli(&["decode", "old.vqz", "-o", "plain.png"], dir)
        .status
        .success());
    assert_ne!(
        image::open(dir.join("sharp.png")).unwrap().to_rgb8(),
        image::open(dir.join("plain.png")).unwrap().to_rgb8()
    );
    // The bundled prior samples through it.
    let out = cli(
        &["--checkpoint", sharp, "sample", "-n", "2", "-o", "s.png"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A file of an unrelated model is refused, naming the file.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("models/cifar10-default").join(f), other.join(f)).unwrap();
    }
    let weights = other.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let out = cli(
        &[
            "--checkpoint",
            other.to_str().unwrap(),
            "encode",
            "a.png",
            "-o",
            "other.vqz",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &["--checkpoint", sharp, "decode", "other.vqz", "-o", "x.png"],
        dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("other.vqz") && stderr(&out).contains("made by model"));
    assert!(!dir.join("x.png").exists());
}
