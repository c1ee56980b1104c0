//! `vq-cli fid A B`: the Fréchet inception distance (and KID) between two sets of images, each
//! a folder of images, a dataset split, a statistics file, or a prior's samples.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::Device;
use vq_data::Split;
use vq_fid::{FeatureStats, InceptionV3};

use crate::prior::open_prior;
use crate::session::Session;

/// The network's settings shared by every command that measures FID.
#[derive(Debug, Clone, clap::Args)]
pub struct FidOptions {
    /// KID: number of random subsets.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// KID: images per subset (fewer when a side has fewer).
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// The Inception network [default: VQVAE_INCEPTION, else `libtorch/fid/default_1.pt` in the
    /// per-user data folder, where `cargo xtask setup` installs it]
    #[arg(long)]
    pub inception: Option<PathBuf>,
}

impl FidOptions {
    pub fn network(&self, device: Device) -> Result<InceptionV3> {
        let path = self
            .inception
            .clone()
            .unwrap_or_else(vq_fid::default_weights);
        Ok(InceptionV3::load(&path, device)?)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FidArgs {
    /// The images to measure: a folder of images (any size), a dataset split
    /// (`cifar10:train`, `cifar10:test`, or `DATASET_DIR:train|test` for an imported image
    /// set), the VQ-VAE's reconstructions of a split (`recon:cifar10:test`), or a statistics
    /// file (`.fidstats`). Not with --samples [default: with --samples, the prior's samples;
    /// else required]
    pub a: Option<String>,
    /// What they are measured against, in the same forms [default: with --samples,
    /// cifar10:train; else required]
    pub b: Option<String>,
    /// Measure N images sampled from the prior (class-balanced) instead of A; 50000 is the
    /// field's protocol, 10000 a quicker one [default: none, measure A]
    #[arg(long, value_name = "N")]
    pub samples: Option<i64>,
    /// The prior for --samples [default: the bundled prior].
    #[arg(long)]
    pub prior: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: crate::sampling::SamplingArgs,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --samples, also report FID and KID of the first N samples (each below --samples;
    /// with N a multiple of 500 they are the very samples `--samples N` draws with the same
    /// seed and thread count), so that 10,000 and 50,000 come from one run [default: 10000
    /// when --samples is above it]
    #[arg(long, value_name = "N", value_delimiter = ',')]
    pub report_at: Option<Vec<i64>>,
    /// With --samples, keep each finished 500 samples' features in this folder and resume from
    /// those already there: a stopped 50,000-sample run loses at most 500 samples. The folder
    /// names the sampling it holds (prior, decoder, options, seed, threads) and is refused for
    /// another [default: none, nothing kept]
    #[arg(long, value_name = "DIR")]
    pub parts: Option<PathBuf>,
    /// The CIFAR-10 folder that `cifar10:` names.
    #[arg(long, default_value = "datasets/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// Also write the statistics of the first set to this file (reusable as a side later)
    /// [default: none]
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    #[command(flatten)]
    pub options: FidOptions,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum FidSource {
    Folder(PathBuf),
    Split {
        dir: PathBuf,
        split: Split,
    },
    /// The VQ-VAE's reconstructions of a split (`recon:cifar10:test`).
    Reconstructions {
        dir: PathBuf,
        split: Split,
    },
    Stats(PathBuf),
    Samples(i64),
}

impl FidSource {
    /// Reads `text` as a folder, a `NAME:split`, or a statistics file.
    pub fn parse(text: &str, cifar: &Path) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("recon:") {
            return match Self::parse(rest, cifar)? {
                FidSource::Split { dir, split } => Ok(FidSource::Reconstructions { dir, split }),
                _ => bail!("{text}: recon: takes a dataset split, such as recon:cifar10:test"),
            };
        }
        if let Some((name, split)) = text.rsplit_once(':') {
            let split = match split {
                "train" => Some(Split::Train),
                "test" => Some(Split::Test),
                _ => None,
            };
            if let Some(split) = split {
                let dir = if name == "cifar10" {
                    cifar.to_path_buf()
                } else {
                    PathBuf::from(name)
                };
                return Ok(FidSource::Split { dir, split });
            }
        }
        let path = PathBuf::from(text);
        if path.is_dir() {
            Ok(FidSource::Folder(path))
        } else if path.is_file() {
            Ok(FidSource::Stats(path))
        } else {
            bail!("{text}: no such folder or statistics file (or write a dataset split as cifar10:test or DIR:train)")
        }
    }

    fn describe(&self) -> String {
        match self {
            FidSource::Folder(p) => format!("{} (folder)", p.display()),
            FidSource::Split { dir, split } => format!("{}:{split}", dir.display()),
            FidSource::Reconstructions { dir, split } => {
                format!("reconstructions of {}:{split}", dir.display())
            }
            FidSource::Stats(p) => format!("{} (statistics)", p.display()),
            FidSource::Samples(n) => format!("{n} samples of the prior"),
        }
    }
}

pub use vq_report::{FidReport, FidSide, FirstSamples};

/// The statistics of one side and what it was; `through` counts the images put through the
/// network.
fn side_stats(
    session: &Session,
    args: &FidArgs,
    net: &InceptionV3,
    source: &FidSource,
    through: &mut i64,
) -> Result<(FeatureStats, String, Vec<FeatureStats>)> {
    let mut description = source.describe();
    let mut first = Vec::new();
    let stats = match source {
        FidSource::Stats(path) => FeatureStats::load(path)?,
        FidSource::Split { dir, split } => {
            let bar = session.bar(0, &format!("{}:{split}", dir.display()));
            let stats = vq_fid::split_stats(net, dir, *split, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("the statistics of {}:{split}", dir.display()))?;
            *through += stats.computed as i64;
            bar.finish_and_clear();
            stats.value
        }
        FidSource::Reconstructions { dir, split } => {
            let tokenizer = session.tokenizer()?;
            let set = vq_data::load_split(dir, *split, &Default::default())
                .with_context(|| format!("loading {}:{split}", dir.display()))?;
            let bar = session.bar(set.len() as u64, "reconstructions");
            let features = vq_fid::models::reconstruction_features(
                net,
                &tokenizer.checkpoint().model,
                &set,
                vq_model::EvalScope::first(set.len()),
                session.device,
                &mut |done| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            *through += set.len() as i64;
            FeatureStats::from_features(&features)?
        }
        FidSource::Folder(dir) => {
            let files = crate::collect_images(std::slice::from_ref(dir))?;
            if files.len() < 2 {
                bail!(
                    "{}: FID needs at least 2 images, found {}",
                    dir.display(),
                    files.len()
                );
            }
            let bar = session.bar(files.len() as u64, &dir.display().to_string());
            let features =
                vq_fid::files_features(net, &files, &mut |done| bar.set_position(done as u64))?;
            bar.finish_and_clear();
            *through += files.len() as i64;
            FeatureStats::from_features(&features)?
        }
        FidSource::Samples(n) => {
            let tokenizer = args.sampling.open_decoder(session)?;
            description = format!(
                "{description}, decoded by {}",
                tokenizer.decoding_checkpoint().origin()
            );
            let mut prior = open_prior(session, args.prior.as_deref(), &tokenizer)?;
            let compute = args.sampling.set_compute(&mut prior, session.device)?;
            if compute != "f32" {
                description = format!("{description}, sampled in {compute}");
            }
            let options = args.sampling.options(&prior)?;
            description = format!("{description}, {}", crate::sampling::describe(&options));
            if args.sampling.unconditional {
                description = format!("{description}, unconditional (the null class)");
            }
            let parts = match &args.parts {
                Some(dir) => {
                    let identity = samples_identity(
                        args,
                        &prior,
                        &tokenizer,
                        compute,
                        &options,
                        session.device,
                    );
                    vq_fid::claim_parts(dir, &identity)?;
                    Some(dir.as_path())
                }
                None => None,
            };
            let bar = session.bar(*n as u64, "samples");
            let sample_options = options;
            // Drawn and decoded as `vq-cli sample` does: in streams on a CPU.
            let features = vq_fid::models::sample_features_with(
                net,
                vq_fid::models::Sampling {
                    n: *n,
                    options,
                    seed: args.seed,
                    unconditional: args.sampling.unconditional,
                },
                vq_fid::models::Generator {
                    classes: prior.checkpoint().model.provenance().classes,
                    range: tokenizer.decoding_checkpoint().model.config.input_range,
                    sample: &mut |count, labels| prior.sample_codes(count, labels, &sample_options),
                    decode: &|codes| tokenizer.decode_tensor(codes),
                },
                parts,
                &|done| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            *through += features.computed as i64;
            let features = features.value;
            // The first samples' statistics now: the features (410 MB at 50,000) go before the
            // other side is computed.
            for &count in &first_counts(args)? {
                first.push(FeatureStats::from_features(&features.narrow(0, 0, count))?);
            }
            FeatureStats::from_features(&features)?
        }
    };
    Ok((stats, description, first))
}

/// Everything the features of `--samples` depend on, for `--parts`: the prior's and the
/// decoder's weights (by id), how codes are drawn, the seed, the streams (LibTorch threads) and
/// the device.
fn samples_identity(
    args: &FidArgs,
    prior: &vqvae::Prior,
    tokenizer: &vqvae::Tokenizer,
    compute: &str,
    options: &vq_prior::SampleOptions,
    device: Device,
) -> String {
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "vqvae-rs sample features v1\nprior {}\ndecoder {}\noptions {options:?}\n\
         compute {compute}\nunconditional {}\nseed {}\nthreads {}\nchunk {}\ndevice {:?}\n",
        hex(&prior.checkpoint().model_id),
        hex(&tokenizer.decoding_checkpoint().model_id),
        args.sampling.unconditional,
        args.seed,
        tch::get_num_threads(),
        vq_fid::models::SAMPLE_CHUNK,
        device,
    )
}

/// The counts of first samples to report beside all of them (`--report-at`), checked.
fn first_counts(args: &FidArgs) -> Result<Vec<i64>> {
    let Some(n) = args.samples else {
        if args.report_at.is_some() || args.parts.is_some() {
            bail!("--report-at and --parts go with --samples N");
        }
        return Ok(Vec::new());
    };
    let counts = match &args.report_at {
        Some(counts) => counts.clone(),
        None if n > 10_000 => vec![10_000],
        None => Vec::new(),
    };
    if let Some(bad) = counts.iter().find(|&&c| !(2..n).contains(&c)) {
        bail!(
            "--report-at {bad}: give counts of 2 to {} (below --samples {n})",
            n - 1
        );
    }
    Ok(counts)
}

/// FID and KID between two sets of images.
pub fn run(session: &Session, args: &FidArgs) -> Result<FidReport> {
    let start = Instant::now();
    let (a, b) = match (args.samples, &args.a, &args.b) {
        (Some(n), a, b) => {
            if !(2..=1_000_000).contains(&n) {
                bail!("--samples must be 2 to 1,000,000, not {n}");
            }
            // With --samples, a single position names what they are measured against.
            let against = match (a, b) {
                (Some(_), Some(_)) => {
                    bail!("with --samples, give at most one set to compare against")
                }
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (None, None) => "cifar10:train".to_string(),
            };
            (
                FidSource::Samples(n),
                FidSource::parse(&against, &args.data)?,
            )
        }
        (None, Some(a), Some(b)) => (
            FidSource::parse(a, &args.data)?,
            FidSource::parse(b, &args.data)?,
        ),
        (None, _, _) => bail!("give two sets of images (A and B), or --samples N"),
    };
    first_counts(args)?;
    let net = args.options.network(session.device)?;
    let mut through = 0;
    let extraction = Instant::now();
    let (sa, a_description, a_first) = side_stats(session, args, &net, &a, &mut through)?;
    if let Some(path) = &args.save_stats {
        sa.save(path)?;
    }
    let (sb, b_description, _) = side_stats(session, args, &net, &b, &mut through)?;
    let extraction = extraction.elapsed().as_secs_f64();
    let fid = vq_fid::frechet_distance(&sa, &sb)?;
    let kid_of = |a: &FeatureStats| {
        vq_fid::kernel_inception_distance(
            &a.sample,
            &sb.sample,
            args.options.kid_subsets,
            args.options.kid_subset_size,
            0,
        )
    };
    let kid = kid_of(&sa)?;
    let mut first = Vec::new();
    for stats in &a_first {
        first.push(FirstSamples {
            images: stats.count,
            fid: vq_fid::frechet_distance(stats, &sb)?,
            kid: kid_of(stats)?,
        });
    }
    Ok(FidReport {
        fid,
        kid,
        first,
        a: FidSide {
            source: a_description,
            images: sa.count,
        },
        b: FidSide {
            source: b_description,
            images: sb.count,
        },
        seconds: start.elapsed().as_secs_f64(),
        images_per_second: through as f64 / extraction.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse_as_splits_folders_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let cifar = Path::new("datasets/cifar-10-batches-bin");
        assert_eq!(
            FidSource::parse("cifar10:test", cifar).unwrap(),
            FidSource::Split {
                dir: cifar.to_path_buf(),
                split: Split::Test
            }
        );
        assert_eq!(
            FidSource::parse("datasets/photos:train", cifar).unwrap(),
            FidSource::Split {
                dir: PathBuf::from("datasets/photos"),
                split: Split::Train
            }
        );
        let folder = dir.path().to_str().unwrap();
        assert_eq!(
            FidSource::parse(folder, cifar).unwrap(),
            FidSource::Folder(dir.path().to_path_buf())
        );
        let file = dir.path().join("a.fidstats");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            FidSource::parse(file.to_str().unwrap(), cifar).unwrap(),
            FidSource::Stats(file.clone())
        );
        assert_eq!(
            FidSource::parse("recon:cifar10:test", cifar).unwrap(),
            FidSource::Reconstructions {
                dir: cifar.to_path_buf(),
                split: Split::Test
            }
        );
        assert!(FidSource::parse(&format!("recon:{folder}"), cifar).is_err());
        let err = FidSource::parse("nowhere", cifar).unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
    }
}
