//! `vq-cli reconstruct`: images encoded and decoded, with their PSNR and SSIM.

use std::fmt;
use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use super::files::*;
use crate::codec::{self, CodeGrid};
use crate::session::Session;

/// `vq-cli reconstruct`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Which bundled decoder draws the pixels: `plain` (the bundled model's own, what `.vqz`
    /// files decode to) or `sharp` (models/cifar10-sharp, trained adversarially for the same
    /// codes). Not with --checkpoint [default: plain]
    #[arg(long, value_enum)]
    pub decoder: Option<crate::sampling::DecoderChoice>,
}

/// One reconstructed image.
#[derive(Debug, Serialize)]
pub struct ReconstructReport {
    #[serde(flatten)]
    pub file: FileHead,
    pub grid_width: u32,
    pub grid_height: u32,
    pub bits_per_pixel: f64,
    pub psnr: f64,
    /// `None` under 11 pixels a side (SSIM's window).
    pub ssim: Option<f64>,
    pub had_alpha: bool,
    pub seconds: f64,
}

impl fmt::Display for ReconstructReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}×{} codes, {:.4} bits/pixel, PSNR {:.2} dB, SSIM {}{}, {:.2} s",
            self.file,
            self.grid_width,
            self.grid_height,
            self.bits_per_pixel,
            self.psnr,
            self.ssim
                .map(|s| format!("{s:.4}"))
                .unwrap_or_else(|| "n/a (under 11 px)".into()),
            if self.had_alpha {
                " (transparency shown over white)"
            } else {
                ""
            },
            self.seconds
        )
    }
}

/// `vq-cli reconstruct`: encode and decode each image, write `NAME.recon.png`.
pub fn run(session: &Session, args: &ReconstructArgs) -> Result<FilesReport> {
    let tokenizer = crate::sampling::open_decoder(
        session,
        args.decoder,
        crate::sampling::DecoderChoice::Plain,
    )?;
    let ckpt = tokenizer.checkpoint();
    let search = args.search.code_search();
    check_search(ckpt, search.as_ref())?;
    let codec = tokenizer.codec();
    let decoding = tokenizer.decoding_codec();
    let bits_per_code = ckpt.config.code_space().bits_per_code() as f64;
    each_input_batched(session, &args.files, "recon.png", BATCH_INPUTS, |jobs| {
        let start = Instant::now();
        let images = load_images(jobs);
        let grids = match encode_images(
            &codec,
            &images,
            search.as_ref(),
            None,
            !(session.quiet || session.json),
        ) {
            Ok(grids) => grids,
            Err(e) => return all_failed(jobs, &e),
        };
        let sizes: Vec<Option<(u32, u32)>> = images
            .iter()
            .map(|i| i.as_ref().ok().map(|i| i.rgb.dimensions()))
            .collect();
        let mut recons: Vec<Option<image::RgbImage>> = vec![None; jobs.len()];
        let mut figures: Vec<(f64, Option<f64>)> = vec![(0.0, None); jobs.len()];
        for group in by_size(&sizes) {
            let (w, h) = sizes[group[0]].expect("grouped, so sized");
            let gs: Vec<&CodeGrid> = group
                .iter()
                .map(|&i| grids[i].as_ref().expect("loaded, so encoded"))
                .collect();
            let decoded = decoding.decode_batch(&gs, w, h);
            // Compared as written: a grayscale input is written back as grayscale.
            let (originals, outputs): (Vec<_>, Vec<_>) = group
                .iter()
                .zip(&decoded)
                .map(|(&i, recon)| {
                    let colour = images[i].as_ref().expect("sized, so loaded").colour;
                    let original = &images[i].as_ref().expect("sized, so loaded").rgb;
                    (
                        codec::as_written(original, colour),
                        codec::as_written(recon, colour),
                    )
                })
                .unzip();
            let group_figures = crate::compare_batch(
                &originals.iter().collect::<Vec<_>>(),
                &outputs.iter().collect::<Vec<_>>(),
            );
            for ((&i, recon), f) in group.iter().zip(decoded).zip(group_figures) {
                recons[i] = Some(recon);
                figures[i] = f;
            }
        }
        // PNG encoding and writing, on all cores.
        let written: Vec<Result<()>> = jobs
            .par_iter()
            .zip(&images)
            .zip(&recons)
            .map(|((job, img), recon)| match (img, recon) {
                (Ok(img), Some(recon)) => {
                    write_file(&job.dest, &codec::encode_png(recon, img.colour)?)
                }
                _ => Ok(()),
            })
            .collect();
        // The batch's time shared out over its images.
        let seconds = start.elapsed().as_secs_f64() / jobs.len().max(1) as f64;
        images
            .into_iter()
            .zip(grids)
            .zip(figures)
            .zip(written)
            .zip(jobs)
            .map(|((((img, grid), (psnr, ssim)), written), job)| {
                let img = img?;
                written?;
                let grid = grid.expect("loaded, so encoded");
                let (w, h) = img.rgb.dimensions();
                let file = FileHead::new(job.input, &job.dest, w, h);
                Ok(ReconstructReport {
                    bits_per_pixel: grid.codes.len() as f64 * bits_per_code / file.pixels(),
                    file,
                    grid_width: grid.width,
                    grid_height: grid.height,
                    psnr,
                    ssim,
                    had_alpha: img.had_alpha,
                    seconds,
                })
            })
            .collect()
    })
}
