//! New images from the bundled prior, one row per class, decoded by the sharp decoder and
//! enlarged 4× to be seen: `cargo run --release -p vqvae --example sample_grid -- grid.png [PER_CLASS]`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "grid.png".into());
    let per_class: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(8);
    let tokenizer = vqvae::Tokenizer::bundled()?.with_decoder(vqvae::Decoder::Sharp)?;
    let prior = vqvae::Prior::bundled(&tokenizer)?;
    let classes = prior.class_names();
    let (side, scale) = (32u32, 4u32);
    let mut grid = image::RgbImage::new(
        per_class as u32 * side * scale,
        classes.len() as u32 * side * scale,
    );
    for (row, class) in classes.iter().enumerate() {
        for (col, codes) in prior
            .sample(per_class, Some(row), row as u64)?
            .iter()
            .enumerate()
        {
            let picture = tokenizer.decode(codes);
            for (x, y, px) in picture.enumerate_pixels() {
                for dy in 0..scale {
                    for dx in 0..scale {
                        grid.put_pixel(
                            (col as u32 * side + x) * scale + dx,
                            (row as u32 * side + y) * scale + dy,
                            *px,
                        );
                    }
                }
            }
        }
        println!("row {row}: {class}");
    }
    grid.save(&out)?;
    println!(
        "{out}: {per_class} samples of each of {} classes",
        classes.len()
    );
    Ok(())
}
