//! The codes of a dataset split under a frozen VQ-VAE, encoded once and cached in a run folder
//! (`codes/{split}[-mirrored].safetensors`, every level of every grid, with a key file naming
//! the model and the images they came from). The prior trains on them, and the decoder tuning
//! reads its inputs from them instead of running the encoder on every batch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use vq_data::{gather, BatchIndices, Cifar10};
use vq_model::checkpoint::Checkpoint;
use vq_model::images_to_tensor;

/// The code grids and labels of one split.
#[derive(Debug)]
pub struct CodeSet {
    /// `(N, L, h, w)` i64 as encoded (`L` levels); `(N, h, w)` after [`CodeSet::first_level`].
    pub codes: Tensor,
    /// `(N,)` i64.
    pub labels: Tensor,
}

impl CodeSet {
    pub fn len(&self) -> usize {
        self.codes.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The codes of the first level alone, `(N, h, w)`.
    pub fn first_level(self) -> CodeSet {
        CodeSet {
            codes: self.codes.select(1, 0).contiguous(),
            labels: self.labels,
        }
    }
}

/// The training split's codes, and those of its mirror images when training flips: the codes
/// of a batch without the encoder.
#[derive(Debug)]
pub struct TrainCodes {
    pub plain: CodeSet,
    pub mirrored: Option<CodeSet>,
}

impl TrainCodes {
    /// The codes of the batch's images (of their mirror images where the batch flips them).
    pub fn of_batch(&self, batch: &BatchIndices) -> Tensor {
        let indices: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&indices);
        let codes = self.plain.codes.index_select(0, &idx);
        match &self.mirrored {
            Some(mirrored) if batch.flips.iter().any(|&f| f) => {
                let mut shape = vec![1i64; codes.dim()];
                shape[0] = -1;
                let flipped = Tensor::from_slice(&batch.flips).view(shape.as_slice());
                mirrored
                    .codes
                    .index_select(0, &idx)
                    .where_self(&flipped, &codes)
            }
            _ => codes,
        }
    }

    /// The labels of the batch's images.
    pub fn labels_of(&self, batch: &BatchIndices) -> Tensor {
        let indices: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
        self.plain
            .labels
            .index_select(0, &Tensor::from_slice(&indices))
    }
}

/// Encodes `images` (mirrored left-right when `mirrored`) with the VQ-VAE in chunks: every level
/// of its codes, `(N, L, h, w)`.
pub fn encode_split(
    vqvae: &Checkpoint,
    images: &Cifar10,
    mirrored: bool,
    device: Device,
) -> Result<CodeSet> {
    let _guard = tch::no_grad_guard();
    let range = vqvae.config.input_range;
    let mut parts = Vec::new();
    for start in (0..images.len()).step_by(500) {
        let end = (start + 500).min(images.len());
        let batch = BatchIndices {
            indices: (start..end).collect(),
            flips: vec![mirrored; end - start],
        };
        let xs = images_to_tensor(&gather(images.images.view(), &batch, range), device)?;
        parts.push(vqvae.model.encode(&xs).to_device(Device::Cpu));
    }
    let labels: Vec<i64> = images.labels.iter().map(|&l| l as i64).collect();
    Ok(CodeSet {
        codes: Tensor::cat(&parts, 0),
        labels: Tensor::from_slice(&labels),
    })
}

/// What a cached code file must match: the model whose codes they are and the images' bytes.
fn cache_key(vqvae: &Checkpoint, images: &Cifar10) -> String {
    let mut hasher = Sha256::new();
    hasher.update(images.images.as_standard_layout().as_slice().unwrap_or(&[]));
    hasher.update(images.labels.as_standard_layout().as_slice().unwrap_or(&[]));
    let data = vq_store::hex(&hasher.finalize()[..12]);
    format!(
        "model {} images {data} ({})",
        vq_store::hex(&vqvae.codes_id()),
        images.len()
    )
}

/// The codes of `images` (the split called `name`; mirrored when `mirrored`): read from the
/// first of `read_from` (code folders) holding them for the same model and images with every
/// level, else encoded and cached in `write_to`.
pub fn cached_codes(
    write_to: &Path,
    read_from: &[PathBuf],
    name: &str,
    images: &Cifar10,
    mirrored: bool,
    vqvae: &Checkpoint,
    device: Device,
) -> Result<CodeSet> {
    let key = cache_key(vqvae, images);
    let cache = Cache {
        write_to,
        read_from,
        key: &key,
    };
    cache.codes(name, images, mirrored, vqvae, device)
}

/// Where codes are cached and the key they must carry (hashed once for a split and its mirror
/// images).
struct Cache<'a> {
    write_to: &'a Path,
    read_from: &'a [PathBuf],
    key: &'a str,
}

impl Cache<'_> {
    fn codes(
        &self,
        name: &str,
        images: &Cifar10,
        mirrored: bool,
        vqvae: &Checkpoint,
        device: Device,
    ) -> Result<CodeSet> {
        let (write_to, key) = (self.write_to, self.key);
        let name = if mirrored {
            format!("{name}-mirrored")
        } else {
            name.to_string()
        };
        let file = format!("{name}.safetensors");
        let depth = vqvae.config.code_space().depth;
        for dir in std::iter::once(write_to).chain(self.read_from.iter().map(PathBuf::as_path)) {
            let path = dir.join(&file);
            let key_path = path.with_extension("key");
            if !path.is_file() || std::fs::read_to_string(&key_path).ok().as_deref() != Some(key) {
                continue;
            }
            let tensors = vq_store::weights::load_tensors(&path)?;
            let get = |name: &str| {
                tensors
                    .get(name)
                    .map(|t| t.to_kind(Kind::Int64))
                    .with_context(|| format!("{}: no {name} tensor", path.display()))
            };
            let set = CodeSet {
                codes: get("codes")?,
                labels: get("labels")?,
            };
            let size = set.codes.size();
            if size.len() != 4 || size[0] != images.len() as i64 || size[1] != depth {
                anyhow::bail!(
                    "{}: codes of shape {size:?} for {} images of a depth-{depth} model",
                    path.display(),
                    images.len()
                );
            }
            tracing::info!("{name} codes from the cache {}", path.display());
            return Ok(set);
        }
        let started = Instant::now();
        let set = encode_split(vqvae, images, mirrored, device)?;
        tracing::info!(
            "encoded {} {name} images in {:.1} s",
            set.len(),
            started.elapsed().as_secs_f64()
        );
        // Data-parallel: every rank encodes the split, rank 0 alone caches it.
        if !crate::dist::Dist::current()?.is_main() {
            return Ok(set);
        }
        std::fs::create_dir_all(write_to)
            .with_context(|| format!("creating {}", write_to.display()))?;
        let path = write_to.join(&file);
        vq_store::weights::save_tensors(
            &[
                ("codes", &set.codes.to_kind(Kind::Int)),
                ("labels", &set.labels),
            ],
            &path,
        )?;
        vq_data::write_atomic(&path.with_extension("key"), |w| w.write_all(key.as_bytes()))?;
        Ok(set)
    }
}

/// The training split's codes, and those of its mirror images when `flips`: see
/// [`cached_codes`].
pub fn train_codes(
    write_to: &Path,
    read_from: &[PathBuf],
    images: &Cifar10,
    flips: bool,
    vqvae: &Checkpoint,
    device: Device,
) -> Result<TrainCodes> {
    let split = vq_data::Split::Train.to_string();
    let key = cache_key(vqvae, images);
    let cache = Cache {
        write_to,
        read_from,
        key: &key,
    };
    let of = |mirrored| cache.codes(&split, images, mirrored, vqvae, device);
    Ok(TrainCodes {
        plain: of(false)?,
        mirrored: flips.then(|| of(true)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize, seed: usize) -> Cifar10 {
        Cifar10 {
            images: ndarray::Array4::from_shape_fn((n, 3, 32, 32), |(i, c, y, x)| {
                ((i * 37 + c * 91 + y * 7 + x * x * 3 + seed * 11) % 251) as u8
            }),
            labels: ndarray::Array1::from_iter((0..n).map(|i| (i % 10) as u8)),
            class_names: Vec::new(),
        }
    }

    #[test]
    fn a_batchs_codes_are_the_encoders_codes_of_its_images() {
        let _rng = vq_model::seeded(0);
        let vqvae = Checkpoint::bundled(Device::Cpu).unwrap();
        let set = images(6, 0);
        let dir = tempfile::tempdir().unwrap();
        let codes = train_codes(dir.path(), &[], &set, true, &vqvae, Device::Cpu).unwrap();
        let batch = BatchIndices {
            indices: vec![4, 0, 5, 2],
            flips: vec![true, false, false, true],
        };
        let range = vqvae.config.input_range;
        let xs = images_to_tensor(&gather(set.images.view(), &batch, range), Device::Cpu).unwrap();
        let direct = tch::no_grad(|| vqvae.model.encode(&xs));
        let cached = codes.of_batch(&batch);
        assert_eq!(cached.size(), vec![4, 1, 8, 8]);
        assert_eq!(cached, direct);
        // The flips matter: the same batch unflipped has other codes.
        let unflipped = BatchIndices {
            flips: vec![false; 4],
            ..batch.clone()
        };
        assert_ne!(codes.of_batch(&unflipped), direct);
        assert_eq!(
            codes.labels_of(&batch),
            Tensor::from_slice(&[4i64, 0, 5, 2])
        );
        // Without mirrored codes a batch that asks for no flips needs none.
        let plain = train_codes(dir.path(), &[], &set, false, &vqvae, Device::Cpu).unwrap();
        assert!(plain.mirrored.is_none());
        assert_eq!(plain.of_batch(&unflipped), codes.of_batch(&unflipped));
    }

    #[test]
    fn the_cache_serves_only_the_same_model_and_images() {
        let _rng = vq_model::seeded(0);
        let vqvae = Checkpoint::bundled(Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (own, source) = (dir.path().join("own"), dir.path().join("source"));
        let set = images(3, 0);
        let encoded = cached_codes(&source, &[], "train", &set, false, &vqvae, Device::Cpu)
            .unwrap()
            .codes;
        // Marks the source's cached codes, to tell a cache read from an encoding.
        let file = source.join("train.safetensors");
        let marked = encoded.full_like(7);
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        vq_store::weights::save_tensors(&[("codes", &marked), ("labels", &labels)], &file).unwrap();
        let read = |set: &Cifar10| {
            cached_codes(
                &own,
                std::slice::from_ref(&source),
                "train",
                set,
                false,
                &vqvae,
                Device::Cpu,
            )
        };
        assert_eq!(
            read(&set).unwrap().codes,
            marked,
            "read from the source's cache"
        );
        assert!(!own.join("train.safetensors").exists());
        // Other images: encoded afresh and cached in the run's own folder.
        let other = images(3, 1);
        let fresh = encode_split(&vqvae, &other, false, Device::Cpu)
            .unwrap()
            .codes;
        assert_ne!(fresh, encoded);
        assert_eq!(read(&other).unwrap().codes, fresh);
        assert!(own.join("train.safetensors").is_file());
        // The mirrored split is a file of its own.
        let mirrored = cached_codes(&own, &[], "train", &other, true, &vqvae, Device::Cpu);
        assert_ne!(mirrored.unwrap().codes, fresh);
        // A cached file whose key matches but whose codes lack the level axis is refused, named.
        let flat = fresh.select(1, 0);
        let own_file = own.join("train.safetensors");
        vq_store::weights::save_tensors(&[("codes", &flat), ("labels", &labels)], &own_file)
            .unwrap();
        let err = format!("{:#}", read(&other).unwrap_err());
        assert!(
            err.contains("train.safetensors") && err.contains("depth-1"),
            "{err}"
        );
    }

    #[test]
    fn mirrored_codes_are_the_codes_of_the_mirror_images() {
        let vqvae = Checkpoint::bundled(Device::Cpu).unwrap();
        let images = ndarray::Array4::from_shape_fn((3, 3, 32, 32), |(n, c, y, x)| {
            ((n * 37 + c * 91 + y * 7 + x * x * 3) % 251) as u8
        });
        let mirror = images.slice(ndarray::s![.., .., .., ..;-1]).to_owned();
        let set = |images| Cifar10 {
            images,
            labels: ndarray::Array1::from(vec![0u8, 1, 2]),
            class_names: Vec::new(),
        };
        let flipped = encode_split(&vqvae, &set(images.clone()), true, Device::Cpu).unwrap();
        let of_mirror = encode_split(&vqvae, &set(mirror), false, Device::Cpu).unwrap();
        let plain = encode_split(&vqvae, &set(images), false, Device::Cpu).unwrap();
        assert_eq!(flipped.codes, of_mirror.codes);
        assert_ne!(flipped.codes, plain.codes);
        assert_eq!(flipped.codes.size(), vec![3, 1, 8, 8]);
    }
}
