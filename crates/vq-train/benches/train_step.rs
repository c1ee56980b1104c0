//! Training throughput of the default model: `cargo xtask bench train` runs this beside the
//! PyTorch reference (scripts/vqvae_reference.py) with the same batch, model and threads.

use std::time::Instant;

use clap::Parser;
use tch::nn;
use vq_data::{BatchConfig, Batcher, Cifar10, Split};
use vq_model::{images_to_tensor, VqVae, VqVaeConfig};
use vq_train::{train_step, Adam};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/cifar-10-batches-bin"))]
    data: std::path::PathBuf,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long)]
    threads: Option<i32>,
    /// f32 or bf16 convolutions.
    #[arg(long, default_value = "f32")]
    compute: vq_model::ComputeKind,
    /// Leave the C allocator's defaults (for measuring `retain_freed_memory`).
    #[arg(long)]
    plain_malloc: bool,
    /// Also time the parts of a step (batch, forward, backward, optimizer, quantizer update)
    /// over the timed steps, on the CPU, and print their shares.
    #[arg(long)]
    phases: bool,
    /// cpu or cuda [default: cuda when a GPU is usable].
    #[arg(long, value_enum, default_value = "auto")]
    device: vq_model::DeviceChoice,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.plain_malloc {
        vq_model::retain_freed_memory();
    }
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let device = args.device.resolve()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    // Any number of records per file: the GPU bundle carries a subset.
    let options = vq_data::LoadOptions {
        records_per_file: None,
    };
    let train = Cifar10::load_with(&args.data, Split::Train, &options)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let config = VqVaeConfig {
        compute: args.compute,
        ..VqVaeConfig::default()
    };
    let mut model = VqVae::new(vs.root(), &config);
    let mut adam = Adam::new(&vs);
    let mut batcher = Batcher::new(
        train.len(),
        BatchConfig {
            batch_size: args.batch_size,
            ..BatchConfig::default()
        },
    )?;
    let mut run = |steps: usize, offset: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        for s in 0..steps {
            let batch = batcher.next_batch(train.images.view(), &train.labels);
            let xs = images_to_tensor(&batch.images, device)?;
            train_step(&mut model, &mut adam, &xs, 3e-4, offset + s)
                .ok_or_else(|| anyhow::anyhow!("loss diverged"))?;
        }
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        Ok(start.elapsed().as_secs_f64())
    };
    run(args.warmup, 0)?;
    let seconds = run(args.steps, args.warmup)?;
    if args.phases && !device.is_cuda() {
        // The same step as `train_step`, cut at its seams (CPU ops finish before they return).
        let mut spent = [0f64; 5];
        let names = [
            "batch",
            "forward",
            "backward",
            "optimizer",
            "quantizer update",
        ];
        for s in 0..args.steps {
            let mut t = Instant::now();
            let mut lap = |i: usize, t: &mut Instant| {
                spent[i] += t.elapsed().as_secs_f64();
                *t = Instant::now();
            };
            let batch = batcher.next_batch(train.images.view(), &train.labels);
            let xs = images_to_tensor(&batch.images, device)?;
            lap(0, &mut t);
            let out = model.forward_t(&xs, true);
            let _ = out.loss.double_value(&[]);
            lap(1, &mut t);
            adam.zero_grad();
            out.loss.backward();
            lap(2, &mut t);
            adam.step(3e-4);
            lap(3, &mut t);
            model
                .quantizer
                .after_step(&out.quantized, (args.warmup + args.steps + s) as i64 + 1);
            lap(4, &mut t);
        }
        let total: f64 = spent.iter().sum();
        for (name, v) in names.iter().zip(spent) {
            eprintln!(
                "{name:<18} {:>8.2} ms/step {:>6.1}%",
                v * 1e3 / args.steps as f64,
                100.0 * v / total
            );
        }
    }
    println!(
        "{{\"peer\":\"vqvae-rs\",\"compute\":\"{:?}\",\"device\":\"{device:?}\",\"threads\":{},\"batch_size\":{},\"steps\":{},\"seconds\":{seconds:.4},\"images_per_s\":{:.1},\"kind\":\"{:?}\"}}",
        args.compute,
        tch::get_num_threads(),
        args.batch_size,
        args.steps,
        (args.steps * args.batch_size) as f64 / seconds,
        args.compute.kind(device)
    );
    Ok(())
}
