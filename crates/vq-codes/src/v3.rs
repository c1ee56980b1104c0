//! Version 3, the compact layout: what is written now. An entropy-coded 32 × 32 image's
//! header is 14 bytes where version 2 spent 73, since nothing is stored that the model, the
//! prior or the other fields give, and sizes are varints (unsigned LEB128, shortest form).
//!
//! | size | field |
//! |-----:|-------|
//! | 3 | magic `b"VQ3"` (versions 1 and 2 start with `b"VQZ\0"`) |
//! | 1 | flags: bit 0 grayscale, bit 1 arithmetic-coded, bits 2–4 log2 of the downsampling factor, bits 5–7 zero |
//! | varint | image width in pixels |
//! | varint | image height in pixels (the grid is ⌈size / downsampling⌉ each way) |
//!
//! Packed codes (bit 1 clear) then have:
//!
//! | size | field |
//! |-----:|-------|
//! | 4 | model id: the first 4 bytes of the SHA-256 of the model's weights file |
//! | varint | depth L (1 to 64) |
//! | L varints | the vocabulary of each level |
//! | … | level 1's codes (row-major), then level 2's, …, as in version 2 |
//!
//! Arithmetic-coded codes (bit 1 set) then have:
//!
//! | size | field |
//! |-----:|-------|
//! | 4 | prior id: the first 4 bytes of the SHA-256 of the prior's weights; the prior names the model whose codes it models (so no model id), and its vocabulary is the file's (one level) |
//! | 2 | [`codes_check`] of the decoded codes (little-endian): a prior that is not the encoder's, yet has the same id, decodes other codes and fails it |
//! | … | the portable arithmetic coder's bytes: the class (or none) as a first symbol, then the codes, trailing zero bytes dropped |
//!
//! Every file ends with the CRC-16 (CCITT, little-endian) of all the bytes before it, so any
//! change of up to 16 consecutive bits is caught before a field is read.

use crate::{bits_per_code, grid_side, CodeFile, CodeFileError, Colour, EntropyCoding, MAX_DEPTH};

pub const MAGIC: [u8; 3] = *b"VQ3";
/// Bytes of the model id a version-3 file keeps.
pub const MODEL_ID_LEN: usize = 4;
/// Bytes of the prior id a version-3 file keeps.
pub const PRIOR_ID_LEN: usize = 4;
/// Largest log2 of the downsampling factor the flags hold.
const MAX_DOWNSAMPLE_LOG2: u32 = 7;

const GRAY: u8 = 1;
const CODED: u8 = 2;

/// CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF): it detects every error burst
/// of up to 16 bits.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The check of an arithmetic-coded file's codes: CRC-16 of each code as 4 little-endian
/// bytes.
pub fn codes_check(codes: &[u32]) -> u32 {
    let bytes: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
    crc16(&bytes) as u32
}

/// What version 3 requires beyond the fields' own ranges.
pub(crate) fn validate(file: &CodeFile) -> Result<(), CodeFileError> {
    let bad = |m: String| Err(CodeFileError::Inconsistent(m));
    // An entropy-coded file names its prior, which names the model.
    let id_len = if file.entropy.is_some() {
        0
    } else {
        MODEL_ID_LEN
    };
    if file.model_id.len() != id_len {
        return bad(format!(
            "a {}-byte model id in a version-3 file (it keeps {id_len})",
            file.model_id.len()
        ));
    }
    let d = file.downsample as u32;
    if !d.is_power_of_two() || d.trailing_zeros() > MAX_DOWNSAMPLE_LOG2 {
        return bad(format!(
            "downsampling factor {d} (version 3 holds powers of two up to {})",
            1 << MAX_DOWNSAMPLE_LOG2
        ));
    }
    if let Some(e) = &file.entropy {
        if e.prior_id.len() != PRIOR_ID_LEN {
            return bad(format!(
                "a {}-byte prior id in a version-3 file (it keeps {PRIOR_ID_LEN})",
                e.prior_id.len()
            ));
        }
        if e.class.is_some() {
            return bad("a class outside the payload (version 3 codes it first)".into());
        }
        if e.codes_crc > u16::MAX as u32 {
            return bad(format!("codes check {:#x} wider than 16 bits", e.codes_crc));
        }
        if file.depth() > 1 {
            return bad(format!(
                "arithmetic-coded codes of depth {} (priors model one level)",
                file.depth()
            ));
        }
    }
    Ok(())
}

fn push_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes of a checked version-3 file.
pub(crate) fn write(file: &CodeFile) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&MAGIC);
    let mut flags = ((file.downsample as u32).trailing_zeros() as u8) << 2;
    if file.colour == Colour::Gray {
        flags |= GRAY;
    }
    if file.entropy.is_some() {
        flags |= CODED;
    }
    out.push(flags);
    push_varint(&mut out, file.width);
    push_varint(&mut out, file.height);
    out.extend_from_slice(&file.model_id);
    match &file.entropy {
        Some(e) => {
            out.extend_from_slice(&e.prior_id);
            out.extend_from_slice(&(e.codes_crc as u16).to_le_bytes());
            out.extend_from_slice(&e.payload);
        }
        None => {
            push_varint(&mut out, file.depth() as u32);
            for &v in &file.vocabularies {
                push_varint(&mut out, v);
            }
            out.extend_from_slice(&file.packed_codes());
        }
    }
    let crc = crc16(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads fields in order, naming what a short file lacks.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The whole file's length, for error messages.
    len: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodeFileError> {
        if self.bytes.len() - self.at < n {
            return Err(CodeFileError::Truncated {
                what,
                needed: self.at + n + 2,
                got: self.len,
            });
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }

    /// An unsigned LEB128 of at most 32 bits in its shortest form.
    fn varint(&mut self, what: &'static str) -> Result<u32, CodeFileError> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.take(1, what)?[0];
            v |= ((b & 0x7F) as u64) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(CodeFileError::Inconsistent(format!(
                        "{what} is not in its shortest form"
                    )));
                }
                return u32::try_from(v).map_err(|_| {
                    CodeFileError::Inconsistent(format!("{what} does not fit 32 bits"))
                });
            }
        }
        Err(CodeFileError::Inconsistent(format!(
            "{what} is longer than 5 bytes"
        )))
    }
}

/// Reads a version-3 file (it starts with [`MAGIC`]).
pub(crate) fn read(bytes: &[u8]) -> Result<CodeFile, CodeFileError> {
    let min = MAGIC.len() + 1 + 2;
    if bytes.len() < min {
        return Err(CodeFileError::Truncated {
            what: "the header",
            needed: min,
            got: bytes.len(),
        });
    }
    let (body, tail) = bytes.split_at(bytes.len() - 2);
    let expected = u16::from_le_bytes([tail[0], tail[1]]);
    let found = crc16(body);
    if expected != found {
        return Err(CodeFileError::FileChecksum { expected, found });
    }
    let mut c = Cursor {
        bytes: body,
        at: MAGIC.len(),
        len: bytes.len(),
    };
    let flags = c.take(1, "the flags")?[0];
    if flags >> 5 != 0 {
        return Err(CodeFileError::Inconsistent(format!(
            "flags {flags:#04x} set reserved bits"
        )));
    }
    let downsample = 1u8 << ((flags >> 2) & 7);
    let width = c.varint("the width")?;
    let height = c.varint("the height")?;
    let coded = flags & CODED != 0;
    let model_id = if coded {
        Vec::new()
    } else {
        c.take(MODEL_ID_LEN, "the model id")?.to_vec()
    };
    let mut file = CodeFile {
        version: 3,
        model_id,
        colour: if flags & GRAY != 0 {
            Colour::Gray
        } else {
            Colour::Rgb
        },
        downsample,
        width,
        height,
        grid_width: grid_side(width, downsample),
        grid_height: grid_side(height, downsample),
        vocabularies: Vec::new(),
        codes: Vec::new(),
        entropy: None,
    };
    if coded {
        let prior_id = c.take(PRIOR_ID_LEN, "the prior id")?.to_vec();
        let check = c.take(2, "the codes check")?;
        let codes_crc = u16::from_le_bytes([check[0], check[1]]) as u32;
        if body.last() == Some(&0) && c.at < body.len() {
            return Err(CodeFileError::Inconsistent(
                "the coded payload ends with a zero byte (the encoder drops them)".into(),
            ));
        }
        file.entropy = Some(EntropyCoding {
            prior_id,
            class: None,
            codes_crc,
            payload: body[c.at..].to_vec(),
        });
        file.validate()?;
        return Ok(file);
    }
    let depth = c.varint("the depth")? as usize;
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(CodeFileError::Inconsistent(format!(
            "depth {depth} (must be 1 to {MAX_DEPTH})"
        )));
    }
    for _ in 0..depth {
        file.vocabularies.push(c.varint("a level's vocabulary")?);
    }
    // Sizes checked before they size anything.
    file.validate_header()?;
    debug_assert!(file.vocabularies.iter().all(|&v| bits_per_code(v) <= 24));
    file.unpack_codes(&body[c.at..])?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packed(width: u32, height: u32, ks: &[u32], downsample: u8) -> CodeFile {
        let (gw, gh) = (grid_side(width, downsample), grid_side(height, downsample));
        let cells = (gw * gh) as usize;
        CodeFile {
            version: 3,
            model_id: b"abcd".to_vec(),
            colour: Colour::Rgb,
            downsample,
            width,
            height,
            grid_width: gw,
            grid_height: gh,
            vocabularies: ks.to_vec(),
            codes: (0..cells * ks.len())
                .map(|i| (i as u32 * 7919) % ks[i / cells])
                .collect(),
            entropy: None,
        }
    }

    fn coded(width: u32, height: u32, payload: Vec<u8>) -> CodeFile {
        let mut f = packed(width, height, &[512], 4);
        f.model_id.clear();
        f.entropy = Some(EntropyCoding {
            prior_id: b"prio".to_vec(),
            class: None,
            codes_crc: codes_check(&f.codes),
            payload,
        });
        f
    }

    #[test]
    fn crc16_is_ccitt_false() {
        // The catalogue's check value of CRC-16/CCITT-FALSE.
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn a_cifar_image_has_14_bytes_around_its_coded_payload_and_15_around_packed_codes() {
        let f = packed(32, 32, &[512], 4);
        let bytes = f.to_bytes().unwrap();
        assert_eq!(&bytes[..3], b"VQ3");
        assert_eq!(bytes.len(), 3 + 1 + 1 + 1 + 4 + 1 + 2 + 72 + 2);
        assert_eq!(CodeFile::from_bytes(&bytes).unwrap(), f);

        let f = coded(32, 32, vec![0x5A; 50]);
        let bytes = f.to_bytes().unwrap();
        assert_eq!(bytes.len(), 14 + 50);
        let mut back = CodeFile::from_bytes(&bytes).unwrap();
        // The vocabulary is the model's, the codes the prior's to decode.
        assert!(back.vocabularies.is_empty() && back.codes.is_empty());
        back.resolve_vocabulary(512);
        assert_eq!(back.to_bytes().unwrap(), bytes);
        back.codes = f.codes.clone();
        assert_eq!(back, f);
        back.codes[3] ^= 1;
        assert_eq!(back.validate().unwrap_err(), CodeFileError::CodesChecksum);
    }

    #[test]
    fn every_byte_change_and_cut_of_a_small_file_is_caught() {
        for f in [
            packed(37, 21, &[512], 4),
            packed(9, 9, &[512, 7], 2),
            coded(32, 32, vec![0x81; 30]),
        ] {
            let good = f.to_bytes().unwrap();
            for pos in 0..good.len() {
                for flip in 1..=255u8 {
                    let mut v = good.clone();
                    v[pos] ^= flip;
                    assert!(
                        CodeFile::from_bytes(&v).is_err(),
                        "byte {pos} ^ {flip:#x} accepted"
                    );
                }
            }
            for cut in 0..good.len() {
                assert!(CodeFile::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn what_version_3_cannot_hold_is_refused_by_name() {
        let mut f = packed(8, 8, &[16], 4);
        f.model_id = vec![0; 16];
        assert!(f.to_bytes().unwrap_err().to_string().contains("model id"));
        let mut f = coded(8, 8, vec![1]);
        f.model_id = vec![0; 4];
        assert!(f.to_bytes().unwrap_err().to_string().contains("model id"));
        let mut f = coded(8, 8, vec![1]);
        f.entropy.as_mut().unwrap().class = Some(3);
        assert!(f.to_bytes().unwrap_err().to_string().contains("class"));
        let mut f = packed(8, 8, &[16], 4);
        f.downsample = 3;
        f.grid_width = grid_side(8, 3);
        f.grid_height = grid_side(8, 3);
        f.codes = vec![0; 9];
        assert!(f.to_bytes().unwrap_err().to_string().contains("power"));
    }

    #[test]
    fn a_varint_in_a_longer_form_than_needed_is_refused() {
        // Width 32 written as two bytes (0xA0 0x00), with a right CRC.
        let good = packed(32, 32, &[512], 4).to_bytes().unwrap();
        let mut v = good[..4].to_vec();
        v.extend_from_slice(&[0xA0, 0x00]);
        v.extend_from_slice(&good[5..good.len() - 2]);
        let crc = crc16(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        assert!(CodeFile::from_bytes(&v)
            .unwrap_err()
            .to_string()
            .contains("shortest form"));
    }

    proptest! {
        #[test]
        fn packed_files_round_trip_and_every_byte_is_checked(width in 1u32..300, height in 1u32..300, ks in proptest::collection::vec(2u32..70_000, 1..4), two in any::<bool>(), gray in any::<bool>(), pos in any::<usize>(), flip in 1u8..=255) {
            let mut f = packed(width, height, &ks, if two { 2 } else { 4 });
            f.colour = if gray { Colour::Gray } else { Colour::Rgb };
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(CodeFile::from_bytes(&bytes).unwrap(), f);
            let mut v = bytes.clone();
            v[pos % bytes.len()] ^= flip;
            prop_assert!(CodeFile::from_bytes(&v).is_err());
        }

        #[test]
        fn coded_files_round_trip_and_every_byte_is_checked(width in 1u32..2000, height in 1u32..2000, payload in proptest::collection::vec(any::<u8>(), 0..300), pos in any::<usize>(), flip in 1u8..=255) {
            let mut payload = payload;
            while payload.last() == Some(&0) {
                payload.pop();
            }
            let f = coded(width, height, payload);
            let bytes = f.to_bytes().unwrap();
            let mut back = CodeFile::from_bytes(&bytes).unwrap();
            back.resolve_vocabulary(512);
            back.codes = f.codes.clone();
            prop_assert_eq!(&back, &f);
            let mut v = bytes.clone();
            v[pos % bytes.len()] ^= flip;
            prop_assert!(CodeFile::from_bytes(&v).is_err());
        }

        #[test]
        fn arbitrary_bytes_after_the_magic_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&rest);
            let crc = crc16(&bytes);
            let _ = CodeFile::from_bytes(&bytes);
            // With a right CRC the fields themselves are parsed.
            bytes.extend_from_slice(&crc.to_le_bytes());
            if let Ok(f) = CodeFile::from_bytes(&bytes) {
                if f.entropy.is_none() {
                    prop_assert_eq!(f.to_bytes().unwrap(), bytes);
                }
            }
        }
    }
}
