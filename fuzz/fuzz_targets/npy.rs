//! The `.npy` reader: any bytes read or give an error, never a panic, and whatever reads is
//! consistent (its elements fill its shape, each fits its type) and writes back to an array
//! that reads the same. Seeds: the files NumPy wrote in tests/fixtures/npy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vq_codes::npy::Array;

fuzz_target!(|data: &[u8]| {
    let Ok(array) = Array::from_bytes(data) else {
        return;
    };
    assert_eq!(array.shape.iter().product::<usize>(), array.data.len());
    let again = Array::new(array.shape.clone(), array.data.clone(), array.dtype).unwrap();
    assert_eq!(Array::from_bytes(&again.to_bytes()).unwrap(), array);
});
