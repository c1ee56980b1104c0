//! The `.vqz` decoder: any bytes decode or give an error, never a panic, and whatever decodes
//! is valid and encodes back to the very same bytes. Every version is read: the seeds hold
//! version 1 and 2 files (56-byte header) and version 3 ones (compact, packed and
//! arithmetic-coded).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = vq_codes::CodeFile::from_bytes(data) else {
        return;
    };
    file.validate().unwrap();
    assert_eq!(file.to_bytes().unwrap(), data);
});
