//! Data-parallel training, as PyTorch's DDP does it, on LibTorch's own c10d (`vq-dist`: gloo
//! for CPU models, NCCL for CUDA ones where the build has it, each rank on the GPU of its
//! LOCAL_RANK): each
//! rank of a job (launched by `vq-train --nproc N`, or by torchrun through RANK, WORLD_SIZE,
//! LOCAL_RANK, MASTER_ADDR, MASTER_PORT) trains on its own contiguous share of every global
//! batch, the one batch sequence a single process would draw with the same seed and batch size.
//! Gradients are averaged over the ranks in one flat bucket before each optimizer step
//! (`Adam`), the codebook's statistics summed before each update and its dead-code restarts
//! taken from rank 0 (`vq_model::collective`), and rank 0's initial state (its k-means
//! codebook) broadcast at the start. Rank 0 alone writes the run folder.

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use tch::Tensor;
use vq_data::BatchIndices;
use vq_dist::{Backend, ProcessGroup, Rendezvous};

/// This process's place in the job.
#[derive(Debug, Clone)]
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    /// The rendezvous, for the run folder's record.
    pub rendezvous: Option<Rendezvous>,
    /// The process group, once [`Dist::connect`] joined it (never at world size 1).
    group: OnceLock<Arc<ProcessGroup>>,
}

/// The variables of `stores` in one fixed order (by store, then by name): the state every rank
/// must hold alike, for [`crate::task::Task::replicated`].
pub fn sorted_variables(stores: &[&tch::nn::VarStore]) -> Vec<Tensor> {
    stores
        .iter()
        .flat_map(|vs| {
            let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named.into_iter().map(|(_, t)| t)
        })
        .collect()
}

/// `vq-dist`'s process group as the model crate's collective seam.
struct GroupCollective(Arc<ProcessGroup>);

impl vq_model::collective::Collective for GroupCollective {
    fn world_size(&self) -> usize {
        self.0.world_size()
    }

    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), String> {
        self.0.all_reduce_sum(tensors).map_err(|e| e.to_string())
    }

    fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), String> {
        self.0.broadcast(tensors, root).map_err(|e| e.to_string())
    }
}

static CURRENT: OnceLock<Dist> = OnceLock::new();

/// What the collective engine is, as the run folder records it.
pub fn engine(backend: Backend) -> String {
    let group = match backend {
        Backend::Gloo => "ProcessGroupGloo",
        Backend::Nccl { .. } => "ProcessGroupNCCL",
    };
    format!("LibTorch c10d: TCPStore rendezvous, {group}")
}

impl Dist {
    /// One process.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            world_size: 1,
            rendezvous: None,
            group: OnceLock::new(),
        }
    }

    /// The job this process belongs to, from the launcher's variables (one process when there
    /// are none). Its process group is joined by [`Dist::connect`], once the device is known.
    pub fn current() -> Result<&'static Dist> {
        if let Some(d) = CURRENT.get() {
            return Ok(d);
        }
        let dist = match Rendezvous::from_env()? {
            None => Dist::single(),
            Some(rdv) => Dist {
                rank: rdv.rank,
                world_size: rdv.world_size,
                rendezvous: Some(rdv),
                group: OnceLock::new(),
            },
        };
        Ok(CURRENT.get_or_init(|| dist))
    }

    /// The device this rank trains on when the run asks for `device`: with several ranks and
    /// CUDA, the GPU of its LOCAL_RANK (as torchrun users set `cuda:LOCAL_RANK`).
    pub fn rank_device(&self, device: tch::Device) -> tch::Device {
        match (device, &self.rendezvous) {
            (tch::Device::Cuda(_), Some(rdv)) if self.world_size > 1 => {
                let gpus = tch::Cuda::device_count().max(1) as usize;
                tch::Device::Cuda(rdv.local_rank % gpus)
            }
            _ => device,
        }
    }

    /// Joins the job's process group (once) on the engine for `device` ([`Backend::for_device`]:
    /// NCCL for CUDA where the build has it, gloo otherwise), and hands it to the model crate's
    /// collectives. `None` for a single process.
    pub fn connect(&self, device: tch::Device) -> Result<Option<Backend>> {
        let Some(rdv) = self.rendezvous.as_ref().filter(|_| self.world_size > 1) else {
            return Ok(None);
        };
        if let Some(group) = self.group.get() {
            return Ok(Some(group.backend()));
        }
        let backend = Backend::for_device(device)?;
        if let Backend::Nccl { .. } = backend {
            // NCCL refuses two ranks on one GPU, with a message about duplicate GPUs.
            // A launcher that gives each rank its own GPU through CUDA_VISIBLE_DEVICES (one
            // device listed) shows every rank one GPU: nothing to check then.
            let one_each = std::env::var("CUDA_VISIBLE_DEVICES")
                .is_ok_and(|v| !v.trim().is_empty() && !v.contains(','));
            let gpus = tch::Cuda::device_count().max(0) as usize;
            let local = std::env::var("LOCAL_WORLD_SIZE")
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(local) = local.filter(|&l| l > gpus && !one_each) {
                bail!(
                    "{local} ranks on this machine but {gpus} GPU(s): NCCL needs a GPU for each rank (start at most {gpus} ranks a machine, or set VQVAE_DIST_BACKEND=gloo)"
                );
            }
        }
        tracing::info!(
            "rank {} of {}: joining at {}:{} ({})",
            rdv.rank,
            rdv.world_size,
            rdv.master_addr,
            rdv.master_port,
            backend.name()
        );
        let group = Arc::new(ProcessGroup::init_with(rdv, backend)?);
        vq_model::collective::register(Box::new(GroupCollective(group.clone())));
        let _ = self.group.set(group);
        Ok(Some(backend))
    }

    /// Whether this rank writes the run folder (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// This rank's contiguous share of a global batch.
    pub fn shard(&self, batch: BatchIndices) -> Result<BatchIndices> {
        if self.world_size == 1 {
            return Ok(batch);
        }
        let n = batch.indices.len();
        if !n.is_multiple_of(self.world_size) {
            bail!(
                "a global batch of {n} does not split evenly over {} ranks: choose a batch size that is a multiple of the world size",
                self.world_size
            );
        }
        let per = n / self.world_size;
        let range = self.rank * per..(self.rank + 1) * per;
        Ok(BatchIndices {
            indices: batch.indices[range.clone()].to_vec(),
            flips: batch.flips[range].to_vec(),
        })
    }

    /// Rank 0's values of `tensors` on every rank.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        if self.world_size > 1 && self.group.get().is_none() {
            bail!(
                "rank {}: a broadcast before the process group was joined (Dist::connect)",
                self.rank
            );
        }
        if let Some(group) = self.group.get() {
            let refs: Vec<&Tensor> = tensors.iter().collect();
            group.broadcast(&refs, 0)?;
        }
        Ok(())
    }

    /// Fails with the first error a collective hit inside the model (a lost rank).
    pub fn check(&self) -> Result<()> {
        match vq_model::collective::take_failure() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Whether any rank saw a non-finite `loss`: the ranks agree, so that all of them stop
    /// together instead of some waiting in the gradient all-reduce.
    pub fn any_non_finite(loss: f64) -> bool {
        let bad = Tensor::from_slice(&[f32::from(!loss.is_finite())]);
        vq_model::collective::all_reduce_sum(&[&bad]);
        bad.double_value(&[0]) > 0.0
    }

    /// A digest of `tensors`' values, to show in the logs that the ranks agree.
    pub fn digest(tensors: &[Tensor]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for t in tensors {
            let flat = t.to_kind(tch::Kind::Float).flatten(0, -1);
            let values = Vec::<f32>::try_from(flat).unwrap_or_default();
            for v in values {
                v.to_bits().hash(&mut h);
            }
        }
        format!("{:016x}", h.finish())
    }
}
