use super::*;
use crate::files::*;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};
use vq_codes::Colour;
use vq_model::{VqVae, VqVaeConfig};

fn tiny_model(vs: &nn::VarStore) -> VqVae {
    let cfg: VqVaeConfig = vq_store::parse_config(
        r#"{"hidden_channels": 8, "residual": {"hidden_channels": 4, "layers": 1},
            "quantizer": {"kind": "vq", "codebook_size": 16, "code_dim": 4}, "compute": "f32"}"#,
    )
    .unwrap();
    VqVae::new(vs.root(), &cfg)
}

/// A smooth colourful test picture (so that codes vary across it).
fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
        image::Rgb([
            v(x as f32 * 0.21),
            v(y as f32 * 0.17 + 1.0),
            v((x + y) as f32 * 0.09 + 2.0),
        ])
    })
}

/// A codec that runs the whole picture in one pass (no tiles).
fn one_pass(model: &VqVae) -> Codec<'_> {
    Codec {
        model,
        device: Device::Cpu,
        tiling: Tiling {
            tile: 1000,
            halo: 0,
        },
    }
}

/// The largest difference of any channel of any pixel.
fn worst_difference(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

/// A decoder of its own shape reaches further than the default halo; `Tiling::for_model`
/// widens the halo so that tiled decoding still equals one pass.
#[test]
fn a_deeper_decoder_gets_a_wider_halo_and_tiles_equal_one_pass() {
    let _rng = vq_model::seeded(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg: VqVaeConfig = vq_store::parse_config(
        r#"{"hidden_channels": 8, "residual": {"hidden_channels": 4, "layers": 1},
            "quantizer": {"kind": "vq", "codebook_size": 16, "code_dim": 4}, "compute": "f32",
            "decoder": {"stages": [{"channels": 8, "blocks": 4}, {"channels": 4, "blocks": 1},
                                   {"channels": 4, "blocks": 1}]}}"#,
    )
    .unwrap();
    let model = VqVae::new(vs.root(), &cfg);
    assert_eq!(Tiling::for_model(&tiny_model(&vs)), Tiling::default());
    let tiling = Tiling::for_model(&model);
    assert!(tiling.halo > Tiling::default().halo, "{tiling:?}");
    let whole = one_pass(&model);
    let tiled = Codec {
        tiling: Tiling { tile: 4, ..tiling },
        ..whole
    };
    let img = picture(75, 53);
    let grid = whole.encode(&img);
    let (d1, d2) = (whole.decode(&grid, 75, 53), tiled.decode(&grid, 75, 53));
    let worst = worst_difference(&d1, &d2);
    assert!(worst <= 1, "tiled decoding differs by {worst}");
}

#[test]
fn tiles_with_a_wide_halo_equal_one_pass() {
    let _rng = vq_model::seeded(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_model(&vs);
    let img = picture(75, 53); // 19 × 14 codes, neither a multiple of 4 pixels
    let whole = one_pass(&model);
    let tiled = Codec {
        tiling: Tiling { tile: 4, halo: 6 },
        ..whole
    };
    let g1 = whole.encode(&img);
    let g2 = tiled.encode(&img);
    assert_eq!((g1.width, g1.height), (19, 14));
    let same = g1
        .codes
        .iter()
        .zip(&g2.codes)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same as f64 >= 0.99 * g1.codes.len() as f64,
        "{same} of {} codes agree",
        g1.codes.len()
    );
    let (d1, d2) = (whole.decode(&g1, 75, 53), tiled.decode(&g1, 75, 53));
    assert_eq!(d1.dimensions(), (75, 53));
    let worst = worst_difference(&d1, &d2);
    assert!(worst <= 1, "tiled decoding differs by {worst}");
    // Without a halo the tile borders show.
    let no_halo = Codec {
        tiling: Tiling { tile: 4, halo: 0 },
        ..whole
    };
    assert_ne!(no_halo.decode(&g1, 75, 53), d1);
}

#[test]
fn an_image_has_the_same_codes_and_pixels_alone_and_among_others() {
    let ckpt = Checkpoint::bundled(Device::Cpu).unwrap();
    let codec = Codec {
        model: &ckpt.model,
        device: Device::Cpu,
        tiling: Tiling::default(),
    };
    let others: Vec<RgbImage> = (0..70)
        .map(|i| {
            RgbImage::from_fn(32, 32, |x, y| {
                let v = |a: f32| ((a.sin() * 0.5 + 0.5) * 255.0) as u8;
                let t = i as f32 * 0.37;
                image::Rgb([
                    v(x as f32 * 0.3 + t),
                    v(y as f32 * 0.2 - t),
                    v((x * y) as f32 * 0.01 + t),
                ])
            })
        })
        .collect();
    let img = picture(32, 32);
    let alone = codec.encode(&img);
    let alone_pixels = codec.decode(&alone, 32, 32);
    // At the start, in the middle, and in a second, partly filled pass.
    for at in [0, 5, 66] {
        let mut batch: Vec<&RgbImage> = others.iter().collect();
        batch.insert(at, &img);
        let grids = codec.encode_batch(&batch);
        assert_eq!(grids.len(), 71);
        assert_eq!(grids[at], alone, "codes of the image at {at}");
        let refs: Vec<&CodeGrid> = grids.iter().collect();
        let decoded = codec.decode_batch(&refs, 32, 32);
        assert_eq!(decoded[at], alone_pixels, "pixels of the image at {at}");
    }
}

#[test]
fn fixed_passes_make_the_encoder_output_independent_of_the_other_images() {
    let _rng = vq_model::seeded(3);
    // Bit for bit, so that not even a near-tie between two codes can go another way.
    let ckpt = Checkpoint::bundled(Device::Cpu).unwrap();
    tch::manual_seed(3);
    let windows: Vec<Tensor> = (0..70)
        .map(|_| Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) - 0.5)
        .collect();
    let per_pass = codec::per_pass(32 * 32);
    let encode = |xs: &Tensor| {
        let _guard = tch::no_grad_guard();
        ckpt.model.encode_continuous(xs)
    };
    let alone = codec::in_fixed_passes(&windows[3..4], per_pass, encode);
    let forward: Vec<Tensor> = windows.iter().map(Tensor::shallow_clone).collect();
    let backward: Vec<Tensor> = windows.iter().rev().map(Tensor::shallow_clone).collect();
    // Image 3 in the first pass, then (reversed) in the second, partly filled one.
    for (order, at) in [(forward, 3), (backward, 66)] {
        let all = codec::in_fixed_passes(&order, per_pass, encode);
        assert!(
            all.narrow(0, at, 1).equal(&alone),
            "image 3 at position {at}"
        );
    }
}

#[test]
fn a_small_image_is_exactly_the_models_forward_pass() {
    let _rng = vq_model::seeded(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_model(&vs);
    let img = picture(32, 32);
    let codec = Codec {
        model: &model,
        device: Device::Cpu,
        tiling: Tiling::default(),
    };
    let grid = codec.encode(&img);
    let recon = codec.decode(&grid, 32, 32);
    let range = model.config.input_range;
    let xs = Tensor::from_slice(
        &img.as_raw()
            .iter()
            .map(|&b| range.from_byte(b))
            .collect::<Vec<_>>(),
    )
    .view([1, 32, 32, 3])
    .permute([0, 3, 1, 2]);
    // The codec runs small images in passes of a fixed size (copies fill the pass).
    let xs = xs.repeat([codec::per_pass(32 * 32) as i64, 1, 1, 1]);
    let codes = model.encode(&xs).narrow(0, 0, 1);
    assert_eq!(codes.size(), vec![1, 1, 8, 8]);
    let expected: Vec<u32> = Vec::<i64>::try_from(codes.flatten(0, -1))
        .unwrap()
        .into_iter()
        .map(|c| c as u32)
        .collect();
    assert_eq!(grid.codes, expected);
    let pixels = model
        .decode(&codes)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous();
    let pixels = Vec::<f32>::try_from(pixels.flatten(0, -1)).unwrap();
    let bytes: Vec<u8> = pixels.iter().map(|&v| range.to_byte(v)).collect();
    // The same arithmetic, but a value on a rounding boundary landed one byte away once in CI
    // (1 of 3,072 bytes; it passed in every other run). The likely cause: LibTorch's thread pool
    // is shared with the tests running beside this one, and a convolution split over another
    // number of threads may sum in another order.
    let off: Vec<(usize, u8, u8)> = recon
        .as_raw()
        .iter()
        .zip(&bytes)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (&a, &b))| (i, a, b))
        .collect();
    assert!(
        off.len() <= 3 && off.iter().all(|&(_, a, b)| a.abs_diff(b) == 1),
        "codec and model differ at {off:?}"
    );
}

#[test]
fn odd_and_tiny_sizes_come_back_at_their_size() {
    let _rng = vq_model::seeded(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_model(&vs);
    let codec = Codec {
        model: &model,
        device: Device::Cpu,
        tiling: Tiling::default(),
    };
    for (w, h) in [(1, 1), (1, 9), (7, 3), (33, 31)] {
        let img = picture(w, h);
        let grid = codec.encode(&img);
        assert_eq!((grid.width, grid.height), (w.div_ceil(4), h.div_ceil(4)));
        assert_eq!(codec.decode(&grid, w, h).dimensions(), (w, h));
    }
}

#[test]
fn images_load_with_their_colour_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("gray.png");
    image::GrayImage::from_fn(13, 7, |x, _| image::Luma([x as u8 * 10]))
        .save(&gray)
        .unwrap();
    let loaded = load_image(&gray).unwrap();
    assert_eq!(loaded.colour, Colour::Gray);
    assert_eq!(loaded.rgb.get_pixel(5, 3).0, [50, 50, 50]);

    let rgba = dir.path().join("rgba.png");
    image::RgbaImage::from_fn(4, 4, |x, _| {
        image::Rgba([0, 0, 0, if x < 2 { 0 } else { 255 }])
    })
    .save(&rgba)
    .unwrap();
    let loaded = load_image(&rgba).unwrap();
    assert!(loaded.had_alpha);
    assert_eq!(loaded.rgb.get_pixel(0, 0).0, [255, 255, 255]); // transparent → white
    assert_eq!(loaded.rgb.get_pixel(3, 0).0, [0, 0, 0]);

    let text = dir.path().join("notes.png");
    std::fs::write(&text, "just some text").unwrap();
    assert!(matches!(load_image(&text), Err(InputError::NotAnImage(p)) if p == text));
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, "").unwrap();
    assert!(load_image(&empty).is_err());
    let missing = dir.path().join("nope.png");
    assert!(matches!(load_image(&missing), Err(InputError::Missing(_))));

    // A PNG header claiming 20000 × 20000 pixels is refused before decoding.
    let mut huge = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut huge),
            image::ImageFormat::Png,
        )
        .unwrap();
    huge[16..20].copy_from_slice(&20_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&20_000u32.to_be_bytes());
    let path = dir.path().join("huge.png");
    std::fs::write(&path, &huge).unwrap();
    let err = load_image(&path).unwrap_err();
    assert!(
        matches!(err, InputError::TooLarge { .. } | InputError::Corrupt(..)),
        "{err}"
    );
    assert!(err.to_string().contains("huge.png"));
}

#[test]
fn psnr_and_ssim_of_an_image_against_itself_and_a_noisy_copy() {
    let img = picture(40, 30);
    let (psnr, ssim) = compare(&img, &img);
    assert!(psnr >= 99.0 && (ssim.unwrap() - 1.0).abs() < 1e-6);
    let mut noisy = img.clone();
    for (i, p) in noisy.pixels_mut().enumerate() {
        p.0[i % 3] = p.0[i % 3].saturating_add(20);
    }
    let (psnr, ssim) = compare(&img, &noisy);
    assert!(psnr > 15.0 && psnr < 40.0, "{psnr}");
    assert!(ssim.unwrap() < 1.0);
    assert_eq!(compare(&picture(5, 5), &picture(5, 5)).1, None);
}

#[test]
fn outputs_go_beside_inputs_or_into_a_folder() {
    let input = Input {
        path: PathBuf::from("photos/cat.jpg"),
        sub: PathBuf::new(),
    };
    assert_eq!(
        output_path(&input, None, "recon.png"),
        Path::new("photos/cat.recon.png")
    );
    assert_eq!(
        output_path(&input, Some(Path::new("out")), "vqz"),
        Path::new("out/cat.vqz")
    );
    // Found in a sub-folder of a folder argument: the output folder mirrors it.
    let nested = Input {
        path: PathBuf::from("photos/2024/cat.jpg"),
        sub: PathBuf::from("2024"),
    };
    assert_eq!(
        output_path(&nested, Some(Path::new("out")), "vqz"),
        Path::new("out/2024/cat.vqz")
    );
    assert_eq!(
        output_path(&nested, None, "vqz"),
        Path::new("photos/2024/cat.vqz")
    );
}

#[test]
fn inputs_remember_their_sub_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    for f in ["x.png", "a/x.png", "a/b/y.png", "a/notes.txt"] {
        std::fs::write(root.join(f), b"").unwrap();
    }
    let single = tmp.path().join("z.png");
    std::fs::write(&single, b"").unwrap();
    let inputs = collect_inputs(&[root.clone(), single.clone()]).unwrap();
    let got: Vec<(PathBuf, PathBuf)> = inputs.into_iter().map(|i| (i.path, i.sub)).collect();
    assert_eq!(
        got,
        vec![
            (root.join("a/b/y.png"), PathBuf::from("a/b")),
            (root.join("a/x.png"), PathBuf::from("a")),
            (root.join("x.png"), PathBuf::new()),
            (single, PathBuf::new()),
        ]
    );
}

#[test]
fn a_prior_opens_only_with_its_own_vqvae_and_samples_images() {
    let _rng = vq_model::seeded(3);
    use vq_prior::{
        PixelCnnConfig, PriorArch, PriorCheckpoint, PriorConfig, PriorError, Provenance,
    };
    use vq_store::Source;
    tch::manual_seed(3);
    let dir = tempfile::tempdir().unwrap();
    let vq_dir = dir.path().join("vqvae");
    std::fs::create_dir_all(&vq_dir).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_model(&vs);
    vq_store::weights::save(&vs, &vq_dir.join("model.safetensors")).unwrap();
    vq_store::write_config(&vq_dir.join("config.json"), &model.config).unwrap();
    let vqvae = Checkpoint::open(&vq_dir, Device::Cpu).unwrap();

    let write_prior = |name: &str, id: String| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        let cfg = PriorConfig {
            arch: PriorArch::PixelCnn(PixelCnnConfig {
                channels: 8,
                layers: 2,
                kernel: 3,
            }),
            provenance: Provenance {
                vqvae_model_id: id,
                codes: vqvae.config.code_space(),
                ..Provenance::default()
            },
            sampling: None,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let _prior = vq_prior::build(vs.root(), &cfg);
        vq_store::weights::save(&vs, &p.join("model.safetensors")).unwrap();
        vq_store::write_config(&p.join("config.json"), &cfg).unwrap();
        p
    };
    let id = vq_store::hex(&vqvae.model_id);
    let other = write_prior("other", "00".repeat(16));
    let err = PriorCheckpoint::open_for(Source::Path(&other), "the VQ-VAE", &id, Device::Cpu)
        .unwrap_err();
    assert!(matches!(err, PriorError::OtherVqVae { .. }), "{err}");
    assert!(err.to_string().contains("other"), "{err}");

    let own = write_prior("own", id.clone());
    let prior =
        PriorCheckpoint::open_for(Source::Path(&own), "the VQ-VAE", &id, Device::Cpu).unwrap();
    let labels = Tensor::from_slice(&[3i64, 5]);
    let codes = prior
        .model
        .sample(2, Some(&labels), &Default::default(), Device::Cpu);
    assert_eq!(codes.size(), vec![2, 8, 8]);
    let images = vqvae.model.decode(&codes.unsqueeze(1));
    assert_eq!(images.size(), vec![2, 3, 32, 32]);
}
