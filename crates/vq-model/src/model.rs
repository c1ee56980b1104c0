use std::path::{Path, PathBuf};

use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};
use vq_kmeans::{KMeans, KMeansConfig};

use crate::config::{ReconstructionLoss, VqVaeConfig};
use crate::nets::{Decoder, Encoder};
use crate::quantizer::{Quantized, Quantizer};
use crate::ModelError;

/// Encoder → quantizer → decoder.
#[derive(Debug)]
pub struct VqVae {
    pub config: VqVaeConfig,
    pub encoder: Encoder,
    pub quantizer: Quantizer,
    pub decoder: Decoder,
}

/// One forward pass, by name.
#[derive(Debug)]
pub struct VqVaeOutput {
    /// `(B, C, H, W)` in the input range.
    pub reconstruction: Tensor,
    /// Mean squared error of the reconstruction.
    pub reconstruction_loss: Tensor,
    /// Reconstruction + commitment + codebook losses: what the optimizer minimises.
    pub loss: Tensor,
    pub quantized: Quantized,
}

impl VqVaeOutput {
    /// `(B, h, w)` codes.
    pub fn codes(&self) -> &Tensor {
        &self.quantized.codes
    }
}

impl VqVae {
    pub fn new(vs: nn::Path<'_>, config: &VqVaeConfig) -> Self {
        VqVae {
            config: config.clone(),
            encoder: Encoder::new(&vs / "encoder", config),
            quantizer: Quantizer::new(&vs / "quantizer", config),
            decoder: Decoder::new(&vs / "decoder", config),
        }
    }

    /// `(B, C, H, W)` images in the input range → `(B, D, h, w)` continuous codes.
    pub fn encode_continuous(&self, xs: &Tensor) -> Tensor {
        self.encoder.forward(xs)
    }

    /// Images → `(B, h, w)` code indices.
    pub fn encode(&self, xs: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let z = self.encoder.forward(xs);
        self.quantizer.forward(&z).codes
    }

    /// `(B, h, w)` code indices → images in the input range.
    pub fn decode(&self, codes: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.decoder.forward(&self.quantizer.embed(codes))
    }

    pub fn forward(&self, xs: &Tensor) -> VqVaeOutput {
        let z = self.encoder.forward(xs);
        let quantized = self.quantizer.forward(&z);
        let reconstruction = self.decoder.forward(&quantized.quantized);
        let reconstruction_loss = reconstruction.mse_loss(xs, Reduction::Mean);
        let objective = reconstruction_objective(
            &reconstruction,
            xs,
            &reconstruction_loss,
            self.config.reconstruction_loss,
        );
        let loss = &objective + &quantized.commitment_loss + &quantized.codebook_loss;
        VqVaeOutput {
            reconstruction,
            reconstruction_loss,
            loss,
            quantized,
        }
    }

    /// Initialises the codebook by k-means on the encoder outputs of `images` (in the input
    /// range, encoded in batches of `batch`). Returns the fit, for its figures.
    pub fn init_codebook_kmeans(
        &mut self,
        images: &Tensor,
        batch: i64,
        kmeans: &KMeansConfig,
    ) -> Result<KMeans, ModelError> {
        let d = self.config.code_dim;
        let flat = {
            let _guard = tch::no_grad_guard();
            let parts: Vec<Tensor> = images
                .split(batch, 0)
                .iter()
                .map(|x| {
                    self.encoder
                        .forward(x)
                        .permute([0, 2, 3, 1])
                        .reshape([-1, d])
                        .to_kind(Kind::Float)
                })
                .collect();
            Tensor::cat(&parts, 0).to_device(Device::Cpu).contiguous()
        };
        let rows = flat.size()[0] as usize;
        let values = Vec::<f32>::try_from(flat.flatten(0, -1))?;
        let points = ndarray::Array2::from_shape_vec((rows, d as usize), values)
            .map_err(|e| ModelError::Shape(e.to_string()))?;
        let mut config = kmeans.clone();
        config.k = self.config.codebook_size as usize;
        let fit = KMeans::fit(points.view(), &config)?;
        let centroids =
            Tensor::from_slice(fit.centroids.as_slice().unwrap_or(&[])).view([config.k as i64, d]);
        self.quantizer.set_codebook(&centroids);
        Ok(fit)
    }
}

/// The reconstruction term the optimizer minimises, given the batch MSE already computed from
/// the same tensors (its value is that MSE either way).
pub fn reconstruction_objective(
    reconstruction: &Tensor,
    target: &Tensor,
    batch_mse: &Tensor,
    kind: ReconstructionLoss,
) -> Tensor {
    match kind {
        ReconstructionLoss::Mse => batch_mse.shallow_clone(),
        ReconstructionLoss::PerImageLog => {
            let per_image =
                (reconstruction - target)
                    .square()
                    .flatten(1, -1)
                    .mean_dim(1, false, Kind::Float);
            // Floor at 1e-5 (50 dB) so that one flat image cannot take the whole batch.
            let weights = batch_mse.detach() / per_image.detach().clamp_min(1e-5);
            (per_image * weights).mean(Kind::Float)
        }
    }
}

/// Saves every variable of `vs` (weights and the quantizer's EMA state) as safetensors, through
/// a temporary file renamed into place.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<(), ModelError> {
    let tmp = temp_sibling(path);
    vs.save(&tmp)
        .map_err(|e| ModelError::Io(path.to_path_buf(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::Io(path.to_path_buf(), e.to_string())
    })
}

/// Loads weights saved by [`save_weights`]; every variable of `vs` must be present.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<(), ModelError> {
    if !path.is_file() {
        return Err(ModelError::Io(path.to_path_buf(), "no such file".into()));
    }
    let file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| ModelError::Io(path.to_path_buf(), first_line(&e.to_string())))?
        .into_iter()
        .collect();
    let mismatch = |reason: String| ModelError::Mismatch(path.to_path_buf(), reason);
    let variables = vs.variables();
    // `VarStore::load` ignores tensors the model lacks; a file with extra layers is another model.
    let mut extra: Vec<&String> = file
        .keys()
        .filter(|k| !variables.contains_key(*k))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(mismatch(format!(
            "the file holds {} tensor(s) the model lacks, e.g. {name}",
            extra.len()
        )));
    }
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let _guard = tch::no_grad_guard();
    for name in names {
        let Some(saved) = file.get(name) else {
            return Err(mismatch(format!("the file has no tensor {name}")));
        };
        let mut var = variables[name].shallow_clone();
        if saved.size() != var.size() {
            return Err(mismatch(format!(
                "{name} has shape {:?} in the file, the model needs {:?}",
                saved.size(),
                var.size()
            )));
        }
        if saved.is_floating_point() && saved.isfinite().all().int64_value(&[]) != 1 {
            return Err(ModelError::NonFinite(path.to_path_buf(), name.clone()));
        }
        var.f_copy_(saved)
            .map_err(|e| mismatch(format!("{name}: {}", first_line(&e.to_string()))))?;
    }
    Ok(())
}

/// LibTorch errors carry a C++ backtrace after the first line; users need only the first.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the extension: VarStore::save picks the format from it.
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CodebookUpdate;

    fn tiny(update: CodebookUpdate, downsample: i64) -> VqVaeConfig {
        VqVaeConfig {
            hidden_channels: 8,
            residual_hidden_channels: 4,
            residual_layers: 1,
            downsample,
            codebook_size: 16,
            code_dim: 4,
            codebook_update: update,
            dead_code_steps: 0,
            compute: crate::config::ComputeKind::F32,
            ..VqVaeConfig::default()
        }
    }

    fn images(n: i64) -> Tensor {
        Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu)) - 0.5
    }

    #[test]
    fn per_image_log_loss_is_the_gradient_of_mean_log_mse() {
        tch::manual_seed(0);
        let target = images(4);
        // Very different errors per image, so that the weighting matters.
        let noise = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu))
            * Tensor::from_slice(&[0.01f32, 0.05, 0.1, 0.3]).view([4, 1, 1, 1]);
        let recon = (&target + noise).set_requires_grad(true);

        let objective = |kind| {
            let mse = recon.mse_loss(&target, Reduction::Mean);
            reconstruction_objective(&recon, &target, &mse, kind)
        };
        let plain = objective(ReconstructionLoss::Mse);
        let weighted = objective(ReconstructionLoss::PerImageLog);
        // Same value: the batch MSE, so logs and the commitment balance stay comparable.
        assert!((plain.double_value(&[]) - weighted.double_value(&[])).abs() < 1e-6);

        let grad_of = |loss: Tensor| {
            let g = Tensor::run_backward(&[loss], &[&recon], false, false);
            g[0].shallow_clone()
        };
        let g_weighted = grad_of(weighted);
        let per_image = (&recon - &target)
            .square()
            .flatten(1, -1)
            .mean_dim(1, false, Kind::Float);
        let batch_mse = per_image.mean(Kind::Float).double_value(&[]);
        let g_log = grad_of(per_image.log().mean(Kind::Float)) * batch_mse;
        let err = (&g_weighted - &g_log).abs().max().double_value(&[]);
        let scale = g_log.abs().max().double_value(&[]);
        assert!(
            err < 1e-4 * scale,
            "gradients differ by {err} (scale {scale})"
        );
        // And it is not the plain MSE gradient: the low-error image weighs far more.
        let g_plain = grad_of(objective(ReconstructionLoss::Mse));
        let ratio = |g: &Tensor| {
            g.get(0).abs().mean(Kind::Float).double_value(&[])
                / g.get(3).abs().mean(Kind::Float).double_value(&[])
        };
        assert!(ratio(&g_weighted) > 100.0 * ratio(&g_plain));
    }

    #[test]
    fn shapes_for_both_downsampling_factors() {
        tch::manual_seed(0);
        for (f, side) in [(4, 8), (2, 16)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = VqVae::new(vs.root(), &tiny(CodebookUpdate::default(), f));
            let x = images(2);
            let out = model.forward(&x);
            assert_eq!(out.reconstruction.size(), vec![2, 3, 32, 32]);
            assert_eq!(out.codes().size(), vec![2, side, side]);
            assert_eq!(out.codes().kind(), Kind::Int64);
            let (lo, hi) = (
                out.codes().min().int64_value(&[]),
                out.codes().max().int64_value(&[]),
            );
            assert!(lo >= 0 && hi < 16);
            assert_eq!(model.encode(&x), *out.codes());
            assert_eq!(model.decode(out.codes()).size(), vec![2, 3, 32, 32]);
            // decode(encode(x)) is exactly the forward reconstruction.
            let diff = (model.decode(&model.encode(&x)) - &out.reconstruction)
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "{diff}");
        }
    }

    #[test]
    fn bf16_compute_keeps_f32_weights_outputs_and_gradients() {
        tch::manual_seed(8);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = VqVaeConfig {
            compute: crate::config::ComputeKind::Bf16,
            ..tiny(CodebookUpdate::default(), 4)
        };
        let model = VqVae::new(vs.root(), &cfg);
        let x = images(2);
        let out = model.forward(&x);
        assert_eq!(out.reconstruction.kind(), Kind::Float);
        assert_eq!(out.reconstruction.size(), vec![2, 3, 32, 32]);
        assert!(out.loss.double_value(&[]).is_finite());
        out.loss.backward();
        for (name, var) in vs.variables() {
            assert_eq!(var.kind(), Kind::Float, "{name}");
        }
        let g = vs.variables()["encoder.down0.weight"].grad();
        assert_eq!(g.kind(), Kind::Float);
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Same weights in f32: the bf16 reconstruction is close to it.
        let vs32 = nn::VarStore::new(Device::Cpu);
        let model32 = VqVae::new(vs32.root(), &tiny(CodebookUpdate::default(), 4));
        let mut vs32 = vs32;
        vs32.copy(&vs).unwrap();
        let r32 = model32.decode(&model.encode(&x));
        let r16 = model.decode(&model.encode(&x));
        let err = (r32 - r16).abs().max().double_value(&[]);
        assert!(err < 0.05, "{err}");
    }

    #[test]
    fn nearest_is_the_exact_argmin() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let q = Quantizer::new(vs.root(), &tiny(CodebookUpdate::default(), 4));
        let z = Tensor::randn([200, 4], (Kind::Float, Device::Cpu)) * 0.1;
        let exact = (z.unsqueeze(1) - q.codebook.unsqueeze(0))
            .square()
            .sum_dim_intlist(2, false, Kind::Float)
            .argmin(1, false);
        assert_eq!(q.nearest(&z), exact);
    }

    #[test]
    fn gradients_pass_straight_through_and_ema_codebook_has_none() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &tiny(CodebookUpdate::default(), 4));
        model.forward(&images(2)).loss.backward();
        let vars = vs.variables();
        let enc = vars["encoder.down0.weight"].grad();
        assert!(enc.defined() && enc.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!vars["quantizer.codebook"].requires_grad());

        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &tiny(CodebookUpdate::Loss, 4));
        let out = model.forward(&images(2));
        assert!(out.quantized.codebook_loss.double_value(&[]) > 0.0);
        out.loss.backward();
        let cb = vs.variables()["quantizer.codebook"].grad();
        assert!(cb.defined() && cb.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn rotation_trick_gives_the_code_forward_and_a_rotated_gradient_back() {
        use crate::config::GradientEstimator;
        tch::manual_seed(9);
        for gradient in [
            GradientEstimator::StraightThrough,
            GradientEstimator::Rotation,
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = VqVaeConfig {
                gradient,
                ..tiny(CodebookUpdate::default(), 4)
            };
            let q = Quantizer::new(vs.root(), &cfg);
            let z = (Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu)) * 0.1)
                .set_requires_grad(true);
            let out = q.forward(&z);
            let codes = q.embed(&out.codes);
            // Forward: exactly the chosen codes.
            assert_eq!(out.quantized.detach(), codes);
            // Backward with the codes themselves as the upstream gradient.
            (&out.quantized * &codes).sum(Kind::Float).backward();
            let grad = z.grad();
            let expected = match gradient {
                GradientEstimator::StraightThrough => codes.shallow_clone(),
                // λ·Rᵀ·e = ‖e‖²/‖z‖² · z: R maps z's direction onto e's and is orthogonal.
                GradientEstimator::Rotation => {
                    let e2 = codes.square().sum_dim_intlist(1, true, Kind::Float);
                    let z2 = z.detach().square().sum_dim_intlist(1, true, Kind::Float);
                    z.detach() * e2 / z2
                }
            };
            let err = (&grad - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(err <= 1e-4 * scale, "{gradient:?}: {err} vs {scale}");
        }
    }

    #[test]
    fn ema_with_no_memory_moves_codes_to_their_means() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut q = Quantizer::new(
            vs.root(),
            &tiny(
                CodebookUpdate::Ema {
                    decay: 0.0,
                    epsilon: 1e-9,
                },
                4,
            ),
        );
        let z = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu)) * 0.1;
        let out = q.forward(&z);
        q.update(&out, 1);
        let codes = out.codes.flatten(0, -1);
        for k in 0..16 {
            let mask = codes.eq(k);
            let n = mask.sum(Kind::Int64).int64_value(&[]);
            if n == 0 {
                continue;
            }
            let mean = out
                .flat_inputs
                .index_select(0, &mask.nonzero().flatten(0, -1))
                .mean_dim(0, false, Kind::Float);
            let diff = (q.codebook.get(k) - mean).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "code {k}: {diff}");
        }
        assert!(out.perplexity() >= 1.0 && out.perplexity() <= 16.0);
        assert_eq!(
            out.codes_used(),
            out.counts.gt(0.0).sum(Kind::Int64).int64_value(&[])
        );
    }

    #[test]
    fn dead_codes_restart_from_encoder_outputs() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = tiny(CodebookUpdate::default(), 4);
        cfg.dead_code_steps = 3;
        let mut q = Quantizer::new(vs.root(), &cfg);
        // All inputs equal: one code wins, the others stay unused.
        let z = Tensor::ones([1, 4, 8, 8], (Kind::Float, Device::Cpu)) * 0.3;
        let mut restarted = 0;
        for step in 1..=3 {
            let out = q.forward(&z);
            restarted += q.update(&out, step);
        }
        assert_eq!(
            restarted, 15,
            "all unused codes restart once they are 3 steps old"
        );
        let rows_equal_input = (&q.codebook - 0.3)
            .abs()
            .max_dim(1, false)
            .0
            .lt(1e-5)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(rows_equal_input >= 15, "{rows_equal_input}");
    }

    #[test]
    fn kmeans_initialisation_loads_the_centroids() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = VqVae::new(vs.root(), &tiny(CodebookUpdate::default(), 4));
        let x = images(8);
        let fit = model
            .init_codebook_kmeans(
                &x,
                3,
                &vq_kmeans::KMeansConfig::new(1).seed(1).max_iters(10),
            )
            .unwrap();
        assert_eq!(fit.centroids.dim(), (16, 4));
        let cb = Vec::<f32>::try_from(model.quantizer.codebook.flatten(0, -1)).unwrap();
        assert_eq!(cb, fit.centroids.iter().copied().collect::<Vec<_>>());
        let used = model.forward(&x).quantized.codes_used();
        assert!(
            used >= 12,
            "k-means codebook should be mostly used, got {used}"
        );
    }

    #[test]
    fn weights_round_trip_and_bad_files_are_errors() {
        tch::manual_seed(6);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let cfg = tiny(CodebookUpdate::default(), 4);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &cfg);
        let x = images(2);
        let before = model.forward(&x).reconstruction;
        save_weights(&vs, &path).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        tch::manual_seed(7);
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let model2 = VqVae::new(vs2.root(), &cfg);
        assert!(
            (model2.forward(&x).reconstruction - &before)
                .abs()
                .max()
                .double_value(&[])
                > 0.0
        );
        load_weights(&mut vs2, &path).unwrap();
        assert_eq!(model2.forward(&x).reconstruction, before);

        let err = load_weights(&mut vs2, &dir.path().join("missing.safetensors")).unwrap_err();
        assert!(err.to_string().contains("missing.safetensors"), "{err}");
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(load_weights(&mut vs2, &path).is_err());

        let _guard = tch::no_grad_guard();
        let _ = vs.variables()["decoder.from_code.weight"]
            .get(0)
            .fill_(f64::NAN);
        save_weights(&vs, &path).unwrap();
        let err = load_weights(&mut vs2, &path).unwrap_err();
        assert!(
            err.to_string().contains("decoder.from_code.weight"),
            "{err}"
        );
    }

    #[test]
    fn weights_of_another_shape_are_a_mismatch_not_a_partial_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let cfg = tiny(CodebookUpdate::default(), 4);
        let deeper = VqVaeConfig {
            residual_layers: 2,
            ..cfg.clone()
        };
        let wider = VqVaeConfig {
            codebook_size: 32,
            ..cfg.clone()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        VqVae::new(vs.root(), &deeper);
        save_weights(&vs, &path).unwrap();
        // More layers in the file than in the model: VarStore::load alone would accept it.
        let mut vs1 = nn::VarStore::new(Device::Cpu);
        VqVae::new(vs1.root(), &cfg);
        let err = load_weights(&mut vs1, &path).unwrap_err().to_string();
        assert!(err.contains("the model lacks"), "{err}");
        // Fewer layers in the file than in the model.
        let vs = nn::VarStore::new(Device::Cpu);
        VqVae::new(vs.root(), &cfg);
        save_weights(&vs, &path).unwrap();
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        VqVae::new(vs2.root(), &deeper);
        let err = load_weights(&mut vs2, &path).unwrap_err().to_string();
        assert!(err.contains("has no tensor"), "{err}");
        // Another codebook size: named with both shapes, no LibTorch backtrace.
        let mut vs3 = nn::VarStore::new(Device::Cpu);
        VqVae::new(vs3.root(), &wider);
        let err = load_weights(&mut vs3, &path).unwrap_err().to_string();
        assert!(err.contains("in the file, the model needs"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn config_validation_and_serde_defaults() {
        assert!(VqVaeConfig::default().validate().is_ok());
        let bad = VqVaeConfig {
            downsample: 3,
            ..VqVaeConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("downsample"));
        let partial: VqVaeConfig = serde_json::from_str(r#"{"codebook_size": 1024}"#).unwrap();
        assert_eq!(partial.codebook_size, 1024);
        assert_eq!(partial.code_dim, 64);
        let json = serde_json::to_string(&VqVaeConfig::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<VqVaeConfig>(&json).unwrap(),
            VqVaeConfig::default()
        );
    }
}
