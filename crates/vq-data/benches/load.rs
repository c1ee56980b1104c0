//! Load rate of the whole CIFAR-10 set from page cache: `cargo xtask bench data`
//! (or `cargo bench -p vq-data --bench load -- DIR`).

use std::time::Instant;

use vq_data::{Cifar10, Split, FILE_BYTES, TEST_FILES, TRAIN_FILES};

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "datasets/cifar-10-batches-bin".into());
    let bytes = FILE_BYTES as f64 * (TRAIN_FILES.len() + TEST_FILES.len()) as f64;
    let load = || -> Result<f64, vq_data::DataError> {
        let start = Instant::now();
        let train = Cifar10::load(&dir, Split::Train)?;
        let test = Cifar10::load(&dir, Split::Test)?;
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(train.len() + test.len(), 60_000);
        Ok(seconds)
    };
    // The first load warms the page cache and is not counted.
    if let Err(e) = load() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let runs = 10;
    let mut times: Vec<f64> = (0..runs)
        .map(|_| load().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[runs / 2];
    let best = times[0];
    let threads = rayon::current_num_threads();
    println!(
        "CIFAR-10 load (train + test, {:.1} MB, page cache, {threads} threads, {runs} runs)",
        bytes / 1e6
    );
    println!(
        "  median {:.1} ms  {:>7.0} MB/s",
        median * 1e3,
        bytes / median / 1e6
    );
    println!(
        "  best   {:.1} ms  {:>7.0} MB/s",
        best * 1e3,
        bytes / best / 1e6
    );
    println!(
        "{{\"bench\":\"data_load\",\"bytes\":{bytes},\"threads\":{threads},\"median_s\":{median:.6},\"best_s\":{best:.6},\"median_mb_per_s\":{:.1},\"best_mb_per_s\":{:.1}}}",
        bytes / median / 1e6,
        bytes / best / 1e6
    );
}
