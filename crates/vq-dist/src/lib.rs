//! Data-parallel collectives for vqvae-rs on LibTorch's own c10d: the engine under PyTorch's
//! DDP. Ranks meet at a `TCPStore` (rank 0 serves it at `MASTER_ADDR:MASTER_PORT`), and
//! `ProcessGroupGloo` runs the collectives on CPU buckets, or, in a build against a CUDA
//! LibTorch with NCCL's headers (the GPU bundle; [`nccl_available`]), `ProcessGroupNCCL` on
//! the rank's GPU. Tensors may live anywhere: each call gathers them into one flat bucket on
//! the group's device and copies the result back. A small C++ shim (`cpp/shim.cpp`) is the only
//! unsafe code, and it stays in this crate.
//!
//! ```text
//! let group = ProcessGroup::init(&Rendezvous::from_env()?)?;   // RANK, WORLD_SIZE, MASTER_*
//! group.all_reduce_sum(&[&grad_a, &grad_b])?;                   // one bucket, summed in place
//! group.broadcast(&[&weights], 0)?;                            // rank 0's values everywhere
//! ```

use std::ffi::{c_char, CString};
use std::time::Duration;

use tch::{Kind, Tensor};

/// What went wrong with the process group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistError {
    /// A launcher variable missing or malformed.
    #[error("{name}: {reason} (launch with `vq-train --nproc N`, torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")]
    Env { name: &'static str, reason: String },
    /// The rendezvous did not complete (a wrong MASTER_ADDR, a port in use, a rank that never
    /// came) within the timeout.
    #[error("rendezvous at {addr}:{port} as rank {rank} of {world_size} failed: {message}")]
    Rendezvous {
        addr: String,
        port: u16,
        rank: usize,
        world_size: usize,
        message: String,
    },
    /// A collective failed: a rank stopped or cannot be reached.
    #[error("{what} failed on rank {rank}: {message}{lost}")]
    Collective {
        what: &'static str,
        rank: usize,
        message: String,
        /// ", rank N stopped responding" when the heartbeats tell which.
        lost: String,
    },
    #[error("tensors to {0} must all be of one kind")]
    Tensors(&'static str),
    /// `VQVAE_DIST_BACKEND` names no engine this build has.
    #[error("VQVAE_DIST_BACKEND={0:?}: {1}")]
    Backend(String, String),
}

/// Which c10d engine runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo`: buckets on the CPU (any machine).
    Gloo,
    /// `ProcessGroupNCCL`: buckets on CUDA device `device` (the rank's GPU, by its
    /// `LOCAL_RANK`). Only in builds where [`nccl_available`] is true.
    Nccl { device: usize },
}

impl Backend {
    /// The name PyTorch gives it (`init_process_group(backend=...)`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl { .. } => "nccl",
        }
    }

    /// Where its buckets live.
    pub fn device(&self) -> tch::Device {
        match *self {
            Backend::Gloo => tch::Device::Cpu,
            Backend::Nccl { device } => tch::Device::Cuda(device),
        }
    }

    /// The engine for a job whose models live on `device`, as PyTorch users choose it: NCCL for
    /// CUDA (on this rank's GPU), gloo for the CPU; `VQVAE_DIST_BACKEND=gloo|nccl` overrides.
    pub fn for_device(device: tch::Device) -> Result<Backend, DistError> {
        let requested = std::env::var("VQVAE_DIST_BACKEND").unwrap_or_default();
        Self::choose(&requested, device, nccl_available())
    }

    /// [`Backend::for_device`] with the request and the build's NCCL given.
    fn choose(requested: &str, device: tch::Device, nccl: bool) -> Result<Backend, DistError> {
        let requested = requested.to_string();
        let cuda = match device {
            tch::Device::Cuda(i) => Some(i),
            _ => None,
        };
        match (requested.as_str(), cuda) {
            ("", None) | ("gloo", _) => Ok(Backend::Gloo),
            ("" | "nccl", Some(device)) if nccl => Ok(Backend::Nccl { device }),
            // A CUDA job in a build without NCCL still runs, its buckets staged through the CPU.
            ("", Some(_)) => Ok(Backend::Gloo),
            ("nccl", Some(_)) => Err(DistError::Backend(
                requested,
                "this build has no NCCL (only the GPU bundle's is built against a CUDA LibTorch with NCCL's headers)".into(),
            )),
            ("nccl", None) => Err(DistError::Backend(
                requested,
                "NCCL needs the models on a GPU (--device cuda)".into(),
            )),
            (other, _) => Err(DistError::Backend(
                other.to_string(),
                "not an engine: gloo or nccl".into(),
            )),
        }
    }
}

/// Whether this build can make NCCL groups: compiled against a CUDA LibTorch with NCCL's
/// headers (`VQ_LINK_CUDA=1` and `VQ_CUDA_INCLUDE`, as `cargo xtask gpu-bundle` builds).
pub fn nccl_available() -> bool {
    // SAFETY: a function of no arguments that returns a constant.
    #[allow(unsafe_code)]
    unsafe {
        vqd_has_nccl() != 0
    }
}

/// Where and as whom a rank joins: the variables torchrun sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How long a rendezvous or a collective may wait for the others.
    pub timeout: Duration,
}

/// The default wait for the other ranks: long enough for a slow rank's evaluation, short
/// enough that a lost rank stops the others in minutes, not hours.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Rendezvous {
    /// From `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (default: RANK), `MASTER_ADDR`, `MASTER_PORT`,
    /// and `VQVAE_DIST_TIMEOUT` (seconds; default 300), as torchrun sets them.
    pub fn from_env() -> Result<Option<Rendezvous>, DistError> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let parse = |name: &'static str, text: String| -> Result<usize, DistError> {
            text.parse().map_err(|_| DistError::Env {
                name,
                reason: format!("{text:?} is not a whole number"),
            })
        };
        let world_size = parse("WORLD_SIZE", world)?;
        let rank = parse(
            "RANK",
            var("RANK").ok_or(DistError::Env {
                name: "RANK",
                reason: "not set, while WORLD_SIZE is".into(),
            })?,
        )?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", v)?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port.parse().map_err(|_| DistError::Env {
            name: "MASTER_PORT",
            reason: format!("{port:?} is not a port"),
        })?;
        let timeout = match var("VQVAE_DIST_TIMEOUT") {
            Some(v) => Duration::from_secs(parse("VQVAE_DIST_TIMEOUT", v)? as u64),
            None => DEFAULT_TIMEOUT,
        };
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env {
                name: "RANK",
                reason: format!("rank {rank} of a world of {world_size}"),
            });
        }
        Ok(Some(Rendezvous {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            timeout,
        }))
    }
}

#[repr(C)]
struct VqdGroup {
    _private: [u8; 0],
}

type CTensor = torch_sys::C_tensor;

#[allow(unsafe_code)]
extern "C" {
    fn vqd_has_nccl() -> i32;
    fn vqd_init(
        master_addr: *const c_char,
        master_port: u16,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        backend: i32,
        cuda_device: i32,
        device_interface: *const c_char,
        device_host: *const c_char,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut VqdGroup;
    fn vqd_free(group: *mut VqdGroup);
    fn vqd_allreduce_sum(
        group: *mut VqdGroup,
        t: *mut CTensor,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn vqd_broadcast(
        group: *mut VqdGroup,
        t: *mut CTensor,
        root: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn vqd_barrier(group: *mut VqdGroup, err: *mut c_char, len: usize) -> i32;
    fn vqd_store_add(
        group: *mut VqdGroup,
        key: *const c_char,
        value: i64,
        out: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

const ERR_LEN: usize = 1024;

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    // c10d's messages carry a C++ backtrace after the first lines: keep the first line.
    text.lines().next().unwrap_or("").trim().to_string()
}

/// The raw group, shared with the heartbeat thread.
struct Raw(*mut VqdGroup);

// SAFETY: c10d's process group and store are thread-safe objects (PyTorch calls them from
// several threads; TCPStore's client serialises its requests); the pointer is freed once, when
// the last holder drops.
#[allow(unsafe_code)]
unsafe impl Send for Raw {}
#[allow(unsafe_code)]
unsafe impl Sync for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: the pointer came from vqd_init, and this is its last holder.
        #[allow(unsafe_code)]
        unsafe {
            vqd_free(self.0)
        }
    }
}

/// How often each rank tells the store it is alive; a collective that fails names the ranks
/// whose count stopped (a lost rank).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A process group: this rank's membership of the job, and its collectives.
pub struct ProcessGroup {
    raw: std::sync::Arc<Raw>,
    rank: usize,
    world_size: usize,
    backend: Backend,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .finish()
    }
}

fn is_loopback(addr: &str) -> bool {
    addr == "localhost" || addr.starts_with("127.") || addr == "::1"
}

impl ProcessGroup {
    /// Joins the job on gloo: rank 0 serves the store, every rank waits for all the others (up
    /// to the timeout), then the gloo group connects them pairwise.
    pub fn init(rdv: &Rendezvous) -> Result<ProcessGroup, DistError> {
        Self::init_with(rdv, Backend::Gloo)
    }

    /// Joins the job on `backend`'s engine (NCCL makes its communicator on the first
    /// collective).
    pub fn init_with(rdv: &Rendezvous, backend: Backend) -> Result<ProcessGroup, DistError> {
        let fail = |message: String| DistError::Rendezvous {
            addr: rdv.master_addr.clone(),
            port: rdv.master_port,
            rank: rdv.rank,
            world_size: rdv.world_size,
            message,
        };
        let addr = CString::new(rdv.master_addr.clone()).map_err(|e| fail(e.to_string()))?;
        let interface = CString::new(std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default())
            .map_err(|e| fail(e.to_string()))?;
        // One machine: bind the loopback device, where every peer is; several: the machine's
        // own name (gloo's default), unless GLOO_SOCKET_IFNAME names an interface.
        let host = CString::new(if is_loopback(&rdv.master_addr) {
            "127.0.0.1"
        } else {
            ""
        })
        .map_err(|e| fail(e.to_string()))?;
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: every pointer is valid for the call (C strings and an error buffer of
        // ERR_LEN bytes we own); the shim copies what it keeps.
        #[allow(unsafe_code)]
        let raw = unsafe {
            vqd_init(
                addr.as_ptr(),
                rdv.master_port,
                rdv.rank as i32,
                rdv.world_size as i32,
                rdv.timeout.as_millis() as i64,
                match backend {
                    Backend::Gloo => 0,
                    Backend::Nccl { .. } => 1,
                },
                match backend {
                    Backend::Gloo => -1,
                    Backend::Nccl { device } => device as i32,
                },
                interface.as_ptr(),
                host.as_ptr(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if raw.is_null() {
            return Err(fail(message(&err)));
        }
        let group = ProcessGroup {
            raw: std::sync::Arc::new(Raw(raw)),
            rank: rdv.rank,
            world_size: rdv.world_size,
            backend,
            stop: Default::default(),
        };
        let (raw, stop, key) = (
            group.raw.clone(),
            group.stop.clone(),
            format!("beat/{}", rdv.rank),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if store_add(&raw, &key, 1).is_err() {
                    break;
                }
                std::thread::sleep(HEARTBEAT);
            }
        });
        Ok(group)
    }

    /// The ranks whose heartbeat stopped: their counts read twice, four beats apart. `None`
    /// when the store itself is gone (rank 0, which serves it, is lost).
    fn lost_ranks(&self) -> Option<Vec<usize>> {
        let read = |r: usize| store_add(&self.raw, &format!("beat/{r}"), 0).ok();
        let before: Vec<Option<i64>> = (0..self.world_size).map(read).collect();
        std::thread::sleep(HEARTBEAT * 4);
        let after: Vec<Option<i64>> = (0..self.world_size).map(read).collect();
        if after.iter().all(Option::is_none) {
            return None;
        }
        Some(
            (0..self.world_size)
                .filter(|&r| r != self.rank && before[r] == after[r])
                .collect(),
        )
    }

    /// `error` with the lost ranks named, as far as the heartbeats tell.
    fn name_lost(&self, mut error: DistError) -> DistError {
        if let DistError::Collective { lost, .. } = &mut error {
            *lost = match self.lost_ranks() {
                None => ", rank 0 (which serves the rendezvous) is lost".into(),
                Some(ranks) if ranks.is_empty() => String::new(),
                Some(ranks) => format!(
                    ", rank{} {} stopped responding",
                    if ranks.len() > 1 { "s" } else { "" },
                    ranks
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        }
        error
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The engine running the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `tensors` as one flat bucket on the group's device.
    fn bucket(&self, tensors: &[&Tensor], what: &'static str) -> Result<Tensor, DistError> {
        let kind = tensors.first().map(|t| t.kind()).unwrap_or(Kind::Float);
        if tensors.iter().any(|t| t.kind() != kind) {
            return Err(DistError::Tensors(what));
        }
        let device = self.backend.device();
        let flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.flatten(0, -1).to_device(device))
            .collect();
        Ok(Tensor::cat(&flat, 0))
    }

    /// Copies the reduced `bucket` back into `tensors`, wherever they live.
    fn unbucket(tensors: &[&Tensor], bucket: &Tensor) {
        let mut at = 0;
        for t in tensors {
            let n = t.numel() as i64;
            let mut dst = t.shallow_clone();
            dst.copy_(&bucket.narrow(0, at, n).view_as(t));
            at += n;
        }
    }

    fn run(
        &self,
        what: &'static str,
        tensor: &mut Tensor,
        call: impl FnOnce(*mut VqdGroup, *mut CTensor, *mut c_char) -> i32,
    ) -> Result<(), DistError> {
        let mut err = vec![0u8; ERR_LEN];
        if call(self.raw.0, tensor.as_mut_ptr(), err.as_mut_ptr().cast()) != 0 {
            return Err(self.name_lost(DistError::Collective {
                what,
                rank: self.rank,
                message: message(&err),
                lost: String::new(),
            }));
        }
        Ok(())
    }

    /// Sums `tensors` over the ranks, in place, as one flat bucket (one collective, not one a
    /// tensor): each holds the sum of every rank's values afterwards.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        if tensors.is_empty() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let mut bucket = self.bucket(tensors, "all-reduce")?;
        self.run("all-reduce", &mut bucket, |g, t, e| {
            // SAFETY: `g` is our live group, `t` a live tensor we hold, `e` ERR_LEN bytes.
            #[allow(unsafe_code)]
            unsafe {
                vqd_allreduce_sum(g, t, e, ERR_LEN)
            }
        })?;
        Self::unbucket(tensors, &bucket);
        Ok(())
    }

    /// Copies rank `root`'s values of `tensors` to every rank, in place, as one bucket.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), DistError> {
        if tensors.is_empty() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let mut bucket = self.bucket(tensors, "broadcast")?;
        self.run("broadcast", &mut bucket, |g, t, e| {
            // SAFETY: as in `all_reduce_sum`.
            #[allow(unsafe_code)]
            unsafe {
                vqd_broadcast(g, t, root as i32, e, ERR_LEN)
            }
        })?;
        Self::unbucket(tensors, &bucket);
        Ok(())
    }

    /// Waits until every rank reaches it.
    pub fn barrier(&self) -> Result<(), DistError> {
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: our live group and an error buffer of ERR_LEN bytes.
        #[allow(unsafe_code)]
        let rc = unsafe { vqd_barrier(self.raw.0, err.as_mut_ptr().cast(), ERR_LEN) };
        if rc != 0 {
            return Err(self.name_lost(DistError::Collective {
                what: "barrier",
                rank: self.rank,
                message: message(&err),
                lost: String::new(),
            }));
        }
        Ok(())
    }

    /// Adds `value` to the store's counter `key`; its new value.
    pub fn store_add(&self, key: &str, value: i64) -> Result<i64, DistError> {
        store_add(&self.raw, key, value)
    }
}

fn store_add(raw: &Raw, key: &str, value: i64) -> Result<i64, DistError> {
    let key_c = CString::new(key).map_err(|_| DistError::Tensors("store"))?;
    let mut err = vec![0u8; ERR_LEN];
    let mut out = 0i64;
    // SAFETY: a live group, a C string, an i64 and an error buffer we own.
    #[allow(unsafe_code)]
    let rc = unsafe {
        vqd_store_add(
            raw.0,
            key_c.as_ptr(),
            value,
            &mut out,
            err.as_mut_ptr().cast(),
            ERR_LEN,
        )
    };
    if rc != 0 {
        return Err(DistError::Collective {
            what: "the store",
            rank: usize::MAX,
            message: message(&err),
            lost: String::new(),
        });
    }
    Ok(out)
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The heartbeat thread ends within a beat; the group is freed with its last holder.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_engine_follows_the_device_unless_asked() {
        let choose = |r: &str, d: Device, nccl: bool| Backend::choose(r, d, nccl);
        assert_eq!(choose("", Device::Cpu, true), Ok(Backend::Gloo));
        assert_eq!(
            choose("", Device::Cuda(1), true),
            Ok(Backend::Nccl { device: 1 })
        );
        // A CUDA job in a build without NCCL stages its buckets through gloo.
        assert_eq!(choose("", Device::Cuda(0), false), Ok(Backend::Gloo));
        assert_eq!(choose("gloo", Device::Cuda(0), true), Ok(Backend::Gloo));
        assert_eq!(
            choose("nccl", Device::Cuda(0), true),
            Ok(Backend::Nccl { device: 0 })
        );
        for (requested, device, nccl, says) in [
            ("nccl", Device::Cuda(0), false, "has no NCCL"),
            ("nccl", Device::Cpu, true, "needs the models on a GPU"),
            ("mpi", Device::Cpu, true, "gloo or nccl"),
        ] {
            let e = choose(requested, device, nccl).unwrap_err().to_string();
            assert!(
                e.contains("VQVAE_DIST_BACKEND") && e.contains(says),
                "{requested}: {e}"
            );
        }
    }

    #[test]
    fn the_build_has_nccl_exactly_when_built_for_it_and_names_its_engines() {
        // The normal build compiles the shim without NCCL; the GPU bundle's with it.
        assert_eq!(nccl_available(), env!("VQ_DIST_NCCL") == "1");
        assert_eq!(Backend::Gloo.name(), "gloo");
        assert_eq!(Backend::Nccl { device: 3 }.device(), Device::Cuda(3));
    }
}
