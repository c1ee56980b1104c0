//! `vq-cli eval`: reconstruction figures over a dataset split.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use vq_data::Split;

use super::files::*;
use crate::session::Session;

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// The dataset: a cifar-10-batches-bin folder or an imported image set.
    #[arg(long, default_value = "datasets/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// Evaluate only the first N images [default: the whole split]
    #[arg(long)]
    pub limit: Option<usize>,
    /// Decode with only the first L levels of a residual quantizer's codes (its lower rates)
    /// [default: all]
    #[arg(long)]
    pub levels: Option<i64>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also the FID (and KID) of the reconstructions against the whole split ("rFID"; the
    /// split's statistics are computed once and cached beside the dataset).
    #[arg(long)]
    pub fid: bool,
    #[command(flatten)]
    pub fid_options: super::fid::FidOptions,
}

pub use vq_report::EvalReport;

/// `vq-cli eval`: MSE, PSNR, SSIM, perplexity and codes used over a split.
pub fn run(session: &Session, args: &EvalArgs) -> Result<EvalReport> {
    let tokenizer = session.tokenizer()?;
    let ckpt = tokenizer.checkpoint();
    let images = vq_data::load_split(&args.data, args.split.into(), &Default::default())
        .with_context(|| {
            format!(
                "loading the dataset {} (run `cargo xtask download-cifar`, or pass --data)",
                args.data.display()
            )
        })?;
    let count = args.limit.unwrap_or(images.len()).min(images.len());
    let depth = ckpt.config.code_space().depth;
    if let Some(levels) = args.levels {
        if !(1..=depth).contains(&levels) {
            bail!("--levels {levels}: this model's codes have {depth} level(s)");
        }
    }
    let scope = vq_model::EvalScope {
        count,
        levels: args.levels,
        search: args.search.code_search(),
    };
    check_search(ckpt, scope.search.as_ref())?;
    let bar = if session.json || session.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed} < {eta}]")
                .expect("valid template"),
        )
    };
    let start = Instant::now();
    let e = tokenizer.evaluate(&images, scope, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let (rfid, rkid) = if args.fid {
        let net = args.fid_options.network(session.device)?;
        let split: Split = args.split.into();
        let reference = {
            let bar = session.bar(0, "images of the split (cached afterwards)");
            let stats = vq_fid::split_stats(&net, &args.data, split, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            stats.value
        };
        let bar = session.bar(count as u64, "reconstructions");
        let features = vq_fid::models::reconstruction_features(
            &net,
            &ckpt.model,
            &images,
            scope,
            session.device,
            &mut |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        let ours = vq_fid::FeatureStats::from_features(&features)?;
        let kid = vq_fid::kernel_inception_distance(
            &ours.sample,
            &reference.sample,
            args.fid_options.kid_subsets,
            args.fid_options.kid_subset_size,
            0,
        )?;
        (
            Some(vq_fid::frechet_distance(&ours, &reference)?),
            Some(kid),
        )
    } else {
        (None, None)
    };
    Ok(EvalReport {
        checkpoint: ckpt.origin(),
        model_id: vq_store::hex(&ckpt.model_id),
        split: args.split.into(),
        evaluation: e,
        search: scope.search,
        rfid,
        rkid,
        seconds: start.elapsed().as_secs_f64(),
    })
}
