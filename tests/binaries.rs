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
    assert!(stdout(&out).contains("device: Cpu"), "{}", stdout(&out));
}

#[test]
fn train_smoke_run_on_full_size_synthetic_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR_NAME);
    synthetic_split(50_000).save(&dir, Split::Train).unwrap();
    synthetic_split(10_000).save(&dir, Split::Test).unwrap();
    let out = run(
        "vq-train",
        &[
            "--data",
            dir.to_str().unwrap(),
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("50000 train / 10000 test images, 3 batches"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn train_without_data_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run("vq-train", &["--steps", "1"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("datasets/cifar-10-batches-bin"), "{err}");
    assert!(err.contains("cargo xtask download-cifar"), "{err}");
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
