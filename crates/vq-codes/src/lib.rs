//! The `.vqz` code file: one image as the grid of VQ-VAE code indices that the decoder turns
//! back into pixels, tied to the model that made it.
//!
//! Layout (version 1, all integers little-endian, 56-byte header then the payload):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4  | magic `b"VQZ\0"` |
//! | 4  | 2  | format version (1) |
//! | 6  | 1  | colour: 0 = RGB, 1 = grayscale (how the decoded image is written) |
//! | 7  | 1  | downsampling factor of the model (pixels per code, each way) |
//! | 8  | 16 | model id: the first 16 bytes of the SHA-256 of the model's weights file |
//! | 24 | 4  | image width in pixels |
//! | 28 | 4  | image height in pixels |
//! | 32 | 4  | grid width in codes = ceil(width / downsampling) |
//! | 36 | 4  | grid height in codes = ceil(height / downsampling) |
//! | 40 | 4  | codebook size K |
//! | 44 | 1  | bits per code = ceil(log2 K) |
//! | 45 | 3  | reserved, zero |
//! | 48 | 4  | payload length in bytes = ceil(grid cells × bits / 8) |
//! | 52 | 4  | CRC-32 (IEEE) of bytes 0..52 followed by the payload |
//! | 56 | …  | the codes, row-major, packed least-significant bit first |
//!
//! [`CodeFile::from_bytes`] checks every field against the others, so a truncated, padded or
//! corrupted file is an error, never a panic or a wrong image.

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"VQZ\0";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 56;
/// Upper bound on either image side: far above any real photo, low enough that the grid size
/// arithmetic cannot overflow.
pub const MAX_SIDE: u32 = 1 << 20;
/// Upper bound on K (bits per code ≤ 24).
pub const MAX_CODEBOOK: u32 = 1 << 24;

/// How the decoded image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Rgb,
    Gray,
}

/// An image's code grid and what it takes to decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFile {
    pub model_id: [u8; 16],
    pub colour: Colour,
    pub downsample: u8,
    pub width: u32,
    pub height: u32,
    pub grid_width: u32,
    pub grid_height: u32,
    pub codebook_size: u32,
    /// `grid_height × grid_width` indices, row-major, each `< codebook_size`.
    pub codes: Vec<u32>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodeFileError {
    #[error("not a .vqz code file (it does not start with the VQZ magic bytes)")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("truncated: {what} needs {needed} bytes, the file has {got}")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{0} unexpected bytes after the codes")]
    TrailingBytes(usize),
    #[error("inconsistent header: {0}")]
    Inconsistent(String),
    #[error("the codes are corrupt (CRC-32 {found:08x}, header says {expected:08x})")]
    Checksum { expected: u32, found: u32 },
    #[error("code {index} is {value}, outside the codebook of {codebook_size}")]
    CodeOutOfRange {
        index: usize,
        value: u32,
        codebook_size: u32,
    },
}

/// Bits needed for indices below `k` (at least 1).
pub fn bits_per_code(k: u32) -> u8 {
    (32 - k.saturating_sub(1).leading_zeros()).max(1) as u8
}

/// Codes along one side of an image side of `pixels` pixels.
pub fn grid_side(pixels: u32, downsample: u8) -> u32 {
    pixels.div_ceil(downsample.max(1) as u32)
}

impl CodeFile {
    /// Bits per pixel of the packed codes (header excluded).
    pub fn bits_per_pixel(&self) -> f64 {
        let bits = self.codes.len() as f64 * bits_per_code(self.codebook_size) as f64;
        bits / (self.width as f64 * self.height as f64)
    }

    /// Checks the fields against each other; [`CodeFile::to_bytes`] and
    /// [`CodeFile::from_bytes`] both call it.
    pub fn validate(&self) -> Result<(), CodeFileError> {
        self.validate_header()?;
        let cells = self.grid_width as usize * self.grid_height as usize;
        if self.codes.len() != cells {
            return Err(CodeFileError::Inconsistent(format!(
                "{} codes for a {}×{} grid",
                self.codes.len(),
                self.grid_width,
                self.grid_height
            )));
        }
        if let Some((index, &value)) = self
            .codes
            .iter()
            .enumerate()
            .find(|(_, &c)| c >= self.codebook_size)
        {
            return Err(CodeFileError::CodeOutOfRange {
                index,
                value,
                codebook_size: self.codebook_size,
            });
        }
        Ok(())
    }

    /// Everything but the codes themselves.
    fn validate_header(&self) -> Result<(), CodeFileError> {
        let bad = |m: String| Err(CodeFileError::Inconsistent(m));
        if self.downsample == 0 {
            return bad("downsampling factor 0".into());
        }
        if self.width == 0 || self.height == 0 || self.width > MAX_SIDE || self.height > MAX_SIDE {
            return bad(format!(
                "image size {}×{} (each side must be 1 to {MAX_SIDE})",
                self.width, self.height
            ));
        }
        let (gw, gh) = (
            grid_side(self.width, self.downsample),
            grid_side(self.height, self.downsample),
        );
        if (self.grid_width, self.grid_height) != (gw, gh) {
            return bad(format!(
                "grid {}×{} does not fit a {}×{} image at {}× downsampling (expected {gw}×{gh})",
                self.grid_width, self.grid_height, self.width, self.height, self.downsample
            ));
        }
        if self.codebook_size < 2 || self.codebook_size > MAX_CODEBOOK {
            return bad(format!(
                "codebook size {} (must be 2 to {MAX_CODEBOOK})",
                self.codebook_size
            ));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, CodeFileError> {
        self.validate()?;
        let bits = bits_per_code(self.codebook_size);
        let payload = pack(&self.codes, bits);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(match self.colour {
            Colour::Rgb => 0,
            Colour::Gray => 1,
        });
        out.push(self.downsample);
        out.extend_from_slice(&self.model_id);
        for v in [
            self.width,
            self.height,
            self.grid_width,
            self.grid_height,
            self.codebook_size,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[bits, 0, 0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = checksum(&out, &payload);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodeFileError> {
        if bytes.len() < MAGIC.len() || bytes[..4] != MAGIC {
            return Err(CodeFileError::BadMagic);
        }
        let need = |what, needed| {
            if bytes.len() < needed {
                Err(CodeFileError::Truncated {
                    what,
                    needed,
                    got: bytes.len(),
                })
            } else {
                Ok(())
            }
        };
        need("the version", 6)?;
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(CodeFileError::UnsupportedVersion(version));
        }
        need("the header", HEADER_LEN)?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let colour = match bytes[6] {
            0 => Colour::Rgb,
            1 => Colour::Gray,
            other => {
                return Err(CodeFileError::Inconsistent(format!(
                    "colour type {other} (expected 0 or 1)"
                )))
            }
        };
        let mut model_id = [0u8; 16];
        model_id.copy_from_slice(&bytes[8..24]);
        let mut file = CodeFile {
            model_id,
            colour,
            downsample: bytes[7],
            width: u32_at(24),
            height: u32_at(28),
            grid_width: u32_at(32),
            grid_height: u32_at(36),
            codebook_size: u32_at(40),
            codes: Vec::new(),
        };
        let bits = bytes[44];
        if bytes[45..48] != [0, 0, 0] {
            return Err(CodeFileError::Inconsistent(
                "reserved header bytes are not zero".into(),
            ));
        }
        // Check the sizes before trusting them to size anything.
        file.validate_header()?;
        if bits != bits_per_code(file.codebook_size) {
            return Err(CodeFileError::Inconsistent(format!(
                "{bits} bits per code for a codebook of {} (expected {})",
                file.codebook_size,
                bits_per_code(file.codebook_size)
            )));
        }
        let cells = file.grid_width as usize * file.grid_height as usize;
        let payload_len = (cells * bits as usize).div_ceil(8);
        if u32_at(48) as usize != payload_len {
            return Err(CodeFileError::Inconsistent(format!(
                "payload length {} for {cells} codes of {bits} bits (expected {payload_len})",
                u32_at(48)
            )));
        }
        need("the codes", HEADER_LEN + payload_len)?;
        if bytes.len() > HEADER_LEN + payload_len {
            return Err(CodeFileError::TrailingBytes(
                bytes.len() - HEADER_LEN - payload_len,
            ));
        }
        let payload = &bytes[HEADER_LEN..];
        let (expected, found) = (u32_at(52), checksum(&bytes[..52], payload));
        if expected != found {
            return Err(CodeFileError::Checksum { expected, found });
        }
        file.codes = unpack(payload, bits, cells);
        if payload_len * 8 > cells * bits as usize {
            let last = payload[payload_len - 1];
            let used = (cells * bits as usize) % 8;
            if last >> used != 0 {
                return Err(CodeFileError::Inconsistent(
                    "padding bits after the last code are not zero".into(),
                ));
            }
        }
        file.validate()?;
        Ok(file)
    }
}

/// CRC-32 of the header (up to the CRC field) and the payload.
fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..52]);
    h.update(payload);
    h.finalize()
}

/// Packs `values` at `bits` each, least-significant bit first.
pub fn pack(values: &[u32], bits: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity((values.len() * bits as usize).div_ceil(8));
    let (mut acc, mut filled) = (0u64, 0u32);
    for &v in values {
        acc |= (v as u64 & ((1u64 << bits) - 1)) << filled;
        filled += bits as u32;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
    out
}

/// The inverse of [`pack`]: `count` values of `bits` each.
pub fn unpack(bytes: &[u8], bits: u8, count: usize) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(count);
    let (mut acc, mut filled) = (0u64, 0u32);
    let mut bytes = bytes.iter();
    while out.len() < count {
        while filled < bits as u32 {
            acc |= (*bytes.next().unwrap_or(&0) as u64) << filled;
            filled += 8;
        }
        out.push((acc & mask) as u32);
        acc >>= bits;
        filled -= bits as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(width: u32, height: u32, k: u32) -> CodeFile {
        let (gw, gh) = (grid_side(width, 4), grid_side(height, 4));
        CodeFile {
            model_id: *b"0123456789abcdef",
            colour: Colour::Rgb,
            downsample: 4,
            width,
            height,
            grid_width: gw,
            grid_height: gh,
            codebook_size: k,
            codes: (0..gw * gh).map(|i| (i * 7919) % k).collect(),
        }
    }

    #[test]
    fn bits_per_code_is_ceil_log2() {
        for (k, b) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (256, 8),
            (257, 9),
            (512, 9),
            (1024, 10),
        ] {
            assert_eq!(bits_per_code(k), b, "K = {k}");
        }
    }

    #[test]
    fn a_cifar_image_is_72_bytes_of_codes() {
        let f = sample(32, 32, 512);
        let bytes = f.to_bytes().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 64 * 9 / 8);
        assert_eq!(f.bits_per_pixel(), 64.0 * 9.0 / 1024.0);
        assert_eq!(CodeFile::from_bytes(&bytes).unwrap(), f);
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = sample(37, 21, 512).to_bytes().unwrap();
        let err = |b: &[u8]| CodeFile::from_bytes(b).unwrap_err();
        assert_eq!(err(b"PNG\0rest"), CodeFileError::BadMagic);
        assert_eq!(err(&[]), CodeFileError::BadMagic);
        let mut v = good.clone();
        v[4] = 2;
        assert_eq!(err(&v), CodeFileError::UnsupportedVersion(2));
        assert!(matches!(err(&good[..30]), CodeFileError::Truncated { .. }));
        assert!(matches!(
            err(&good[..good.len() - 1]),
            CodeFileError::Truncated { .. }
        ));
        let mut v = good.clone();
        v.push(0);
        assert_eq!(err(&v), CodeFileError::TrailingBytes(1));
        let mut v = good.clone();
        v[HEADER_LEN + 3] ^= 0x10;
        assert!(matches!(err(&v), CodeFileError::Checksum { .. }));
        let mut v = good.clone();
        v[24] = 99; // width no longer matches the grid
        assert!(matches!(err(&v), CodeFileError::Inconsistent(_)));
        let mut v = good.clone();
        v[44] = 8; // 8 bits for K = 512
        assert!(matches!(err(&v), CodeFileError::Inconsistent(_)));
    }

    #[test]
    fn codes_outside_the_codebook_are_refused() {
        let mut f = sample(8, 8, 5);
        // 3 bits can hold 7 but K is 5: craft a file whose checksum is right.
        f.codes[2] = 4;
        let mut bytes = f.to_bytes().unwrap();
        let mut codes = f.codes.clone();
        codes[2] = 6;
        let payload = pack(&codes, 3);
        bytes.truncate(HEADER_LEN);
        let crc = checksum(&bytes, &payload);
        bytes[52..56].copy_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert_eq!(
            CodeFile::from_bytes(&bytes).unwrap_err(),
            CodeFileError::CodeOutOfRange {
                index: 2,
                value: 6,
                codebook_size: 5
            }
        );
        f.codes[2] = 5;
        assert!(f.to_bytes().is_err());
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips(bits in 1u8..=24, raw in proptest::collection::vec(any::<u32>(), 0..300)) {
            let values: Vec<u32> = raw.iter().map(|v| v & ((1u32 << bits) - 1)).collect();
            let packed = pack(&values, bits);
            prop_assert_eq!(packed.len(), (values.len() * bits as usize).div_ceil(8));
            prop_assert_eq!(unpack(&packed, bits, values.len()), values);
        }

        #[test]
        fn files_round_trip(width in 1u32..200, height in 1u32..200, k in 2u32..5000, seed in any::<u32>(), gray in any::<bool>()) {
            let mut f = sample(width, height, k);
            f.colour = if gray { Colour::Gray } else { Colour::Rgb };
            for (i, c) in f.codes.iter_mut().enumerate() {
                *c = (seed as u64 * 2654435761 + i as u64 * 40503) as u32 % k;
            }
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(CodeFile::from_bytes(&bytes).unwrap(), f);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CodeFile::from_bytes(&bytes);
        }

        #[test]
        fn any_single_byte_change_or_cut_is_caught(pos in 0usize..128, flip in 1u8..=255, cut in 0usize..128) {
            let good = sample(30, 30, 512).to_bytes().unwrap();
            let pos = pos % good.len();
            let mut v = good.clone();
            v[pos] ^= flip;
            prop_assert!(CodeFile::from_bytes(&v).is_err(), "byte {} ^ {:#x} accepted", pos, flip);
            let cut = cut % good.len();
            prop_assert!(CodeFile::from_bytes(&good[..cut]).is_err());
        }
    }
}
