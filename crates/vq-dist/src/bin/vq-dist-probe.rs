//! One rank of a small job, for the tests and for checking a machine's set-up by hand: joins
//! by the launcher's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), runs SCENARIO and
//! prints what it got as JSON. Scenarios: `sum` (two tensors all-reduced in one bucket),
//! `broadcast` (rank 0's values everywhere), `leave` (rank 1 quits at once; the others try to
//! all-reduce without it).

use std::time::Instant;

use tch::Tensor;
use vq_dist::{ProcessGroup, Rendezvous};

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "sum".into());
    let start = Instant::now();
    let result = (|| -> Result<String, vq_dist::DistError> {
        let rdv = Rendezvous::from_env()?.ok_or(vq_dist::DistError::Env {
            name: "WORLD_SIZE",
            reason: "not set".into(),
        })?;
        let group = ProcessGroup::init(&rdv)?;
        let r = group.rank() as f64;
        let a = Tensor::from_slice(&[r + 1.0, 2.0 * r, 1.0]);
        let b = Tensor::from_slice(&[10.0 * r, 5.0]).view([1, 2]);
        match scenario.as_str() {
            "sum" => group.all_reduce_sum(&[&a, &b])?,
            "broadcast" => group.broadcast(&[&a, &b], 0)?,
            "leave" => {
                if group.rank() == 1 {
                    std::process::exit(0);
                }
                group.all_reduce_sum(&[&a, &b])?
            }
            other => panic!("unknown scenario {other}"),
        }
        let values: Vec<f64> =
            Vec::<f64>::try_from(Tensor::cat(&[a, b.flatten(0, -1)], 0)).expect("f64 values");
        Ok(format!("{values:?}"))
    })();
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(values) => println!("{{\"values\": {values}, \"seconds\": {seconds}}}"),
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"error": e.to_string(), "seconds": seconds})
            );
            std::process::exit(1);
        }
    }
}
