//! `vq-cli` as a user runs it, with the bundled model: odd sizes, grayscale, transparency, bad
//! files, and `.vqz` round trips that must equal `reconstruct`.

use std::path::{Path, PathBuf};

use vq_e2e::{root, run, stderr, stdout};

fn bundled() -> PathBuf {
    root().join("models/cifar10-default")
}

fn picture(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
        image::Rgb([
            v(x as f32 * 0.08),
            v(y as f32 * 0.06 + 1.0),
            v((x + y) as f32 * 0.04 + 2.0),
        ])
    })
}

fn cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut all = vec!["--device", "cpu"];
    all.extend_from_slice(args);
    run("vq-cli", &all, cwd)
}

fn assert_clean_failure(out: &std::process::Output, names: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(names), "error does not name {names}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Decoding the arithmetic-coded `file` with `prior`, not the one that coded it, fails
/// cleanly, naming the file and the prior it was coded with.
fn assert_refused_with_prior(dir: &Path, file: &str, prior: &Path) {
    let out = cli(
        &[
            "decode",
            file,
            "-o",
            "x.png",
            "--prior",
            prior.to_str().unwrap(),
        ],
        dir,
    );
    assert_clean_failure(&out, file);
    assert!(
        stderr(&out).contains("coded with prior"),
        "{}",
        stderr(&out)
    );
}

/// `vq-cli decode` turns `A.vqz` and `B.vqz` in `dir` into byte-identical `A.png` and `B.png`.
fn assert_decode_to_the_same_image(dir: &Path, a: &str, b: &str) {
    for name in [a, b] {
        let out = cli(
            &[
                "decode",
                &format!("{name}.vqz"),
                "-o",
                &format!("{name}.png"),
            ],
            dir,
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let read = |name: &str| std::fs::read(dir.join(format!("{name}.png"))).unwrap();
    assert!(
        read(a) == read(b),
        "{a}.vqz and {b}.vqz decode to other images"
    );
}

#[test]
fn reconstruct_odd_sizes_grayscale_and_transparency() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    picture(37, 23).save(dir.join("odd.png")).unwrap();
    image::DynamicImage::ImageRgb8(picture(50, 41))
        .to_luma8()
        .save(dir.join("gray.png"))
        .unwrap();
    image::DynamicImage::ImageRgb8(picture(19, 30))
        .to_rgba8()
        .save(dir.join("alpha.png"))
        .unwrap();
    picture(64, 48).save(dir.join("photo.jpg")).unwrap();
    for name in ["odd.png", "gray.png", "alpha.png", "photo.jpg"] {
        let out = cli(&["reconstruct", name], dir);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("PSNR") && text.contains("bits/pixel"),
            "{text}"
        );
        let stem = name.split('.').next().unwrap();
        let recon = image::open(dir.join(format!("{stem}.recon.png"))).unwrap();
        let original = image::open(dir.join(name)).unwrap();
        assert_eq!(recon.width(), original.width(), "{name}");
        assert_eq!(recon.height(), original.height(), "{name}");
        let gray = name == "gray.png";
        assert_eq!(
            !recon.color().has_color(),
            gray,
            "{name}: {:?}",
            recon.color()
        );
    }
    // The bundled model reconstructs a smooth picture well; a broken one would not.
    let out = cli(&["reconstruct", "odd.png", "-o", "odd-again.png"], dir);
    let text = stdout(&out);
    let psnr: f64 = text
        .split("PSNR ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no PSNR in {text}"));
    assert!(psnr > 18.0, "PSNR {psnr} dB");
    assert_eq!(
        std::fs::read(dir.join("odd-again.png")).unwrap(),
        std::fs::read(dir.join("odd.recon.png")).unwrap()
    );
}

#[test]
fn encode_then_decode_equals_reconstruct() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Larger than one 256-pixel tile, so the tiled path is exercised.
    picture(301, 263).save(dir.join("big.png")).unwrap();
    assert!(cli(&["reconstruct", "big.png"], dir).status.success());
    let out = cli(&["encode", "big.png", "-o", "big.vqz"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(dir.join("big.vqz")).unwrap();
    // 76 × 66 codes of 9 bits, after a 15-byte version-3 header (magic, flags, two 2-byte
    // sizes, the model id, depth 1 and K = 512) and before its 2-byte CRC.
    assert_eq!(&bytes[..3], b"VQ3");
    assert_eq!(bytes.len(), 15 + (76 * 66 * 9usize).div_ceil(8) + 2);
    let out = cli(&["decode", "big.vqz", "-o", "big.decoded.png"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let decoded = image::open(dir.join("big.decoded.png")).unwrap().to_rgb8();
    let recon = image::open(dir.join("big.recon.png")).unwrap().to_rgb8();
    assert_eq!(decoded, recon);

    // A cut file and a flipped byte are errors naming the file.
    std::fs::write(dir.join("cut.vqz"), &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&cli(&["decode", "cut.vqz"], dir), "cut.vqz");
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x20;
    std::fs::write(dir.join("flipped.vqz"), &flipped).unwrap();
    assert_clean_failure(&cli(&["decode", "flipped.vqz"], dir), "flipped.vqz");
    assert!(!dir.join("cut.decoded.png").exists());
}

#[test]
fn searched_codes_cost_the_same_bits_and_reconstruct_better() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    picture(40, 36).save(dir.join("p.png")).unwrap();
    for (name, extra) in [("plain", &[][..]), ("searched", &["--search", "3"][..])] {
        let mut args = vec!["encode", "p.png", "-o"];
        let file = format!("{name}.vqz");
        args.push(&file);
        args.extend_from_slice(extra);
        let out = cli(&args, dir);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(read("plain.vqz").len(), read("searched.vqz").len());
    assert_ne!(
        read("plain.vqz"),
        read("searched.vqz"),
        "the search changed no code"
    );
    // reconstruct --search writes what decoding the searched file gives, at a higher PSNR.
    let psnr_of = |extra: &[&str], output: &str| -> f64 {
        let mut args = vec!["reconstruct", "p.png", "-o", output, "--json"];
        args.extend_from_slice(extra);
        let out = cli(&args, dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        report["psnr"].as_f64().unwrap()
    };
    let plain = psnr_of(&[], "plain.recon.png");
    let searched = psnr_of(&["--search", "3"], "searched.recon.png");
    assert!(searched > plain, "{searched} <= {plain}");
    let out = cli(
        &["decode", "searched.vqz", "-o", "searched.decoded.png"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read("searched.decoded.png"), read("searched.recon.png"));
    // A candidate count out of range is a usage error.
    let out = cli(&["encode", "p.png", "--search", "0"], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A copy of the bundled checkpoint with one weight changed: loads fine, is another model.
fn other_model(dir: &Path) -> PathBuf {
    let other = dir.join("other-model");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(bundled().join(f), other.join(f)).unwrap();
    }
    let path = other.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01; // low mantissa bits of the last weight
    std::fs::write(&path, bytes).unwrap();
    other
}

#[test]
fn code_files_from_another_model_and_bad_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    picture(32, 32).save(dir.join("a.png")).unwrap();
    assert!(cli(&["encode", "a.png"], dir).status.success());
    let other = other_model(dir);
    let out = cli(
        &["decode", "a.vqz", "--checkpoint", other.to_str().unwrap()],
        dir,
    );
    assert_clean_failure(&out, "a.vqz");
    assert!(stderr(&out).contains("made by model"), "{}", stderr(&out));

    // A config that does not match the weights.
    let mismatched = dir.join("mismatched");
    std::fs::create_dir_all(&mismatched).unwrap();
    std::fs::copy(
        bundled().join("model.safetensors"),
        mismatched.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(bundled().join("config.json")).unwrap();
    std::fs::write(
        mismatched.join("config.json"),
        config.replace("\"codebook_size\": 512", "\"codebook_size\": 256"),
    )
    .unwrap();
    let out = cli(&["info", "--checkpoint", mismatched.to_str().unwrap()], dir);
    assert_clean_failure(&out, "model.safetensors");

    // NaN in the weights.
    let nan = dir.join("nan");
    std::fs::create_dir_all(&nan).unwrap();
    std::fs::copy(bundled().join("config.json"), nan.join("config.json")).unwrap();
    let mut bytes = std::fs::read(bundled().join("model.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(nan.join("model.safetensors"), bytes).unwrap();
    let out = cli(&["info", "--checkpoint", nan.to_str().unwrap()], dir);
    assert_clean_failure(&out, "NaN");

    // Not a checkpoint at all.
    let out = cli(&["info", "--checkpoint", dir.to_str().unwrap()], dir);
    assert_clean_failure(&out, "neither a checkpoint folder");
}

#[test]
fn bad_inputs_fail_cleanly_and_inputs_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("notes.txt.png"), "not an image").unwrap();
    assert_clean_failure(
        &cli(&["reconstruct", "notes.txt.png"], dir),
        "notes.txt.png",
    );
    assert_clean_failure(&cli(&["reconstruct", "missing.png"], dir), "missing.png");
    std::fs::write(dir.join("empty.png"), "").unwrap();
    assert_clean_failure(&cli(&["reconstruct", "empty.png"], dir), "empty.png");
    let mut png = Vec::new();
    picture(40, 40)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(dir.join("cut.png"), &png[..png.len() / 2]).unwrap();
    assert_clean_failure(&cli(&["reconstruct", "cut.png"], dir), "cut.png");

    picture(20, 20).save(dir.join("keep.png")).unwrap();
    let before = std::fs::read(dir.join("keep.png")).unwrap();
    let out = cli(&["reconstruct", "keep.png", "-o", "keep.png"], dir);
    assert_clean_failure(&out, "overwrite");
    assert_eq!(std::fs::read(dir.join("keep.png")).unwrap(), before);
}

#[test]
fn folders_of_images_and_info() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in/sub")).unwrap();
    picture(32, 32).save(dir.join("in/a.png")).unwrap();
    picture(16, 40).save(dir.join("in/sub/b.bmp")).unwrap();
    std::fs::write(dir.join("in/readme.txt"), "skipped").unwrap();
    let out = cli(&["-q", "reconstruct", "in", "-o", "out"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("out/a.recon.png").is_file());
    // The output folder mirrors the sub-folder the input was found in.
    assert!(dir.join("out/sub/b.recon.png").is_file());

    let out = cli(&["info", "--json"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["config"]["quantizer"]["kind"], "vq");
    assert_eq!(info["config"]["quantizer"]["codebook_size"], 512);
    assert!(info["parameters"].as_i64().unwrap() > 100_000);
    assert!(info["training"]["step"].as_u64().unwrap() > 0);
    assert!(info["training"]["eval"]["psnr"].as_f64().unwrap() > 20.0);
}

#[test]
fn eval_reports_json_figures_on_a_split() {
    use ndarray::{Array1, Array4};
    use vq_data::{Cifar10, Split, CLASS_NAMES, DIR_NAME};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join(DIR_NAME);
    let n = 10_000;
    let base = picture(64, 32);
    Cifar10 {
        images: Array4::from_shape_fn((n, 3, 32, 32), |(i, c, h, w)| {
            base.get_pixel((w + i % 32) as u32, h as u32).0[c]
        }),
        labels: Array1::from_shape_fn(n, |i| (i % 10) as u8),
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
    .save(&data, Split::Test)
    .unwrap();
    let out = cli(
        &[
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--limit",
            "300",
            "--json",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(e["images"], 300);
    // Far above what an untrained model scores on these smooth pictures (under 12 dB).
    assert!(e["psnr"].as_f64().unwrap() > 14.0, "{e}");
    // The luma alone, as recent papers report PSNR: another figure, finite.
    let psnr_y = e["psnr_y"].as_f64().unwrap();
    assert!(
        psnr_y.is_finite() && psnr_y != e["psnr"].as_f64().unwrap(),
        "{e}"
    );
    assert!(e["ssim"].as_f64().unwrap() > 0.3, "{e}");
    assert!(e["codes_used"].as_i64().unwrap() >= 1);
    assert!(e.get("search").is_none(), "{e}");

    // Searched codes on the same images: a higher PSNR, and the report says how they were
    // chosen.
    let eval_of_first_20 = |extra: &[&str]| {
        let mut args = vec!["eval", "--data", data.to_str().unwrap(), "--limit", "20"];
        args.extend_from_slice(extra);
        args.push("--json");
        let out = cli(&args, tmp.path());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(stdout(&out).trim()).unwrap()
    };
    let plain = eval_of_first_20(&[]);
    let searched = eval_of_first_20(&["--search", "3", "--search-sweeps", "1"]);
    assert_eq!(searched["search"]["candidates"], 3, "{searched}");
    assert_eq!(searched["search"]["sweeps"], 1, "{searched}");
    assert!(
        searched["psnr"].as_f64().unwrap() > plain["psnr"].as_f64().unwrap() + 0.05,
        "{plain} {searched}"
    );

    let out = cli(&["eval", "--data", "nowhere"], tmp.path());
    assert_clean_failure(&out, "download-cifar");
}

#[test]
fn sample_with_the_bundled_prior_is_reproducible_and_checks_its_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = cli(&["sample", "-n", "10", "--seed", "5", "-o", "a.png"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("images/s"), "{}", stdout(&out));
    let out = cli(&["sample", "-n", "10", "--seed", "5", "-o", "b.png"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = image::open(dir.join("a.png")).unwrap().to_rgb8();
    let b = image::open(dir.join("b.png")).unwrap().to_rgb8();
    // Two rows of 8 tiles (32 px with a 2-px border) enlarged 3 times, and the same seed gives
    // the same pixels.
    assert_eq!(a.dimensions(), (3 * (8 * 34 + 2), 3 * (2 * 34 + 2)));
    assert!(a == b, "the same seed gave other samples");
    let out = cli(
        &[
            "sample", "-n", "10", "--seed", "6", "--class", "ship", "-o", "c.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(image::open(dir.join("c.png")).unwrap().to_rgb8() != a);
    // Unconditional samples (the null class): other pictures, reported without guidance; a
    // guidance or class flag beside it is refused.
    let out = cli(
        &[
            "--json",
            "sample",
            "-n",
            "10",
            "--seed",
            "5",
            "--unconditional",
            "-o",
            "u.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["guidance"], 1.0, "{report}");
    assert!(image::open(dir.join("u.png")).unwrap().to_rgb8() != a);
    for refused in [
        &["sample", "--unconditional", "--guidance", "2"][..],
        &["sample", "--unconditional", "--class", "cat"][..],
    ] {
        let out = cli(refused, dir);
        assert!(!out.status.success(), "{refused:?} was accepted");
    }

    // The tuned decoder draws the samples by default; --decoder plain gives the same codes to
    // the bundled model's own decoder: other pixels, the same picture in outline.
    // 10 samples of seed 5 with `extra` flags, written to `out`: the JSON report.
    let sample = |extra: &[&str], out: &str| -> serde_json::Value {
        let mut args = vec!["--json", "sample", "-n", "10", "--seed", "5"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out]);
        let out = cli(&args, dir);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap()
    };
    let report = sample(&[], "t.png");
    assert_eq!(
        report["decoder"], "the bundled sharp decoder (models/cifar10-sharp)",
        "{report}"
    );
    let report = sample(&["--decoder", "plain"], "p.png");
    assert!(
        report["decoder"]
            .as_str()
            .unwrap()
            .contains("cifar10-default"),
        "{report}"
    );
    // The default is `--compute auto`: bf16 where this CPU runs it natively, else f32.
    let default_kind = report["compute"].as_str().unwrap().to_string();
    assert!(["f32", "bf16"].contains(&default_kind.as_str()), "{report}");
    assert_eq!(
        sample(&["--compute", "auto"], "auto.png")["compute"],
        *default_kind
    );
    assert!(image::open(dir.join("auto.png")).unwrap().to_rgb8() == a);

    // bf16 sampling: reproducible with its seed, reported, and other draws than f32's.
    for name in ["h1.png", "h2.png"] {
        let report = sample(&["--compute", "bf16"], name);
        assert_eq!(report["compute"], "bf16", "{report}");
    }
    assert_eq!(sample(&["--compute", "f32"], "f.png")["compute"], "f32");
    let h1 = image::open(dir.join("h1.png")).unwrap().to_rgb8();
    let f = image::open(dir.join("f.png")).unwrap().to_rgb8();
    assert!(h1 == image::open(dir.join("h2.png")).unwrap().to_rgb8());
    assert!(h1 != f, "bf16 drew exactly the f32 samples");
    // int8 sampling (CPU): reproducible, reported, other draws than f32's.
    for name in ["i1.png", "i2.png"] {
        let report = sample(&["--compute", "int8"], name);
        assert_eq!(report["compute"], "int8", "{report}");
    }
    let i1 = image::open(dir.join("i1.png")).unwrap().to_rgb8();
    assert!(i1 == image::open(dir.join("i2.png")).unwrap().to_rgb8());
    assert!(i1 != f, "int8 drew exactly the f32 samples");
    assert!(if default_kind == "f32" {
        f == a
    } else {
        h1 == a
    });

    // Guidance on the first codes only: reported, and unguided later codes draw other samples.
    let all = sample(&["--guided-codes", "64"], "g64.png");
    assert_eq!(all["guided_codes"], 64, "{all}");
    assert_eq!(
        sample(&["--guided-codes", "8"], "g8.png")["guided_codes"],
        8
    );
    let g64 = image::open(dir.join("g64.png")).unwrap().to_rgb8();
    assert!(g64 != image::open(dir.join("g8.png")).unwrap().to_rgb8());
    assert_clean_failure(&cli(&["sample", "--guided-codes=-1"], dir), "guided-codes");

    let plain = image::open(dir.join("p.png")).unwrap().to_rgb8();
    assert!(
        plain != a,
        "the plain decoder drew the tuned decoder's pixels"
    );
    let mean_abs = plain
        .as_raw()
        .iter()
        .zip(a.as_raw())
        .map(|(&p, &t)| (p as f64 - t as f64).abs())
        .sum::<f64>()
        / plain.as_raw().len() as f64;
    assert!(mean_abs < 8.0, "other codes? mean difference {mean_abs}");
    let bundled = bundled();
    let with_checkpoint = [
        "--checkpoint",
        bundled.to_str().unwrap(),
        "sample",
        "--decoder",
        "tuned",
    ];
    assert_clean_failure(&cli(&with_checkpoint, dir), "--decoder");

    // Without -n: every class, one row of 8 each.
    let out = cli(&["--json", "sample", "--seed", "1", "-o", "all.png"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["samples"], 80, "{report}");
    let all = image::open(dir.join("all.png")).unwrap().to_rgb8();
    assert_eq!(all.dimensions(), (3 * (8 * 34 + 2), 3 * (10 * 34 + 2)));

    assert_clean_failure(&cli(&["sample", "--class", "unicorn"], dir), "unicorn");
    assert_clean_failure(&cli(&["sample", "--temperature", "0"], dir), "temperature");
    assert_clean_failure(&cli(&["sample", "--prior", "nowhere"], dir), "nowhere");
    assert!(!dir.join("samples.png").exists());
}

/// Outputs on a full disk and on a read-only file system: a clear error naming the output, no
/// partial file, and an existing output left as it was.
#[test]
fn full_and_read_only_output_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Noise compresses badly: its PNG reconstruction is far larger than the 16 kB disk.
    let noise = image::RgbImage::from_fn(160, 120, |x, y| {
        let h =
            (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgb([(h >> 8) as u8, (h >> 16) as u8, (h >> 24) as u8])
    });
    noise.save(dir.join("in.png")).unwrap();
    let (full, ro) = (dir.join("full"), dir.join("ro"));
    std::fs::create_dir_all(&full).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    // $1 full mount, $2 read-only mount, $3 vq-cli, $4 input, $5 results folder.
    let script = r#"
        mount -t tmpfs -o size=16k tmpfs "$1" || exit 97
        mount -t tmpfs -o ro,size=16k tmpfs "$2" || exit 97
        echo keep > "$1/out.png"
        "$3" --device cpu reconstruct "$4" -o "$1/out.png" 2> "$5/full.err"; echo $? > "$5/full.rc"
        cp "$1/out.png" "$5/full.after"; ls -A "$1" > "$5/full.ls"
        "$3" --device cpu reconstruct "$4" -o "$2/out.png" 2> "$5/ro.err"; echo $? > "$5/ro.rc"
        "$3" --device cpu encode "$4" -o "$2" 2> "$5/ro-encode.err"; echo $? > "$5/ro-encode.rc"
    "#;
    let bin = vq_e2e::binary("vq-cli");
    let input = dir.join("in.png");
    let Some(out) = vq_e2e::in_mount_namespace(script, &[&full, &ro, &bin, &input, dir]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    for (case, cause) in [
        ("full", "No space left on device"),
        ("ro", "Read-only file system"),
        ("ro-encode", "Read-only file system"),
    ] {
        let err = read(&format!("{case}.err"));
        assert_eq!(read(&format!("{case}.rc")).trim(), "1", "{case}: {err}");
        assert!(err.contains(cause), "{case}: {err}");
        assert!(
            err.contains("/out.") || err.contains("in.vqz"),
            "{case}: names no file: {err}"
        );
        assert!(!err.contains("panicked"), "{case}: {err}");
    }
    assert_eq!(read("full.after"), "keep\n", "the old output was damaged");
    assert_eq!(
        read("full.ls").trim(),
        "out.png",
        "a partial file was left behind"
    );
}

/// `cargo install` puts the binary somewhere else: copied out of the build tree and run from a
/// folder outside the repository, it still has its bundled model and prior (they are built
/// into it) and finds LibTorch through its rpath.
#[test]
fn an_installed_binary_works_anywhere_with_the_bundled_model_and_prior() {
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = tmp.path().join("bin");
    let work = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let installed = bin_dir.join("vq-cli");
    std::fs::copy(vq_e2e::binary("vq-cli"), &installed).unwrap();
    let run_installed = |args: &[&str]| {
        std::process::Command::new(&installed)
            .args(["--device", "cpu"])
            .args(args)
            .current_dir(&work)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("VQVAE_CHECKPOINT")
            .output()
            .unwrap()
    };
    picture(40, 30).save(work.join("photo.png")).unwrap();
    let out = run_installed(&["reconstruct", "photo.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(work.join("photo.recon.png").is_file());
    let out = run_installed(&["sample", "-n", "8", "-o", "s.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_installed(&["--json", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        info["checkpoint"]
            .as_str()
            .unwrap()
            .contains("bundled model (models/cifar10-default)"),
        "{info}"
    );
    assert_eq!(info["model_id"], "44edb453f42c4f592c84cbfa10c71318");
    // LibTorch (the rpath) and the FID network are found in the per-user data folder that
    // set-up installs into, which the checkout's `.libtorch` links to: the binary names the
    // real folder, not the checkout's link, so it keeps working after its clone is deleted.
    let link = root().join(".libtorch");
    if link
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        let real = std::fs::canonicalize(&link).unwrap();
        let dynamic = std::process::Command::new("readelf")
            .arg("-d")
            .arg(&installed)
            .output()
            .expect("readelf (binutils, beside the linker)");
        let dynamic = String::from_utf8_lossy(&dynamic.stdout).into_owned();
        let runpath = dynamic
            .lines()
            .find(|l| l.contains("RUNPATH") || l.contains("RPATH"))
            .unwrap_or_else(|| panic!("no rpath in {dynamic}"));
        assert!(
            !runpath.contains(&link.display().to_string())
                && runpath.contains(&real.display().to_string()),
            "{runpath}: not in {}",
            real.display()
        );
    }
}

/// The bundled files on disk are format 1 (flat config files): read as a checkpoint folder they
/// are the same model as the built-in copy, and a `.vqz` file written before format 2 decodes to
/// the image it decoded to then.
#[test]
fn format_1_checkpoints_and_an_old_vqz_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fixtures = root().join("tests/fixtures");
    let out = cli(
        &[
            "--json",
            "--checkpoint",
            bundled().to_str().unwrap(),
            "info",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["model_id"], "44edb453f42c4f592c84cbfa10c71318");
    assert_eq!(info["training"]["step"], 35000);
    // The PixelCNN bundled before format 2, with its format-1 config. It samples in f32 only:
    // bf16 is refused naming it, auto stays f32.
    let prior = fixtures.join("pixelcnn-format1");
    let with_compute = |compute: &'static str| {
        cli(
            &[
                "--checkpoint",
                bundled().to_str().unwrap(),
                "sample",
                "-n",
                "2",
                "--prior",
                prior.to_str().unwrap(),
                "--compute",
                compute,
                "-o",
                "s.png",
            ],
            dir,
        )
    };
    let out = with_compute("f32");
    assert!(out.status.success(), "{}", stderr(&out));
    for compute in ["bf16", "int8"] {
        let out = with_compute(compute);
        assert_clean_failure(&out, "pixelcnn-format1");
        assert!(stderr(&out).contains("transformer"), "{}", stderr(&out));
    }
    assert!(with_compute("auto").status.success());

    // Made with the build before format 2 (`vq-cli encode picture.png`, then `decode`).
    let out = cli(
        &[
            "decode",
            fixtures.join("before.vqz").to_str().unwrap(),
            "-o",
            "now.png",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let now = image::open(dir.join("now.png")).unwrap().to_rgb8();
    let then = image::open(fixtures.join("before.decoded.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(now.dimensions(), then.dimensions());
    // The same arithmetic; LibTorch's threads may sum a convolution in another order, which
    // moved a byte on a rounding boundary by one once (see vq-cli's unit tests).
    let off: Vec<(u8, u8)> = now
        .as_raw()
        .iter()
        .zip(then.as_raw())
        .filter(|(a, b)| a != b)
        .map(|(&a, &b)| (a, b))
        .collect();
    assert!(
        off.len() <= 3 && off.iter().all(|&(a, b)| a.abs_diff(b) == 1),
        "decoded differently: {off:?}"
    );
    // And encoding the same picture today gives the same codes, now in a version-3 file.
    let out = cli(
        &[
            "encode",
            fixtures.join("picture.png").to_str().unwrap(),
            "-o",
            "again.vqz",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let read =
        |path: PathBuf| vq_codes::CodeFile::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let (again, before) = (
        read(dir.join("again.vqz")),
        read(fixtures.join("before.vqz")),
    );
    assert_eq!((again.version, before.version), (3, 1));
    assert_eq!(again.codes, before.codes);
    assert!(before.model_id.starts_with(&again.model_id));
}

/// FID between folders of images, against itself, and through a saved statistics file; bad
/// sides are errors naming them.
#[test]
fn fid_of_folders_and_statistics_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("real")).unwrap();
    for i in 0..5u32 {
        let img = image::RgbImage::from_fn(32 + 4 * i, 32, |x, y| {
            let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
            image::Rgb([
                v(x as f32 * 0.1 * (i + 1) as f32),
                v(y as f32 * 0.13 + i as f32),
                v((x * y) as f32 * 0.01),
            ])
        });
        img.save(dir.join(format!("real/{i}.png"))).unwrap();
    }
    let out = cli(&["-q", "reconstruct", "real", "-o", "recon"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let fid = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json", "fid"];
        all.extend_from_slice(args);
        let out = cli(&all, dir);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap()
    };
    let a = fid(&["real", "recon", "--save-stats", "real.fidstats"]);
    assert_eq!(a["a"]["images"], 5);
    assert_eq!(a["b"]["images"], 5);
    let value = a["fid"].as_f64().unwrap();
    assert!(value.is_finite() && value > 0.0, "{a}");
    assert!(a["kid"]["mean"].as_f64().unwrap().is_finite(), "{a}");
    assert_eq!(a["kid"]["subset_size"], 5);
    // A set against itself.
    let same = fid(&["real", "real"])["fid"].as_f64().unwrap();
    assert!(same.abs() < 1e-3, "{same}");
    // The saved statistics stand for the folder.
    let again = fid(&["real.fidstats", "recon"])["fid"].as_f64().unwrap();
    assert!(
        (again - value).abs() < 1e-9 * value.max(1.0),
        "{again} vs {value}"
    );

    // The prior's samples against the folder, drawn as `vq-cli sample` draws them (in
    // streams): a seed and a thread count give the same figure again.
    let samples = |seed: &str| {
        let r = fid(&[
            "--samples",
            "6",
            "--seed",
            seed,
            "--compute",
            "f32",
            "real.fidstats",
        ]);
        assert_eq!(r["a"]["images"], 6, "{r}");
        r["fid"].as_f64().unwrap()
    };
    let drawn = samples("2");
    assert!(drawn.is_finite() && drawn > 0.0, "{drawn}");
    assert_eq!(drawn, samples("2"));
    assert_ne!(drawn, samples("3"));

    // The first samples' figures beside all of them, and features kept in a folder of parts:
    // a second run resumes from them and gives the same figures; other samples are refused it.
    let with_parts = |seed: &str| {
        let mut all = vec![
            "--json",
            "fid",
            "--samples",
            "6",
            "--seed",
            seed,
            "--compute",
            "f32",
        ];
        all.extend(["--report-at", "3,5", "--parts", "parts", "real.fidstats"]);
        cli(&all, dir)
    };
    let out = with_parts("2");
    assert!(out.status.success(), "{}", stderr(&out));
    let kept: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(kept["fid"].as_f64().unwrap(), drawn, "{kept}");
    assert_eq!(kept["first"][0]["images"], 3, "{kept}");
    assert_eq!(kept["first"][1]["images"], 5, "{kept}");
    let first = kept["first"][0]["fid"].as_f64().unwrap();
    assert!(first.is_finite() && first > 0.0 && first != drawn, "{kept}");
    assert!(dir.join("parts/identity.txt").is_file());
    assert!(dir.join("parts/part-0000000-6.safetensors").is_file());
    let out = with_parts("2");
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(resumed["fid"], kept["fid"]);
    assert_eq!(resumed["first"], kept["first"]);
    let refused = with_parts("3");
    assert_eq!(refused.status.code(), Some(1));
    let error = stdout(&refused);
    assert!(
        error.contains("\"error\"") && error.contains("parts") && error.contains("seed 3"),
        "{error}"
    );
    for (bad, names) in [
        (
            &["fid", "--samples", "6", "--report-at", "6", "real.fidstats"][..],
            "--report-at 6",
        ),
        (&["fid", "--parts", "p", "real", "recon"], "--parts"),
    ] {
        assert_clean_failure(&cli(bad, dir), names);
    }

    assert_clean_failure(&cli(&["fid", "real", "nowhere"], dir), "nowhere");
    std::fs::write(dir.join("bad.fidstats"), b"junk").unwrap();
    assert_clean_failure(&cli(&["fid", "bad.fidstats", "real"], dir), "bad.fidstats");
    let out = cli(&["fid", "real"], dir);
    assert_clean_failure(&out, "two sets");
}

/// `encode --entropy` with the bundled prior: the same image as the packed file, a file named
/// by its prior, and a clear error with another prior or damaged bytes.
#[test]
fn entropy_coded_files_decode_to_the_same_image_and_name_their_prior() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    picture(48, 40).save(dir.join("a.png")).unwrap();
    assert!(cli(&["encode", "a.png", "-o", "plain.vqz"], dir)
        .status
        .success());
    let out = cli(&["encode", "--entropy", "a.png", "-o", "coded.vqz"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let coded = std::fs::read(dir.join("coded.vqz")).unwrap();
    assert_eq!(&coded[..3], b"VQ3", "version 3");
    assert_eq!(coded[3] & 2, 2, "arithmetic-coded");
    assert_decode_to_the_same_image(dir, "plain", "coded");

    // The same bytes from one thread or two, and from the image alone or among others.
    std::fs::create_dir_all(dir.join("folder")).unwrap();
    picture(48, 40).save(dir.join("folder/a.png")).unwrap();
    picture(33, 21).save(dir.join("folder/b.png")).unwrap();
    picture(48, 40).save(dir.join("folder/c.png")).unwrap();
    for threads in ["1", "2"] {
        let out = cli(
            &[
                "--threads",
                threads,
                "encode",
                "--entropy",
                "folder",
                "-o",
                threads,
            ],
            dir,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        for name in ["a", "c"] {
            assert!(
                std::fs::read(dir.join(format!("{threads}/{name}.vqz"))).unwrap() == coded,
                "{threads} threads, {name}"
            );
        }
    }
    assert!(
        std::fs::read(dir.join("1/b.vqz")).unwrap() == std::fs::read(dir.join("2/b.vqz")).unwrap()
    );

    // Another prior: refused by name before any decoding.
    let prior = root().join("models/cifar10-prior");
    let other = dir.join("other-prior");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(prior.join(f), other.join(f)).unwrap();
    }
    let path = other.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert_refused_with_prior(dir, "coded.vqz", &other);

    // A damaged payload fails the file's checksum.
    let mut damaged = coded.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x40;
    std::fs::write(dir.join("damaged.vqz"), &damaged).unwrap();
    assert_clean_failure(&cli(&["decode", "damaged.vqz"], dir), "damaged.vqz");
    assert!(!dir.join("damaged.decoded.png").exists());

    // A well-formed file whose grid is not this model's (it names no model, only its prior).
    let mut other = vq_codes::CodeFile::from_bytes(&coded).unwrap();
    other.downsample = 2;
    other.grid_width = vq_codes::grid_side(other.width, 2);
    other.grid_height = vq_codes::grid_side(other.height, 2);
    std::fs::write(dir.join("other-grid.vqz"), other.to_bytes().unwrap()).unwrap();
    let out = cli(&["decode", "other-grid.vqz"], dir);
    assert_clean_failure(&out, "other-grid.vqz");
    assert!(stderr(&out).contains("downsampl"), "{}", stderr(&out));
}

/// Files arithmetic-coded by the portable coder on another machine (committed, with the same
/// codes packed beside them) decode here to the image of those codes: entropy-coded files move
/// between machines. (`crates/vq-prior/tests/portable_fixtures.rs` checks their codes and
/// frequency tables bit for bit.)
#[test]
fn portable_files_coded_elsewhere_decode_here() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fixtures = root().join("tests/fixtures/portable");
    for name in ["picture", "cifar-test-0", "chelsea-120x80"] {
        for (file, out) in [
            (format!("{name}.vqz"), "coded"),
            (format!("{name}.packed.vqz"), "packed"),
        ] {
            std::fs::copy(fixtures.join(&file), dir.join(format!("{out}.vqz"))).unwrap();
        }
        assert_decode_to_the_same_image(dir, "packed", "coded");
    }
}

/// `encode --entropy --search`: a rate–distortion search, whose λ trades bits for error; λ
/// needs both flags.
#[test]
fn a_rate_distortion_search_trades_bits_for_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    picture(64, 48).save(dir.join("a.png")).unwrap();
    let size = |args: &[&str], name: &str| -> usize {
        let mut all = vec!["encode", "--entropy", "a.png", "-o", name];
        all.extend_from_slice(args);
        let out = cli(&all, dir);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(dir.join(name)).unwrap().len()
    };
    let plain = size(&[], "plain.vqz");
    let error_only = size(&["--search", "3", "--lambda", "0"], "error.vqz");
    let cheap = size(&["--search", "3", "--lambda", "1"], "cheap.vqz");
    assert!(
        cheap < plain && cheap < error_only,
        "{cheap} against {plain} and {error_only}"
    );
    for name in ["plain", "error", "cheap"] {
        let out = cli(&["decode", &format!("{name}.vqz")], dir);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for args in [
        vec!["encode", "a.png", "--lambda", "0.1"],
        vec!["encode", "--entropy", "a.png", "--lambda", "0.1"],
        vec![
            "encode",
            "--entropy",
            "--search",
            "2",
            "a.png",
            "--lambda",
            "-1",
        ],
    ] {
        let out = cli(&args, dir);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// A file arithmetic-coded with the prior bundled before the current one still decodes without
/// `--prior` (the binary finds the retired prior by the id in the file), to the image of the
/// same codes packed; naming the current prior instead is refused.
///
/// The file is coded here, by this build on this CPU: arithmetic decoding must see the
/// encoder's probabilities bit for bit, and LibTorch's f32 kernels round differently on other
/// CPUs. `tests/fixtures/coded-with-retired-prior.vqz` was coded by the build that retired
/// that prior, on an Intel Xeon: it decodes exactly on such a CPU, and elsewhere it must fail
/// cleanly on its checksum (an AMD Zen 4 does): never another image.
#[test]
fn files_coded_with_a_retired_bundled_prior_still_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fixtures = root().join("tests/fixtures");
    std::fs::copy(fixtures.join("picture.png"), dir.join("picture.png")).unwrap();
    let retired = root().join("models/retired/cifar10-prior-2026-12-04");
    let out = cli(
        &[
            "encode",
            "--entropy",
            "--prior",
            retired.to_str().unwrap(),
            "picture.png",
            "-o",
            "old.vqz",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["encode", "picture.png", "-o", "packed.vqz"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_decode_to_the_same_image(dir, "old", "packed");

    std::fs::copy(
        fixtures.join("coded-with-retired-prior.vqz"),
        dir.join("xeon.vqz"),
    )
    .unwrap();
    let out = cli(&["decode", "xeon.vqz", "-o", "xeon.png"], dir);
    if out.status.success() {
        let read = |path: &str| std::fs::read(dir.join(path)).unwrap();
        assert!(read("xeon.png") == read("packed.png"), "another image");
    } else {
        assert_clean_failure(&out, "xeon.vqz");
        assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
        assert!(!dir.join("xeon.png").exists());
    }

    // One call over files coded with either prior (each opened once) decodes each of them as a
    // call of its own does.
    for name in ["new", "new2"] {
        let out = cli(
            &[
                "encode",
                "--entropy",
                "picture.png",
                "-o",
                &format!("{name}.vqz"),
            ],
            dir,
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = cli(&["decode", "new.vqz", "-o", "new.png"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &["decode", "old.vqz", "new.vqz", "new2.vqz", "-o", "all"],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |path: &str| std::fs::read(dir.join(path)).unwrap();
    assert!(read("all/old.decoded.png") == read("old.png"));
    assert!(read("all/new.decoded.png") == read("new.png"));
    assert!(read("all/new2.decoded.png") == read("new.png"));

    assert_refused_with_prior(dir, "old.vqz", &root().join("models/cifar10-prior"));
}
