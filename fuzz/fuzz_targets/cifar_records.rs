//! The CIFAR-10 record parser: any bytes give records or an error, never a panic, and whatever
//! parses writes back to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.bin");
    let Ok((images, labels)) = vq_data::parse_records(data, path) else {
        return;
    };
    assert_eq!(images.dim().0, labels.len());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("batch.bin");
    vq_data::write_batch_file(&out, images.view(), labels.as_slice().unwrap()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
});
