//! Entropy coding of CIFAR-10 test codes, the portable coder (format version 3) side by side with
//! the LibTorch coder of format version 2: `cargo bench -p vq-prior --bench entropy -- --data
//! datasets/cifar-10-batches-bin [--images N] [--threads T]`. The codes are the bundled VQ-VAE's
//! of the first N test images, each coded with the class the encoder picks (`best_class`) and
//! the bundled prior. Prints bytes per image (payload, and whole files of each version: packed
//! v1, entropy-coded v2, entropy-coded v3), bits per code, the seconds an image of each coder,
//! and checks that every portable payload decodes to its codes; then the portable coder's time
//! on a photo-sized grid with the widest SIMD and with SSE2 only.

use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vq_codes::{CodeFile, Colour, EntropyCoding};
use vq_data::Split;
use vq_model::checkpoint::Checkpoint;
use vq_prior::entropy::{self, Grid};
use vq_prior::PriorCheckpoint;
use vq_store::Source;

mod common;
use common::arg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data =
        PathBuf::from(arg("--data").unwrap_or_else(|| "datasets/cifar-10-batches-bin".into()));
    let images: usize = arg("--images").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let threads: usize = arg("--threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let ckpt = Checkpoint::bundled(Device::Cpu)?;
    let prior = PriorCheckpoint::open(Source::Bundled(&vq_prior::BUNDLED), Device::Cpu)?;
    let portable = prior
        .model
        .portable()
        .ok_or("the bundled prior is a transformer")?;
    let test = vq_data::Cifar10::load(&data, Split::Test)?;
    let images = images.min(test.len());
    let range = ckpt.config.input_range;
    let pixels: Vec<f32> = test
        .images
        .iter()
        .take(images * 3 * 32 * 32)
        .map(|&b| range.from_byte(b))
        .collect();
    let xs = Tensor::from_slice(&pixels).view([images as i64, 3, 32, 32]);
    let codes = {
        let _g = tch::no_grad_guard();
        let chunks: Vec<Tensor> = xs
            .split(500, 0)
            .iter()
            .map(|x| ckpt.model.encode(x))
            .collect();
        Tensor::cat(&chunks, 0).to_kind(Kind::Int64)
    };
    let all = Vec::<i64>::try_from(codes.flatten(0, -1))?;
    let (mut legacy_s, mut portable_s, mut class_s) = (0.0, 0.0, 0.0);
    let (mut legacy_bytes, mut portable_bytes) = (0usize, 0usize);
    let (mut v1_file, mut v2_file, mut v3_file) = (0usize, 0usize, 0usize);
    let mut file = CodeFile {
        version: 1,
        model_id: ckpt.codes_id().to_vec(),
        colour: Colour::Rgb,
        downsample: 4,
        width: 32,
        height: 32,
        grid_width: 8,
        grid_height: 8,
        vocabularies: vec![512],
        codes: Vec::new(),
        entropy: None,
    };
    for (done, image) in all.chunks(64).enumerate() {
        if done % 1000 == 0 {
            eprintln!("{done} of {images} images coded");
        }
        let grid = Grid {
            width: 8,
            height: 8,
            codes: image.iter().map(|&c| c as u32).collect(),
        };
        let start = Instant::now();
        let class = entropy::best_class(prior.model.as_ref(), &grid);
        class_s += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let legacy = entropy::encode(prior.model.as_ref(), &grid, class);
        legacy_s += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let coded = entropy::encode_portable(&portable, &grid, class);
        portable_s += start.elapsed().as_secs_f64();
        let (back, back_class) = entropy::decode_portable(&portable, &coded, 8, 8);
        assert_eq!(
            (&back, back_class),
            (&grid, class),
            "a portable payload decodes"
        );
        legacy_bytes += legacy.len();
        portable_bytes += coded.len();

        file.version = 1;
        file.model_id = ckpt.codes_id().to_vec();
        file.codes = grid.codes.clone();
        file.entropy = None;
        v1_file += file.to_bytes()?.len();
        file.version = 2;
        file.entropy = Some(EntropyCoding {
            prior_id: prior.model_id[..8].to_vec(),
            class: class.map(|c| c as u8),
            codes_crc: vq_codes::codes_checksum(&file.codes),
            payload: legacy,
        });
        v2_file += file.to_bytes()?.len();
        file.version = 3;
        file.model_id.clear();
        file.entropy = Some(EntropyCoding {
            prior_id: prior.model_id[..vq_codes::v3::PRIOR_ID_LEN].to_vec(),
            class: None,
            codes_crc: vq_codes::v3::codes_check(&file.codes),
            payload: coded,
        });
        v3_file += file.to_bytes()?.len();
    }
    // A photo's grid (768 × 512 pixels: 192 × 128 codes, 384 blocks) of the test images'
    // codes, coded and decoded with the widest SIMD this CPU has and with the instructions
    // every x86-64 CPU has (SSE2): what a CPU without AVX2 would take, at most.
    let photo = Grid {
        width: 192,
        height: 128,
        codes: (0..192 * 128).map(|i| all[i % all.len()] as u32).collect(),
    };
    let mut photo_s = Vec::new();
    for (name, pass) in [
        ("widest", portable.clone()),
        ("SSE2", portable.baseline_only()),
    ] {
        let start = Instant::now();
        let coded = entropy::encode_portable(&pass, &photo, None);
        let encode = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let (back, _) = entropy::decode_portable(&pass, &coded, 192, 128);
        let decode = start.elapsed().as_secs_f64();
        assert_eq!(back, photo, "the photo's grid decodes");
        photo_s.push((name, encode, decode));
    }
    let per = |x: usize| x as f64 / images as f64;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("CIFAR-10 test images 0..{images}, bundled model and prior, {threads} threads, {cpu}");
    println!(
        "payload bytes an image: LibTorch coder (v2) {:.2}, portable coder (v3) {:.2} ({:+.2}%)",
        per(legacy_bytes),
        per(portable_bytes),
        100.0 * (portable_bytes as f64 / legacy_bytes as f64 - 1.0)
    );
    println!(
        "bits a code (payload): v2 {:.3}, v3 {:.3}",
        per(legacy_bytes) * 8.0 / 64.0,
        per(portable_bytes) * 8.0 / 64.0
    );
    println!(
        "whole files, bytes an image: packed v1 {:.1}, entropy-coded v2 {:.1}, entropy-coded v3 {:.1}",
        per(v1_file),
        per(v2_file),
        per(v3_file)
    );
    println!(
        "seconds an image: class choice {:.4}, LibTorch coder {:.4}, portable coder {:.4} (ratio {:.2})",
        class_s / images as f64,
        legacy_s / images as f64,
        portable_s / images as f64,
        portable_s / legacy_s
    );
    for (name, encode, decode) in &photo_s {
        println!(
            "a 192 × 128 grid (a 768 × 512 photo), portable coder only, {name}: encode {encode:.2} s, decode {decode:.2} s"
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "entropy",
            "images": images,
            "threads": threads,
            "cpu": cpu,
            "payload_bytes": {"v2": per(legacy_bytes), "v3": per(portable_bytes)},
            "file_bytes": {"v1_packed": per(v1_file), "v2_entropy": per(v2_file), "v3_entropy": per(v3_file)},
            "seconds_per_image": {"class": class_s / images as f64, "v2": legacy_s / images as f64, "v3": portable_s / images as f64},
            "photo_grid_seconds": photo_s.iter().map(|(n, e, d)| serde_json::json!({"simd": n, "encode": e, "decode": d})).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
