//! Feature extraction rate of the FID network under the settings that might change it (batch
//! size, memory layout, TorchScript's graph optimiser), on random 32 × 32 images: `cargo bench
//! -p vq-fid --bench features -- [--images N] [--threads T]`. Every setting must give the same
//! features as the first (checked); only the rate may differ.

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vq_fid::InceptionV3;

fn arg(name: &str, default: i64) -> i64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images = arg("--images", 200);
    let threads = arg("--threads", 0);
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    // The GPU check (scripts/gpu-check.sh): `--device cuda|cpu`, and `--timing-weights FILE`
    // for the zero-weight stand-in the GPU bundle carries; only the rate is measured there.
    if std::env::args().any(|a| a == "--device") {
        return on_device(images);
    }
    let net = InceptionV3::load(&vq_fid::default_weights(), Device::Cpu)?;
    tch::manual_seed(0);
    let x = (Tensor::rand([images, 3, 32, 32], (Kind::Float, Device::Cpu)) * 255.0).round();
    let mut reference: Option<Tensor> = None;
    // A first pass warms up TorchScript's profiling executor.
    let _ = net.features(&x.narrow(0, 0, 2))?;
    for (batch, channels_last, optimise) in [
        (10, false, true),
        (1, false, true),
        (2, false, true),
        (5, false, true),
        (10, true, true),
        (20, false, true),
        (50, false, true),
        (10, false, false),
    ] {
        tch::jit::set_graph_executor_optimize(optimise);
        let start = Instant::now();
        let mut parts = Vec::new();
        for s in (0..images).step_by(batch as usize) {
            let b = x.narrow(0, s, batch.min(images - s));
            let b = if channels_last {
                b.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
            } else {
                b
            };
            parts.push(net.features(&b)?);
        }
        let seconds = start.elapsed().as_secs_f64();
        let features = Tensor::cat(&parts, 0);
        let max_diff = match &reference {
            Some(r) => (&features - r).abs().max().double_value(&[]),
            None => {
                reference = Some(features);
                0.0
            }
        };
        println!(
            "{{\"batch\":{batch},\"channels_last\":{channels_last},\"graph_optimise\":{optimise},\"threads\":{},\"images\":{images},\"seconds\":{seconds:.2},\"images_per_s\":{:.2},\"max_feature_difference\":{max_diff:.3e}}}",
            tch::get_num_threads(),
            images as f64 / seconds
        );
    }
    // Two workers of one LibTorch thread each, each on its own half of the images.
    for batch in [5, 10] {
        tch::jit::set_graph_executor_optimize(true);
        tch::set_num_threads(1);
        let start = Instant::now();
        let halves: Vec<Tensor> = x.chunk(2, 0);
        let parts: Vec<Tensor> = std::thread::scope(|scope| {
            let workers: Vec<_> = halves
                .iter()
                .map(|half| {
                    let half = half.shallow_clone();
                    let net = &net;
                    scope.spawn(move || {
                        let n = half.size()[0];
                        let mut out = Vec::new();
                        for s in (0..n).step_by(batch as usize) {
                            out.push(net.features(&half.narrow(0, s, batch.min(n - s))).unwrap());
                        }
                        Tensor::cat(&out, 0)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        let features = Tensor::cat(&parts, 0);
        let max_diff = (&features - reference.as_ref().unwrap())
            .abs()
            .max()
            .double_value(&[]);
        println!(
            "{{\"batch\":{batch},\"workers\":2,\"threads_each\":1,\"images\":{images},\"seconds\":{seconds:.2},\"images_per_s\":{:.2},\"max_feature_difference\":{max_diff:.3e}}}",
            images as f64 / seconds
        );
    }
    Ok(())
}

fn on_device(images: i64) -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let device = match args
        .iter()
        .position(|a| a == "--device")
        .map(|i| args.get(i + 1))
    {
        Some(Some(d)) if d == "cuda" => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let net = match args.iter().position(|a| a == "--timing-weights") {
        Some(i) => InceptionV3::load_for_timing(std::path::Path::new(&args[i + 1]), device)?,
        None => InceptionV3::load(&vq_fid::default_weights(), device)?,
    };
    tch::manual_seed(0);
    let x = (Tensor::rand([images, 3, 32, 32], (Kind::Float, device)) * 255.0).round();
    let _ = net.features(&x.narrow(0, 0, 8))?;
    for batch in [50, 100, 200, 500] {
        let start = Instant::now();
        for s in (0..images).step_by(batch as usize) {
            // features() returns on the CPU, so each batch ends in a device sync.
            let _features = net.features(&x.narrow(0, s, batch.min(images - s)))?;
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{{\"device\":\"{device:?}\",\"batch\":{batch},\"images\":{images},\"seconds\":{seconds:.3},\"images_per_s\":{:.1}}}",
            images as f64 / seconds
        );
    }
    Ok(())
}
