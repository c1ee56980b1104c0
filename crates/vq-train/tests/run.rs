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
        "format": 2,
        "model": {"hidden_channels": 16, "residual": {"hidden_channels": 8, "layers": 1},
                  "quantizer": {"kind": "vq", "codebook_size": 32, "code_dim": 8, "dead_code_steps": 4}},
        "data": {"path": data, "any_record_count": true},
        "schedule": {"steps": steps, "batch_size": 16, "lr": 2e-3, "warmup_steps": 3,
                     "log_every": 2, "eval_every": 10, "checkpoint_every": 2},
        "runtime": {"threads": 1, "device": "cpu"},
        "kmeans_init_images": 64, "kmeans_iters": 5, "eval_images": 20
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

/// The two tasks the fault tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    VqVae,
    Prior,
    Decoder,
}

/// A two-step VQ-VAE run in `dir/vq`, for the runs that need one.
fn tiny_vqvae(dir: &Path, data: &Path) -> PathBuf {
    let vq = dir.join("vq");
    let short = config(dir, data, 2);
    succeed(&[
        "--config",
        short.to_str().unwrap(),
        "--run-dir",
        vq.to_str().unwrap(),
    ]);
    vq
}

/// A run of `kind` to start: its config file (schedule fields patched by the tests) and, for a
/// prior, the tiny VQ-VAE run it models.
struct Setup {
    kind: Kind,
    config: PathBuf,
    vqvae: Option<PathBuf>,
}

impl Setup {
    fn new(kind: Kind, dir: &Path, steps: usize) -> Self {
        let data = dataset(dir);
        let vq_config = config(dir, &data, steps);
        match kind {
            Kind::VqVae => Setup {
                kind,
                config: vq_config,
                vqvae: None,
            },
            Kind::Prior => {
                let vq = tiny_vqvae(dir, &data);
                let config = dir.join(format!("prior-{steps}.json"));
                std::fs::write(
                    &config,
                    serde_json::json!({
                        "format": 2,
                        "prior": {"kind": "pixelcnn", "channels": 8, "layers": 2},
                        // Mirrored grids too, so that exact resume covers their draws.
                        "hflip": true,
                        "data": {"path": data, "any_record_count": true},
                        "schedule": {"steps": steps, "batch_size": 16, "log_every": 2,
                                     "eval_every": 20, "checkpoint_every": 2},
                        "runtime": {"threads": 1, "device": "cpu"}
                    })
                    .to_string(),
                )
                .unwrap();
                Setup {
                    kind,
                    config,
                    vqvae: Some(vq),
                }
            }
            Kind::Decoder => {
                let vq = tiny_vqvae(dir, &data);
                let config = dir.join(format!("decoder-{steps}.json"));
                std::fs::write(
                    &config,
                    serde_json::json!({
                        "format": 2,
                        "vqvae": vq,
                        "discriminator": {"channels": 4, "compute": "f32"},
                        "data": {"path": data, "any_record_count": true},
                        "schedule": {"steps": steps, "batch_size": 16, "lr": 1e-3,
                                     "log_every": 2, "eval_every": 20, "checkpoint_every": 2},
                        "runtime": {"threads": 1, "device": "cpu"},
                        "disc_start": 3, "eval_images": 20
                    })
                    .to_string(),
                )
                .unwrap();
                Setup {
                    kind,
                    config,
                    vqvae: None,
                }
            }
        }
    }

    /// The arguments that start the run in `run`.
    fn start(&self, run: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if let Some(vq) = &self.vqvae {
            args.extend([
                "prior".into(),
                "--checkpoint".into(),
                vq.display().to_string(),
            ]);
        }
        if self.kind == Kind::Decoder {
            args.push("decoder".into());
        }
        args.extend([
            "--config".into(),
            self.config.display().to_string(),
            "--run-dir".into(),
            run.display().to_string(),
        ]);
        args
    }

    /// The arguments that resume the run in `run`.
    fn resume(&self, run: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        match self.kind {
            Kind::Prior => args.push("prior".into()),
            Kind::Decoder => args.push("decoder".into()),
            Kind::VqVae => {}
        }
        args.extend(["--resume".into(), run.display().to_string()]);
        args
    }

    /// Sets a schedule field of the config.
    fn schedule(&self, key: &str, value: serde_json::Value) {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap();
        json["schedule"][key] = value;
        std::fs::write(&self.config, json.to_string()).unwrap();
    }

    /// Whether its checkpoints keep trained weights beside their average.
    fn averaged(&self) -> bool {
        self.kind == Kind::VqVae
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
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

/// Runs vq-train to a successful end.
fn succeed(args: &[&str]) {
    let out = output(&mut vq_train(args));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last checkpoint's weights: a VQ-VAE run's average (the model) followed by its trained
/// weights, a prior's weights, or a tuned decoder's model followed by its discriminator.
fn final_weights(run: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(run.join("checkpoints/last/model.safetensors")).unwrap();
    for beside in ["training.safetensors", "discriminator.safetensors"] {
        if let Ok(more) = std::fs::read(run.join("checkpoints/last").join(beside)) {
            bytes.extend(more);
        }
    }
    bytes
}

#[test]
fn run_folder_holds_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cfg = config(tmp.path(), &data, 20);
    let run = tmp.path().join("run");
    succeed(&[
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    for f in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "data.json",
        "recon-step-000010.png",
        "recon-step-000020.png",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.safetensors",
        "checkpoints/last/training.safetensors",
        "checkpoints/last/state.json",
        "checkpoints/last/config.json",
        "checkpoints/best/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let png = image::open(run.join("recon-step-000020.png")).unwrap();
    // 8 × 8 tiles of 32 pixels with 2-pixel gaps, enlarged 3 times to be seen.
    assert_eq!(
        (png.width(), png.height()),
        (3 * (8 * 34 + 2), 3 * (8 * 34 + 2))
    );
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

/// `--resume` continues a run with the settings it recorded: a flag it would ignore is a usage
/// error naming the flag, before anything is read or written.
#[test]
fn resume_refuses_the_flags_it_would_ignore() {
    for (kind, flag, value) in [
        (None, "--steps", "5"),
        (None, "--lr", "0.1"),
        (None, "--data", "elsewhere"),
        (None, "--codebook-size", "64"),
        (Some("prior"), "--batch-size", "4"),
        (Some("decoder"), "--threads", "1"),
    ] {
        let mut args: Vec<&str> = kind.into_iter().collect();
        args.extend(["--resume", "some-run", flag, value]);
        let out = output(&mut vq_train(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains("--resume"),
            "{args:?}: {err}"
        );
    }
}

/// Every checkpoint folder of `run` is whole: all its files there, the weights and optimizer
/// state readable safetensors, the state naming the folder's step; `last` points at one of them.
/// `averaged`: a VQ-VAE run, whose checkpoints keep the trained weights
/// (`training.safetensors`) beside their average (the model); prior runs have no average.
fn assert_checkpoints_whole(run: &Path, averaged: bool) -> usize {
    let files: &[&str] = if averaged {
        &[
            "model.safetensors",
            "optimizer.safetensors",
            "training.safetensors",
        ]
    } else {
        &["model.safetensors", "optimizer.safetensors"]
    };
    let dir = run.join("checkpoints");
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(step) = name.strip_prefix("step-") else {
            continue;
        };
        let step: usize = step.parse().unwrap();
        let folder = dir.join(&name);
        for file in files {
            let tensors = tch::Tensor::read_safetensors(folder.join(file))
                .unwrap_or_else(|e| panic!("{name}/{file} is not whole: {e}"));
            assert!(!tensors.is_empty(), "{name}/{file} is empty");
        }
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("state.json")).unwrap())
                .unwrap_or_else(|e| panic!("{name}/state.json is not whole: {e}"));
        assert_eq!(state["step"], step, "{name}/state.json");
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(folder.join("config.json")).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}/config.json is not whole: {e}"));
        steps.push(step);
    }
    let last = std::fs::read_link(dir.join("last")).expect("a last link");
    let last: usize = last.to_string_lossy()["step-".len()..].parse().unwrap();
    assert!(
        steps.contains(&last),
        "last points at a missing step {last}"
    );
    last
}

/// SIGKILL at seeded random moments, again and again, with a checkpoint at every step (so that
/// most kills land in the middle of writing one): after each kill every checkpoint on disk is
/// whole, and the resumed run ends with exactly the weights and optimizer state of a run that was
/// never interrupted.
#[test]
fn sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights() {
    sigkill_then_resume(Kind::VqVae, 60);
}

#[test]
fn prior_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights() {
    sigkill_then_resume(Kind::Prior, 400);
}

#[test]
fn decoder_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights() {
    sigkill_then_resume(Kind::Decoder, 60);
}

fn sigkill_then_resume(kind: Kind, steps: usize) {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(kind, tmp.path(), steps);
    setup.schedule("checkpoint_every", serde_json::json!(1));

    let straight = tmp.path().join("straight");
    succeed(&strs(&setup.start(&straight)));

    let broken = tmp.path().join("broken");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut kills, mut mid_write, mut seen) = (0, 0, Vec::new());
    for attempt in 0..6 {
        let args = if attempt == 0 {
            setup.start(&broken)
        } else {
            setup.resume(&broken)
        };
        let mut child = vq_train(&strs(&args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for training proper (a checkpoint newer than the one resumed from), then a
        // random few milliseconds more.
        let before = std::fs::read_link(broken.join("checkpoints/last")).ok();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let now = std::fs::read_link(broken.join("checkpoints/last")).ok();
            if now.is_some() && now != before {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no checkpoint appeared");
            std::thread::sleep(Duration::from_millis(1));
        }
        if attempt % 2 == 0 {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..150_000)));
        } else {
            // Kill as soon as the next checkpoint folder is being written.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                let writing = std::fs::read_dir(broken.join("checkpoints"))
                    .unwrap()
                    .any(|e| {
                        e.unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with(".tmp-step-")
                    });
                if writing {
                    break;
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let leftovers = std::fs::read_dir(broken.join("checkpoints"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count();
        mid_write += (leftovers > 0) as usize;
        seen.push(assert_checkpoints_whole(&broken, setup.averaged()));
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    eprintln!("{kills} kills after steps {seen:?}, {mid_write} of them during a checkpoint write");

    succeed(&strs(&setup.resume(&broken)));
    assert_checkpoints_whole(&broken, setup.averaged());
    assert!(
        final_weights(&broken) == final_weights(&straight),
        "{kind:?}: killed after steps {seen:?}: weights differ"
    );
    let a = std::fs::read(broken.join("checkpoints/last/optimizer.safetensors")).unwrap();
    let b = std::fs::read(straight.join("checkpoints/last/optimizer.safetensors")).unwrap();
    assert!(a == b, "{kind:?}: optimizer state differs");
    // The metrics read as one run: one line per logged step.
    let lines = std::fs::read_to_string(broken.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.lines().filter(|l| !l.contains("\"eval\"")).count(),
        steps / 2
    );
}

/// The disk fills up while a run writes its checkpoints: the run stops with an error naming the
/// file and the cause, the last good checkpoint stays whole and linked, and once there is room
/// again the run resumes from it to the end.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint() {
    full_disk(Kind::VqVae);
}

#[test]
fn a_full_disk_stops_a_prior_run_and_keeps_the_last_good_checkpoint() {
    full_disk(Kind::Prior);
}

#[test]
fn a_full_disk_stops_a_decoder_run_and_keeps_the_last_good_checkpoint() {
    full_disk(Kind::Decoder);
}

/// A script that starts the run of `setup` in the folder given as its `$1`.
fn starter(setup: &Setup, dir: &Path) -> PathBuf {
    let path = dir.join(format!("start-{:?}.sh", setup.kind));
    let bin = env!("CARGO_BIN_EXE_vq-train");
    let args: Vec<String> = setup
        .start(Path::new("RUN"))
        .into_iter()
        .map(|a| {
            if a == "RUN" {
                "\"$1\"".into()
            } else {
                format!("'{a}'")
            }
        })
        .collect();
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec '{bin}' {}\n", args.join(" ")),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn full_disk(kind: Kind) {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 150;
    let setup = Setup::new(kind, tmp.path(), steps);
    setup.schedule("checkpoint_every", serde_json::json!(1));
    setup.schedule("eval_every", serde_json::json!(1000));
    let start = starter(&setup, tmp.path());
    let (mnt, out_dir) = (tmp.path().join("mnt"), tmp.path().join("out"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    // $1 mount point, $2 the run's starter, $3 where the results are copied.
    let script = r#"
        mount -t tmpfs -o size=4m tmpfs "$1" || exit 97
        "$2" "$1/run" 2> "$3/stderr" &
        pid=$!
        while [ ! -e "$1/run/checkpoints/last" ]; do sleep 0.01; done
        dd if=/dev/zero of="$1/filler" bs=4k 2> /dev/null
        wait $pid
        echo $? > "$3/rc"
        rm -f "$1/filler"
        cp -a "$1/run" "$3/run"
    "#;
    let Some(out) = vq_e2e::in_mount_namespace(script, &[&mnt, &start, &out_dir]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rc = std::fs::read_to_string(out_dir.join("rc")).unwrap();
    let err = std::fs::read_to_string(out_dir.join("stderr")).unwrap();
    assert_eq!(rc.trim(), "1", "{kind:?}: the run did not fail: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("/run/"), "the error names no file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let run = out_dir.join("run");
    let kept = assert_checkpoints_whole(&run, setup.averaged());
    assert!(kept < steps, "{kept}");

    succeed(&strs(&setup.resume(&run)));
    assert_eq!(assert_checkpoints_whole(&run, setup.averaged()), steps);
}

/// A run folder on a read-only file system: a clear error naming it, nothing else.
#[test]
fn an_unwritable_run_folder_is_a_clear_error() {
    read_only(Kind::VqVae);
}

#[test]
fn an_unwritable_prior_run_folder_is_a_clear_error() {
    read_only(Kind::Prior);
}

fn read_only(kind: Kind) {
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(kind, tmp.path(), 4);
    let start = starter(&setup, tmp.path());
    let (mnt, out_dir) = (tmp.path().join("mnt"), tmp.path().join("out"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let script = r#"
        mount -t tmpfs -o ro,size=64k tmpfs "$1" || exit 97
        "$2" "$1/run" 2> "$3/stderr"
        echo $? > "$3/rc"
    "#;
    let Some(out) = vq_e2e::in_mount_namespace(script, &[&mnt, &start, &out_dir]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = std::fs::read_to_string(out_dir.join("stderr")).unwrap();
    assert_eq!(
        std::fs::read_to_string(out_dir.join("rc")).unwrap().trim(),
        "1",
        "{err}"
    );
    assert!(err.contains("Read-only file system"), "{kind:?}: {err}");
    assert!(err.contains(&format!("{}/run", mnt.display())), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn diverging_loss_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cfg = config(tmp.path(), &data, 200);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    json["schedule"]["lr"] = serde_json::json!(1e30);
    json["schedule"]["warmup_steps"] = serde_json::json!(0);
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

    // A misspelt setting, at the top or in the model, is refused and named.
    for text in [
        r#"{"learning_rate": 0.1}"#,
        r#"{"model": {"codebok_size": 64}}"#,
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = output(&mut vq_train(&["--config", bad.to_str().unwrap()]));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.json") && err.contains("unknown field"),
            "{err}"
        );
    }

    let out = output(&mut vq_train(&[
        "--resume",
        tmp.path().join("no-run").to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-run"));
}

/// A decoder run whose losses blow up stops with the step and the last good checkpoint named.
#[test]
fn a_nan_in_a_decoder_run_stops_it_naming_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(Kind::Decoder, tmp.path(), 200);
    setup.schedule("lr", serde_json::json!(1e30));
    setup.schedule("warmup_steps", serde_json::json!(0));
    setup.schedule("checkpoint_every", serde_json::json!(1));
    let run = tmp.path().join("run");
    let out = output(&mut vq_train(&strs(&setup.start(&run))));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the loss became NaN or infinite"), "{err}");
    assert!(
        err.contains("last good checkpoint: ") && err.contains("checkpoints/step-"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_checkpoints_whole(&run, false);
}

/// Flags are laid over the config file by name (`--print-config` shows the result and starts
/// nothing); -q, -v and --json go on either side of the subcommand; a VQ-VAE flag before a
/// subcommand and `--extend-to` without `--resume` are usage errors; with --json an error is a
/// JSON object on standard output.
#[test]
fn one_contract_for_flags_output_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let file = config(tmp.path(), &data, 7);
    let printed = |args: &[&str]| -> serde_json::Value {
        let out = output(&mut vq_train(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let vq = printed(&[
        "--print-config",
        "--config",
        file.to_str().unwrap(),
        "--steps",
        "9",
        "--quantizer",
        "residual",
        "--depth",
        "2",
        "--fid",
    ]);
    assert_eq!(vq["schedule"]["steps"], 9, "{vq}");
    // The file's settings that no flag names stay.
    assert_eq!(vq["schedule"]["batch_size"], 16, "{vq}");
    assert_eq!(vq["model"]["hidden_channels"], 16, "{vq}");
    assert_eq!(
        (
            &vq["model"]["quantizer"]["kind"],
            &vq["model"]["quantizer"]["depth"],
            &vq["fid"]
        ),
        (
            &serde_json::json!("residual"),
            &serde_json::json!(2),
            &serde_json::json!(true)
        ),
        "{vq}"
    );
    let prior = printed(&[
        "prior",
        "--print-config",
        "--checkpoint",
        "some-run",
        "--hflip",
        "-q",
    ]);
    assert_eq!(
        (&prior["vqvae"], &prior["hflip"]),
        (&serde_json::json!("some-run"), &serde_json::json!(true))
    );
    assert_eq!(prior["prior"]["kind"], "transformer", "{prior}");
    // --device and --threads are global, like vq-cli's: either side of the subcommand.
    for args in [
        &["--threads", "3", "prior", "--print-config"][..],
        &["prior", "--threads", "3", "--print-config"][..],
    ] {
        assert_eq!(printed(args)["runtime"]["threads"], 3, "{args:?}");
    }
    let decoder = printed(&["-q", "decoder", "--print-config", "--fixed-weight"]);
    assert_eq!(decoder["adaptive_weight"], false, "{decoder}");
    assert!(printed(&["decoder", "--print-config"])["adaptive_weight"] == true);

    for args in [
        &["--json", "prior", "--resume", "missing-run"][..],
        &["prior", "--json", "--resume", "missing-run"][..],
    ] {
        let out = output(&mut vq_train(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("missing-run"),
            "{error}"
        );
    }
    for (args, named) in [
        (
            &["--threads", "1", "decoder", "--resume", "r"][..],
            "--threads",
        ),
        (&["--steps", "5", "prior", "--print-config"][..], "--steps"),
        (&["prior", "--extend-to", "5"][..], "--extend-to"),
    ] {
        let out = output(&mut vq_train(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{args:?}"
        );
    }
}

/// `--resume RUN --extend-to N` trains a finished run on to step N (its recorded steps raised),
/// and never shortens one.
#[test]
fn extend_to_trains_a_finished_run_further() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let vq = tiny_vqvae(tmp.path(), &data);
    // The run logs for TensorBoard too: the training figures, the evaluation's, its picture.
    let events: Vec<vq_store::tensorboard::Event> = std::fs::read_dir(&vq)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .flat_map(|p| vq_store::tensorboard::read_events(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let tags: Vec<&str> = events
        .iter()
        .flat_map(|e| e.values.iter().map(|v| v.tag.as_str()))
        .collect();
    for tag in [
        "train/loss",
        "train/lr",
        "train/psnr",
        "eval/psnr",
        "eval/perplexity",
        "recon",
    ] {
        assert!(tags.contains(&tag), "{tag} not in {tags:?}");
    }
    let run = vq.to_str().unwrap();
    let out = output(&mut vq_train(&[
        "--json",
        "--resume",
        run,
        "--extend-to",
        "4",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["steps"], 4, "{summary}");
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vq.join("config.json")).unwrap()).unwrap();
    assert_eq!(recorded["schedule"]["steps"], 4);
    assert!(vq.join("checkpoints/step-000004").is_dir());
    let out = output(&mut vq_train(&["--resume", run, "--extend-to", "3"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never shortened"));
}

/// `vq-train prior --codes A.npy --labels B.npy` trains on codes made elsewhere (no dataset
/// read), holding out the last 5% for the test NLL; codes that do not fit the VQ-VAE, and
/// labels that do not fit the codes, are errors naming the file.
#[test]
fn a_prior_trains_on_codes_made_elsewhere() {
    use vq_codes::npy::{Array, Dtype};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset(dir);
    let vq = tiny_vqvae(dir, &data);
    // 40 grids of 8 × 8 codes of the tiny model's 32, in 3 classes.
    let codes: Vec<i64> = (0..40 * 64).map(|i| (i * 7 + i / 64) % 32).collect();
    let write = |name: &str, shape: Vec<usize>, values: Vec<i64>| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            Array::new(shape, values, Dtype::I16).unwrap().to_bytes(),
        )
        .unwrap();
        path
    };
    let train = write("codes.npy", vec![40, 1, 8, 8], codes.clone());
    let labels = write("labels.npy", vec![40], (0..40).map(|i| i % 3).collect());
    let config = dir.join("tiny-prior.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "format": 2,
            "prior": {"kind": "pixelcnn", "channels": 8, "layers": 2},
            // No dataset at this path: codes made elsewhere do not read one.
            "data": {"path": dir.join("no-such-dataset"), "any_record_count": true},
            "schedule": {"steps": 4, "batch_size": 8, "log_every": 2, "eval_every": 4, "checkpoint_every": 4},
            "runtime": {"threads": 1, "device": "cpu"}
        })
        .to_string(),
    )
    .unwrap();
    let run = dir.join("prior-run");
    let args = |codes: &Path, labels: &Path, run: &Path| -> Vec<String> {
        [
            "--json",
            "prior",
            "--checkpoint",
            vq.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--codes",
            codes.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(&train, &labels, &run);
    let out = output(&mut vq_train(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["final_eval"]["grids"], 2, "{summary}");
    assert!(summary["final_eval"]["bits_per_code"]
        .as_f64()
        .unwrap()
        .is_finite());
    let prior_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoints/last/config.json")).unwrap())
            .unwrap();
    assert_eq!(prior_config["provenance"]["classes"], 3, "{prior_config}");
    assert_eq!(prior_config["provenance"]["grid_side"], 8, "{prior_config}");

    let failed = |codes: &Path, labels: &Path, named: &[&str]| {
        let a = args(codes, labels, &dir.join(format!("bad-{}", named[0])));
        let out = output(&mut vq_train(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stdout);
        for n in named {
            assert!(err.contains(n), "{n}: {err}");
        }
    };
    let mut outside = codes.clone();
    outside[5] = 32;
    let outside = write("outside.npy", vec![40, 1, 8, 8], outside);
    failed(&outside, &labels, &["outside.npy", "code 32", "vocabulary"]);
    let short = write("short.npy", vec![39], (0..39).collect());
    failed(&train, &short, &["short.npy", "(40,)"]);
    let oblong = write("oblong.npy", vec![40, 1, 4, 16], codes);
    failed(&oblong, &labels, &["oblong.npy", "square"]);
}

/// A config for the data-parallel tests: no dead-code restarts (each rank would draw them
/// from its own half of the batch, so one process's would differ), global batch 32.
fn dp_config(dir: &Path, data: &Path, steps: usize) -> PathBuf {
    let path = dir.join(format!("dp-{steps}.json"));
    let json = serde_json::json!({
        "format": 2,
        "model": {"hidden_channels": 16, "residual": {"hidden_channels": 8, "layers": 1},
                  "quantizer": {"kind": "vq", "codebook_size": 32, "code_dim": 8, "dead_code_steps": 0},
                  "compute": "f32"},
        "data": {"path": data, "any_record_count": true},
        "schedule": {"steps": steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 2,
                     "log_every": 2, "eval_every": steps, "checkpoint_every": 2},
        "runtime": {"threads": 1, "device": "cpu"},
        "kmeans_init_images": 64, "kmeans_iters": 5, "eval_images": 20
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

fn weights(run: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w =
        tch::Tensor::read_safetensors(run.join("checkpoints/last/model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The digests each rank logs of its state at the end (`final state ...`).
fn final_digests(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| l.split("final state ").nth(1).map(|d| d.trim().to_string()))
        .collect()
}

/// `vq-train --nproc 2`: two ranks on localhost through LibTorch's c10d, each on half of every
/// global batch of 32. Both end with bit-identical state (weights, codebook statistics,
/// averages), and their weights equal one process's on the whole batch of 32 up to rounding:
/// the ranks average two half-batch gradients where one process takes one mean, a different
/// order of the same sums (about 1e-7 relative per step), which Adam's step-size normalisation
/// keeps at that scale over a few steps. The run folder records the world size and engine; a
/// two-rank run resumes in one process and in two.
#[test]
fn two_ranks_train_as_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset(dir);
    let config = dp_config(dir, &data, 6);
    let (dp, single) = (dir.join("dp"), dir.join("single"));
    let out = output(
        vq_train(&[
            "--nproc",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--run-dir",
            dp.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests = final_digests(&out.stderr);
    assert_eq!(digests.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digests[0], digests[1], "the ranks' states differ");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dp.join("distributed.json")).unwrap()).unwrap();
    assert_eq!(record["world_size"], 2);
    assert!(record["engine"].as_str().unwrap().contains("c10d"));
    assert_eq!(record["backend"], "gloo");

    succeed(&[
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        single.to_str().unwrap(),
    ]);
    let worst = weights(&dp)
        .iter()
        .zip(weights(&single))
        .map(|((na, a), (nb, b))| {
            assert_eq!(na, &nb);
            (a - &b).abs().max().double_value(&[])
        })
        .fold(0.0f64, f64::max);
    eprintln!("two ranks against one process: largest weight difference {worst:e}");
    assert!(worst < 1e-4, "two ranks and one process differ by {worst}");
    // The last evaluation (the whole test split) is sharded, each rank 20 of the 40 images,
    // and summed: one process's figures.
    let (a, b) = (last_eval(&dp), last_eval(&single));
    assert_eq!(a["images"], 40, "{a}");
    let psnr = |e: &serde_json::Value| e["psnr"].as_f64().unwrap();
    assert!((psnr(&a) - psnr(&b)).abs() < 1e-3, "{a} against {b}");

    // Resumed at world size 1 and at 2, on to more steps.
    succeed(&["--resume", dp.to_str().unwrap(), "--extend-to", "8"]);
    let out = output(&mut vq_train(&[
        "--nproc",
        "2",
        "--resume",
        dp.to_str().unwrap(),
        "--extend-to",
        "10",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dp.join("checkpoints/step-000010").is_dir());
}

/// The last evaluation a run logged (`{"eval": ...}` in metrics.jsonl).
fn last_eval(run: &Path) -> serde_json::Value {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("eval").cloned())
        .expect("an evaluation in metrics.jsonl")
}

/// Runs `args` as two ranks (`--nproc 2`) into `dp` and as one process into `single`; checks
/// that both ranks end with the same state, that the weights of `file` in the last checkpoints
/// agree within `tolerance`, and returns the two runs' last evaluations.
fn two_ranks_against_one(
    args: &[&str],
    dp: &Path,
    single: &Path,
    file: &str,
    tolerance: f64,
) -> (serde_json::Value, serde_json::Value) {
    let with = |run: &Path| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--run-dir".to_string(), run.display().to_string()]);
        all
    };
    let mut ranked = with(dp);
    ranked.extend(["--nproc".to_string(), "2".to_string()]);
    let out = output(vq_train(&strs(&ranked)).env("RUST_LOG", "info"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let digests = final_digests(&out.stderr);
    assert_eq!(digests.len(), 2, "{log}");
    assert_eq!(digests[0], digests[1], "the ranks' states differ");
    succeed(&strs(&with(single)));
    let read = |run: &Path| {
        let mut w = tch::Tensor::read_safetensors(run.join("checkpoints/last").join(file)).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    let worst = read(dp)
        .iter()
        .zip(read(single))
        .map(|((na, a), (nb, b))| {
            assert_eq!(na, &nb);
            (a - &b).abs().max().double_value(&[])
        })
        .fold(0.0f64, f64::max);
    eprintln!("{args:?}: two ranks against one process, largest difference of {file}: {worst:e}");
    assert!(
        worst < tolerance,
        "two ranks and one process differ by {worst}"
    );
    (last_eval(dp), last_eval(single))
}

/// A prior and a decoder train data-parallel too: both ranks end alike, their weights equal
/// one process's up to rounding (as the VQ-VAE's above; no dropout, so that both draw the same
/// network), and the sharded evaluation covers the whole test split, each rank half of it,
/// with the figures one process computes.
#[test]
fn two_ranks_train_a_prior_and_a_decoder_as_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset(dir);
    let vq = tiny_vqvae(dir, &data);
    let prior_config = dir.join("prior-dp.json");
    std::fs::write(
        &prior_config,
        serde_json::json!({
            "format": 2,
            "prior": {"kind": "transformer", "width": 16, "layers": 1, "heads": 2,
                      "dropout": 0.0, "class_dropout": 0.0},
            "data": {"path": data, "any_record_count": true},
            "schedule": {"steps": 6, "batch_size": 16, "lr": 1e-3, "log_every": 2,
                         "eval_every": 6, "checkpoint_every": 2},
            "runtime": {"threads": 1, "device": "cpu"}
        })
        .to_string(),
    )
    .unwrap();
    let (dp, single) = two_ranks_against_one(
        &[
            "prior",
            "--checkpoint",
            vq.to_str().unwrap(),
            "--config",
            prior_config.to_str().unwrap(),
        ],
        &dir.join("prior-dp"),
        &dir.join("prior-single"),
        "model.safetensors",
        1e-4,
    );
    assert_eq!(dp["grids"], 40, "{dp}");
    let bits = |e: &serde_json::Value| e["bits_per_code"].as_f64().unwrap();
    assert!(
        (bits(&dp) - bits(&single)).abs() < 1e-3,
        "{dp} against {single}"
    );

    let decoder_config = dir.join("decoder-dp.json");
    std::fs::write(
        &decoder_config,
        serde_json::json!({
            "format": 2,
            "vqvae": vq,
            "discriminator": {"channels": 4, "compute": "f32"},
            "data": {"path": data, "any_record_count": true},
            "schedule": {"steps": 6, "batch_size": 16, "lr": 1e-3,
                         "log_every": 2, "eval_every": 6, "checkpoint_every": 2},
            "runtime": {"threads": 1, "device": "cpu"},
            "disc_start": 3, "eval_images": 40
        })
        .to_string(),
    )
    .unwrap();
    let (dp, single) = two_ranks_against_one(
        &["decoder", "--config", decoder_config.to_str().unwrap()],
        &dir.join("decoder-dp"),
        &dir.join("decoder-single"),
        "model.safetensors",
        1e-4,
    );
    let eval = |e: &serde_json::Value, key: &str| e[key].as_f64().unwrap();
    assert_eq!(eval(&dp, "images"), 40.0, "{dp}");
    assert!(
        (eval(&dp, "psnr") - eval(&single, "psnr")).abs() < 1e-3,
        "{dp} against {single}"
    );
}

/// A rank killed mid-run stops the other with an error naming it, within the timeout.
#[test]
fn a_killed_rank_stops_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset(dir);
    let config = dp_config(dir, &data, 100_000);
    let run = dir.join("dp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rank = |r: usize| {
        let mut c = vq_train(&[
            "--config",
            config.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
        ]);
        c.env("RANK", r.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("VQVAE_DIST_TIMEOUT", "20")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let survivor = rank(0);
    let mut victim = rank(1);
    // Let them train a while (the first checkpoint is at step 2), then kill rank 1.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("checkpoints/step-000004").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    victim.kill().unwrap();
    let _ = victim.wait();
    let killed_at = Instant::now();
    let out = survivor.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 1"), "{err}");
}
