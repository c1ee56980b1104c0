//! The training binary end to end on a tiny model and synthetic data: a run folder with its
//! files, an exact resume after SIGKILL, clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vq_data::Split;
use vq_train::synthetic_split;

fn dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    synthetic_split(200, 1).save(&data, Split::Train).unwrap();
    synthetic_split(40, 2).save(&data, Split::Test).unwrap();
    data
}

fn config(dir: &Path, data: &Path, steps: usize) -> PathBuf {
    let path = dir.join(format!("config-{steps}.json"));
    let json = serde_json::json!({
        "model": {"hidden_channels": 16, "residual_hidden_channels": 8, "residual_layers": 1,
                  "codebook_size": 32, "code_dim": 8, "dead_code_steps": 4},
        "data": data, "any_record_count": true, "steps": steps, "batch_size": 16,
        "lr": 2e-3, "warmup_steps": 3, "kmeans_init_images": 64, "kmeans_iters": 5,
        "log_every": 2, "eval_every": 10, "eval_images": 20, "checkpoint_every": 2,
        "threads": 1, "device": "cpu"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

fn vq_train(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vq-train"));
    cmd.args(args)
        .env_remove("LD_LIBRARY_PATH")
        .env("RUST_LOG", "warn");
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/last/model.safetensors")).unwrap()
}

#[test]
fn run_folder_holds_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cfg = config(tmp.path(), &data, 20);
    let run = tmp.path().join("run");
    let out = output(&mut vq_train(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "recon-step-000010.png",
        "recon-step-000020.png",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.safetensors",
        "checkpoints/last/state.json",
        "checkpoints/last/config.json",
        "checkpoints/best/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let png = image::open(run.join("recon-step-000020.png")).unwrap();
    assert_eq!((png.width(), png.height()), (8 * 34 + 2, 8 * 34 + 2));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 20);
    assert_eq!(summary["final_eval"]["images"], 40);
    let psnr = summary["final_eval"]["psnr"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 5.0, "{psnr}");
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"eval\"")).count(), 2);
    assert_eq!(
        lines.lines().filter(|l| !l.contains("\"eval\"")).count(),
        10
    );

    // The same folder again is refused rather than overwritten.
    let again = output(&mut vq_train(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

#[test]
fn sigkill_then_resume_gives_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let steps = 60;
    let cfg = config(tmp.path(), &data, steps);

    let straight = tmp.path().join("straight");
    let out = output(&mut vq_train(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        straight.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let broken = tmp.path().join("broken");
    let mut child = vq_train(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        broken.to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_link(broken.join("checkpoints/last")).is_err() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !broken.join("summary.json").exists(),
        "the run finished before it could be killed"
    );
    let killed_at = std::fs::read_link(broken.join("checkpoints/last")).unwrap();

    let out = output(&mut vq_train(&["--resume", broken.to_str().unwrap()]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        final_weights(&broken) == final_weights(&straight),
        "killed after {killed_at:?}: weights differ"
    );
    let a = std::fs::read(broken.join("checkpoints/last/optimizer.safetensors")).unwrap();
    let b = std::fs::read(straight.join("checkpoints/last/optimizer.safetensors")).unwrap();
    assert!(a == b, "optimizer state differs");
    // The metrics read as one run: one line per logged step.
    let lines = std::fs::read_to_string(broken.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.lines().filter(|l| !l.contains("\"eval\"")).count(),
        steps / 2
    );
}

#[test]
fn diverging_loss_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cfg = config(tmp.path(), &data, 200);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    json["lr"] = serde_json::json!(1e30);
    json["warmup_steps"] = serde_json::json!(0);
    std::fs::write(&cfg, json.to_string()).unwrap();
    let run = tmp.path().join("run");
    let out = output(&mut vq_train(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the loss became NaN or infinite"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_data_and_bad_config_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = output(
        vq_train(&[
            "--data",
            tmp.path().join("nope").to_str().unwrap(),
            "--run-dir",
            tmp.path().join("r").to_str().unwrap(),
        ])
        .current_dir(tmp.path()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("download-cifar") && err.contains("nope"),
        "{err}"
    );

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"steps\": \"many\"}").unwrap();
    let out = output(&mut vq_train(&["--config", bad.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));

    let out = output(&mut vq_train(&[
        "--resume",
        tmp.path().join("no-run").to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-run"));
}
