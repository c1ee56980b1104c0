//! A folder of images to one array of token ids: `cargo run --release -p vqvae --example
//! encode_folder -- DIR codes.npy [CHECKPOINT]` (the bundled model without CHECKPOINT). Every
//! image must give a grid of one size (32 × 32 images give 8 × 8 codes with the bundled
//! model). In Python: `numpy.load("codes.npy")`, names in `codes.names.json`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: encode_folder DIR OUT.npy [CHECKPOINT]");
    };
    let tokenizer = match args.next() {
        Some(checkpoint) => vqvae::Tokenizer::open(checkpoint)?,
        None => vqvae::Tokenizer::bundled()?,
    };
    let files = vqvae::files::collect_images(&[PathBuf::from(&dir)])?;
    let images = files
        .iter()
        .map(vqvae::read_image)
        .collect::<Result<Vec<_>, _>>()?;
    let grids = tokenizer.encode_all(&images.iter().collect::<Vec<_>>());
    let names = files.iter().map(|f| f.display().to_string()).collect();
    let array = vqvae::CodeArray::from_grids(&grids, names, None)?;
    array.write(out.as_ref())?;
    println!(
        "{out}: {:?} token ids below {}",
        array.shape,
        tokenizer.vocabulary()
    );
    Ok(())
}
