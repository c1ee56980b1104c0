//! Two processes on localhost through LibTorch's c10d (TCPStore + ProcessGroupGloo): sums and
//! broadcasts land on both ranks, a lost rank or an unreachable rendezvous is an error within
//! the timeout, never a hang; a world of one runs its collectives; asking a CPU build for NCCL
//! is a clear error.

use std::net::TcpListener;
use std::process::{Command, Output};

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rank(scenario: &str, rank: usize, world: usize, port: u16, timeout_s: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vq-dist-probe"));
    c.arg(scenario)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("VQVAE_DIST_TIMEOUT", timeout_s.to_string())
        .env_remove("GLOO_SOCKET_IFNAME")
        .env_remove("VQVAE_DIST_BACKEND");
    c
}

fn job(scenario: &str, timeout_s: u64) -> Vec<Output> {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|r| rank(scenario, r, 2, port, timeout_s).spawn_out())
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

trait SpawnOut {
    fn spawn_out(&mut self) -> std::process::Child;
}

impl SpawnOut for Command {
    fn spawn_out(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn sums_and_broadcasts_reach_both_ranks() {
    // Rank r holds a = [r + 1, 2r, 1], b = [10r, 5]: the sums are [3, 2, 2, 10, 10].
    for out in job("sum", 60) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            report(&out)["values"],
            serde_json::json!([3.0, 2.0, 2.0, 10.0, 10.0])
        );
        assert_eq!(report(&out)["backend"], "gloo");
    }
    for out in job("broadcast", 60) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            report(&out)["values"],
            serde_json::json!([1.0, 0.0, 1.0, 0.0, 5.0])
        );
    }
}

#[test]
fn a_lost_rank_stops_the_other_within_the_timeout() {
    let outs = job("leave", 10);
    let survivor = &outs[0];
    assert_eq!(
        survivor.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&survivor.stderr)
    );
    let r = report(survivor);
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("all-reduce failed on rank 0"), "{error}");
    assert!(error.contains("rank 1 stopped responding"), "{error}");
    assert!(r["seconds"].as_f64().unwrap() < 30.0, "{r}");
}

#[test]
fn an_unreachable_rendezvous_is_an_error_after_the_timeout() {
    // Rank 1 of 2 with no rank 0 serving the store.
    let out = rank("sum", 1, 2, free_port(), 3)
        .spawn_out()
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("rendezvous at 127.0.0.1:"), "{error}");
    assert!(r["seconds"].as_f64().unwrap() < 60.0, "{r}");
}

#[test]
fn a_world_of_one_runs_its_collectives() {
    // What scripts/gpu-check.sh does with NCCL on a one-GPU machine, here on gloo: the group is
    // made and every collective runs (a sum over one rank leaves the values as they were).
    for scenario in ["sum", "broadcast", "barrier"] {
        let out = rank(scenario, 0, 1, free_port(), 30)
            .spawn_out()
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            report(&out)["values"],
            serde_json::json!([1.0, 0.0, 1.0, 0.0, 5.0]),
            "{scenario}"
        );
    }
}

#[test]
fn nccl_in_a_build_without_it_is_a_clear_error() {
    if env!("VQ_DIST_NCCL") == "1" {
        return; // the GPU bundle's build has NCCL: scripts/gpu-check.sh runs it on a GPU
    }
    let out = rank("sum", 0, 1, free_port(), 10)
        .env("VQVAE_DIST_BACKEND", "nccl")
        .spawn_out()
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = report(&out)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("VQVAE_DIST_BACKEND") && error.contains("has no NCCL"),
        "{error}"
    );
}
