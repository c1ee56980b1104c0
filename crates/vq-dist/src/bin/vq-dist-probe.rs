//! One rank of a small job, for the tests and for checking a machine's set-up by hand: joins
//! by the launcher's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), runs SCENARIO and
//! prints what it got as JSON. Scenarios: `sum` (two tensors all-reduced in one bucket),
//! `broadcast` (rank 0's values everywhere), `leave` (rank 1 quits at once; the others try to
//! all-reduce without it). With `VQVAE_DIST_BACKEND=nccl` (the GPU bundle's build) the tensors
//! live on CUDA device LOCAL_RANK and NCCL runs the collectives; gloo on the CPU otherwise.

use std::time::Instant;

use tch::Tensor;
use vq_dist::{Backend, ProcessGroup, Rendezvous};

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "sum".into());
    let start = Instant::now();
    let result = (|| -> Result<(Vec<f64>, &'static str, usize), vq_dist::DistError> {
        let rdv = Rendezvous::from_env()?.ok_or(vq_dist::DistError::Env {
            name: "WORLD_SIZE",
            reason: "not set".into(),
        })?;
        let device = match std::env::var("VQVAE_DIST_BACKEND").as_deref() {
            Ok("nccl") => tch::Device::Cuda(rdv.local_rank),
            _ => tch::Device::Cpu,
        };
        let group = ProcessGroup::init_with(&rdv, Backend::for_device(device)?)?;
        let r = group.rank() as f64;
        let a = Tensor::from_slice(&[r + 1.0, 2.0 * r, 1.0]).to_device(device);
        let b = Tensor::from_slice(&[10.0 * r, 5.0])
            .view([1, 2])
            .to_device(device);
        match scenario.as_str() {
            "sum" => group.all_reduce_sum(&[&a, &b])?,
            "barrier" => group.barrier()?,
            "broadcast" => group.broadcast(&[&a, &b], 0)?,
            "leave" => {
                if group.rank() == 1 {
                    std::process::exit(0);
                }
                group.all_reduce_sum(&[&a, &b])?
            }
            other => panic!("unknown scenario {other}"),
        }
        let values: Vec<f64> = Vec::<f64>::try_from(
            Tensor::cat(&[a, b.flatten(0, -1)], 0).to_device(tch::Device::Cpu),
        )
        .expect("f64 values");
        Ok((values, group.backend().name(), group.rank()))
    })();
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok((values, backend, rank)) => println!(
            "{}",
            serde_json::json!({"values": values, "backend": backend, "rank": rank, "seconds": seconds})
        ),
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"error": e.to_string(), "seconds": seconds})
            );
            std::process::exit(1);
        }
    }
}
