//! A photo to a `.vqz` file arithmetic-coded with the bundled prior, and back:
//! `cargo run --release -p vqvae --example compress_photo -- photo.jpg photo.vqz`. Prints the
//! file's bits per pixel and the PSNR of the decoded image, which it writes as `photo.vqz.png`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(photo), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: compress_photo PHOTO OUT.vqz");
    };
    let tokenizer = vqvae::Tokenizer::bundled()?;
    let prior = vqvae::Prior::bundled(&tokenizer)?;
    let image = vqvae::read_image(&photo)?;
    let bytes = vqvae::compress(&tokenizer, &prior, &image)?;
    std::fs::write(&out, &bytes)?;
    let back = vqvae::decompress(&tokenizer, Some(&prior), &std::fs::read(&out)?)?;
    back.save(format!("{out}.png"))?;
    let (psnr, _) = vqvae::files::compare(&image, &back);
    let pixels = image.width() as f64 * image.height() as f64;
    println!(
        "{out}: {} bytes, {:.4} bits per pixel, PSNR {psnr:.2} dB ({}×{})",
        bytes.len(),
        bytes.len() as f64 * 8.0 / pixels,
        image.width(),
        image.height()
    );
    Ok(())
}
