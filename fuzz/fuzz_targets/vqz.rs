//! The `.vqz` decoder: any bytes decode or give an error, never a panic, and whatever decodes
//! is valid and encodes back to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = vq_codes::CodeFile::from_bytes(data) else {
        return;
    };
    file.validate().unwrap();
    assert_eq!(file.to_bytes().unwrap(), data);
});
