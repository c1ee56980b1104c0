//! The TensorBoard event reader (what the tests read run folders' event files with): any bytes
//! read or give an error, never a panic, and whatever reads writes back to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vq_store::tensorboard::{read_events, record};

fuzz_target!(|data: &[u8]| {
    let Ok(events) = read_events(data) else {
        return;
    };
    let again: Vec<u8> = events.iter().flat_map(|e| record(&e.encode())).collect();
    assert_eq!(read_events(&again).unwrap(), events);
});
