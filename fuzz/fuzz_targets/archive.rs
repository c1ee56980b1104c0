//! The archive unpacker: any bytes unpack or give an error, never a panic, and nothing is ever
//! written outside `cifar-10-batches-bin/` of the destination, nor larger than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let result = vq_data::unpack_reader(data, Path::new("fuzz.tar.gz"), &dest);
    // Only the dataset folder may appear in the destination, and only plain files in it.
    let top: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![std::ffi::OsString::from(vq_data::DIR_NAME)]);
    for entry in std::fs::read_dir(dest.join(vq_data::DIR_NAME)).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        assert!(meta.is_file(), "{:?} is not a plain file", entry.path());
        assert!(meta.len() <= vq_data::FILE_BYTES);
    }
    if let Ok(report) = result {
        assert!(!report.written.is_empty());
        for written in &report.written {
            assert!(dest.join(written).is_file());
        }
    }
});
