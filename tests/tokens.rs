//! Tokens out and in: `vq-cli encode --codes` writes the codes of many images (or of a dataset
//! split, with its labels) as one `.npy` array that NumPy reads, and `vq-cli decode A.npy`
//! turns such an array back into the images `reconstruct` makes.

use std::path::Path;

use vq_codes::npy::{Array, Dtype};
use vq_e2e::{run, stderr, stdout};

fn picture(width: u32, height: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
        let s = seed as f32;
        image::Rgb([
            v(x as f32 * 0.08 + s),
            v(y as f32 * 0.06 + 1.0 + s),
            v((x + y) as f32 * 0.04 + 2.0 * s),
        ])
    })
}

fn cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut all = vec!["--device", "cpu"];
    all.extend_from_slice(args);
    run("vq-cli", &all, cwd)
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
}

#[test]
fn a_folder_of_images_to_one_array_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in/sub")).unwrap();
    picture(32, 32, 0).save(dir.join("in/a.png")).unwrap();
    picture(32, 32, 1).save(dir.join("in/sub/b.png")).unwrap();
    picture(32, 32, 2).save(dir.join("in/c.png")).unwrap();
    let report: serde_json::Value = serde_json::from_str(
        ok(&cli(
            &["--json", "encode", "--codes", "codes.npy", "in"],
            dir,
        ))
        .trim(),
    )
    .unwrap();
    assert_eq!(report["shape"], serde_json::json!([3, 1, 8, 8]), "{report}");
    let array = Array::from_bytes(&std::fs::read(dir.join("codes.npy")).unwrap()).unwrap();
    assert_eq!(
        (array.shape.clone(), array.dtype),
        (vec![3, 1, 8, 8], Dtype::I16)
    );
    assert!(array.data.iter().all(|&c| (0..512).contains(&c)));
    let names: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("codes.names.json")).unwrap()).unwrap();
    assert_eq!(names.len(), 3);
    assert!(
        names[0].ends_with("a.png") && names[2].ends_with("b.png"),
        "{names:?}"
    );
    // The JSON form holds the same codes.
    ok(&cli(&["encode", "--codes", "codes.json", "in"], dir));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("codes.json")).unwrap()).unwrap();
    let flat: Vec<i64> = json["codes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l.as_array().unwrap().iter())
        .flat_map(|r| r.as_array().unwrap().iter())
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_i64().unwrap()))
        .collect();
    assert_eq!(flat, array.data);
    // The same codes as each image's .vqz file holds.
    ok(&cli(&["encode", "in/a.png", "-o", "a.vqz"], dir));
    let file = vq_codes::CodeFile::from_bytes(&std::fs::read(dir.join("a.vqz")).unwrap()).unwrap();
    let from_file: Vec<i64> = file.codes.iter().map(|&c| c as i64).collect();
    assert_eq!(from_file, array.data[..64]);
    // Decoded, each grid is the image `reconstruct` writes, named after its input.
    ok(&cli(&["decode", "codes.npy", "-o", "out"], dir));
    ok(&cli(&["reconstruct", "in/a.png", "-o", "a.recon.png"], dir));
    assert_eq!(
        std::fs::read(dir.join("out/a.png")).unwrap(),
        std::fs::read(dir.join("a.recon.png")).unwrap()
    );
    assert!(dir.join("out/b.png").is_file() && dir.join("out/c.png").is_file());
    // The sharp decoder by name, in decode and reconstruct alike.
    ok(&cli(
        &["decode", "codes.npy", "-o", "sharp", "--decoder", "sharp"],
        dir,
    ));
    ok(&cli(
        &[
            "reconstruct",
            "in/a.png",
            "-o",
            "a.sharp.png",
            "--decoder",
            "sharp",
        ],
        dir,
    ));
    assert_eq!(
        std::fs::read(dir.join("sharp/a.png")).unwrap(),
        std::fs::read(dir.join("a.sharp.png")).unwrap()
    );
    assert_ne!(
        std::fs::read(dir.join("sharp/a.png")).unwrap(),
        std::fs::read(dir.join("out/a.png")).unwrap()
    );
    // An array NumPy would write, (N, h, w) without names, decodes too (00000.png, ...).
    let plain = Array::new(vec![2, 8, 8], array.data[..128].to_vec(), Dtype::I64).unwrap();
    std::fs::write(dir.join("plain.npy"), plain.to_bytes()).unwrap();
    ok(&cli(
        &["decode", "plain.npy", "-o", "plain", "--decoder", "sharp"],
        dir,
    ));
    let first = image::open(dir.join("plain/00000.png")).unwrap();
    assert_eq!((first.width(), first.height()), (32, 32));
}

#[test]
fn a_dataset_split_with_its_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let set = dir.join("set");
    std::fs::create_dir_all(&set).unwrap();
    let images = ndarray::Array4::from_shape_fn((5, 3, 32, 32), |(n, c, y, x)| {
        ((n * 40 + c * 30 + y * 3 + x * 5) % 256) as u8
    });
    vq_data::folder::write_image_set(
        &vq_data::folder::split_file(&set, vq_data::Split::Test),
        images.view(),
        &[3, 1, 4, 1, 5],
    )
    .unwrap();
    std::fs::write(
        set.join(vq_data::folder::CLASSES_FILE),
        "a\nb\nc\nd\ne\nf\n",
    )
    .unwrap();
    std::fs::write(
        set.join(vq_data::folder::DATASET_FILE),
        r#"{"kind": "image-set", "side": 32}"#,
    )
    .unwrap();
    let out = cli(&["encode", "--codes", "test.npy", "set:test"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let labels = Array::from_bytes(&std::fs::read(dir.join("test.labels.npy")).unwrap()).unwrap();
    assert_eq!(labels.data, vec![3, 1, 4, 1, 5]);
    let codes = Array::from_bytes(&std::fs::read(dir.join("test.npy")).unwrap()).unwrap();
    assert_eq!(codes.shape, vec![5, 1, 8, 8]);
}

#[test]
fn bad_arrays_and_mixed_sizes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    picture(32, 32, 0).save(dir.join("in/small.png")).unwrap();
    picture(64, 32, 1).save(dir.join("in/wide.png")).unwrap();
    let failed = |args: &[&str], names: &[&str]| {
        let out = cli(args, dir);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        for name in names {
            assert!(err.contains(name), "{args:?}: {err}");
        }
    };
    failed(
        &["encode", "--codes", "x.npy", "in"],
        &["small.png", "wide.png", "one shape"],
    );
    failed(
        &["encode", "--codes", "x.txt", "in/small.png"],
        &["x.txt", ".npy"],
    );
    let outside = Array::new(vec![1, 1, 8, 8], vec![600; 64], Dtype::I16).unwrap();
    std::fs::write(dir.join("outside.npy"), outside.to_bytes()).unwrap();
    failed(
        &["decode", "outside.npy"],
        &["outside.npy", "600", "vocabulary"],
    );
    std::fs::copy(
        vq_e2e::root().join("tests/fixtures/npy/float32.npy"),
        dir.join("floats.npy"),
    )
    .unwrap();
    failed(&["decode", "floats.npy"], &["floats.npy", "not integers"]);
    let cut = &outside.to_bytes()[..100];
    std::fs::write(dir.join("cut.npy"), cut).unwrap();
    failed(&["decode", "cut.npy"], &["cut.npy"]);
    // --codes writes an array, not files: -o and --entropy are usage errors.
    let out = cli(&["encode", "--codes", "x.npy", "-o", "y", "in"], dir);
    assert_eq!(out.status.code(), Some(2));
}
