//! The `.vqz` code file: one image as the grid of VQ-VAE code indices that the decoder turns
//! back into pixels, tied to the model that made it.
//!
//! Layout (version 1, all integers little-endian, 56-byte header then the payload). Version 1
//! holds one code per grid cell; it is still what is written when that is all a file needs,
//! so older builds read it.
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
//! Version 2 holds `L` codes per cell (a residual quantizer's levels), each level with its own
//! vocabulary. Its header is version 1's with these differences:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 4  | 2  | format version (2) |
//! | 40 | 4  | vocabulary of level 1 |
//! | 44 | 1  | bits per code of level 1 |
//! | 45 | 1  | depth L (1 to 64) |
//! | 46 | 1  | payload coding: 0 = packed, 1 = arithmetic-coded with a code prior |
//! | 47 | 1  | reserved, zero |
//! | 48 | 4  | payload length in bytes = ceil(grid cells × Σ bits of each level / 8) |
//! | 52 | 4  | CRC-32 of bytes 0..52, the level table and the payload |
//! | 56 | 4·L | level table: the vocabulary of each level (the first equals offset 40) |
//! | 56 + 4·L | … | level 1's codes (row-major), then level 2's, …, one bit stream, each code at its level's ⌈log2 V⌉ bits |
//!
//! Levels come first to last, so the codes of the first `l` levels are a prefix of the payload
//! (what `vq-cli decode --levels l` decodes).
//!
//! An arithmetic-coded file (coding 1, any depth) has a 13-byte block between the level table
//! and the payload: the prior's id (8 bytes: the first bytes of the SHA-256 of its weights),
//! the class it was coded with (1 byte, 255 for none), and the CRC-32 of the codes themselves
//! (each as 4 little-endian bytes, level by level), which tells a decoder
//! whose probabilities differed from the encoder's that it decoded the wrong codes. The
//! payload is the arithmetic coder's bytes ([`arithmetic`]); the codes need the prior to be
//! read ([`CodeFile::codes`] is empty until then).
//!
//! [`CodeFile::from_bytes`] checks every field against the others, so a truncated, padded or
//! corrupted file is an error, never a panic or a wrong image.

use thiserror::Error;

pub mod arithmetic;
pub mod npy;
pub mod v3;

pub const MAGIC: [u8; 4] = *b"VQZ\0";
/// The newest format version this build reads and writes (the compact layout, [`v3`]).
pub const VERSION: u16 = 3;
/// The newest version with the 56-byte header (what builds before version 3 read).
pub const LEGACY_VERSION: u16 = 2;
pub const HEADER_LEN: usize = 56;
/// Upper bound on the depth (codes per grid cell).
pub const MAX_DEPTH: usize = 64;
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
    /// The layout [`CodeFile::to_bytes`] writes: 1 or 2 (the 56-byte header, as read) or 3
    /// (compact, what this build writes).
    pub version: u16,
    /// The model's id (the first 16 bytes of the SHA-256 of its weights file) in versions 1
    /// and 2, its first [`v3::MODEL_ID_LEN`] bytes in version 3.
    pub model_id: Vec<u8>,
    pub colour: Colour,
    pub downsample: u8,
    pub width: u32,
    pub height: u32,
    pub grid_width: u32,
    pub grid_height: u32,
    /// The vocabulary of each level (one entry for a single codebook): its length is the
    /// depth. Empty in an arithmetic-coded version-3 file just read, which leaves it to the
    /// model ([`CodeFile::resolve_vocabulary`]).
    pub vocabularies: Vec<u32>,
    /// `depth × grid_height × grid_width` indices: level by level, each level row-major, each
    /// code below its level's vocabulary. Empty in an arithmetic-coded file just read.
    pub codes: Vec<u32>,
    /// How the codes are stored when not packed: arithmetic-coded with a prior.
    pub entropy: Option<EntropyCoding>,
}

/// An arithmetic-coded payload and what it takes to decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntropyCoding {
    /// The first bytes of the SHA-256 of the prior's weights (a small file's bytes count): 8
    /// in version 2, [`v3::PRIOR_ID_LEN`] in version 3.
    pub prior_id: Vec<u8>,
    /// The class the codes were coded with, for a class-conditional prior (version 2; version
    /// 3 codes the class as the payload's first symbol, and this is `None`).
    pub class: Option<u8>,
    /// [`codes_checksum`] of the codes (version 2), [`v3::codes_check`] (version 3).
    pub codes_crc: u32,
    /// The arithmetic coder's bytes.
    pub payload: Vec<u8>,
}

/// Bytes of the block that precedes an arithmetic-coded payload.
const ENTROPY_BLOCK_LEN: usize = 13;
/// Class byte of codes coded without a class.
const NO_CLASS: u8 = 255;

/// CRC-32 of codes, each as 4 little-endian bytes.
pub fn codes_checksum(codes: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for c in codes {
        h.update(&c.to_le_bytes());
    }
    h.finalize()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodeFileError {
    #[error("not a .vqz code file (it does not start with the VQZ magic bytes)")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads versions 1 to {VERSION}; a newer vq-cli wrote it)")]
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
    #[error("the file is damaged or cut short (its bytes have CRC-16 {found:04x}, it ends with {expected:04x})")]
    FileChecksum { expected: u16, found: u16 },
    #[error("the decoded codes do not match the file's checksum: the prior's probabilities differed from the encoder's (another prior, build or CPU)")]
    CodesChecksum,
    #[error("code {index} is {value}, outside its level's vocabulary of {codebook_size}")]
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
    /// Codes per grid cell.
    pub fn depth(&self) -> usize {
        self.vocabularies.len()
    }

    /// The first level's vocabulary (a single codebook's size).
    pub fn codebook_size(&self) -> u32 {
        self.vocabularies.first().copied().unwrap_or(0)
    }

    /// Grid cells (codes per level).
    pub fn cells(&self) -> usize {
        self.grid_width as usize * self.grid_height as usize
    }

    /// The legacy version of this file's content: 1 when one packed level is all the file
    /// holds, else 2 (those versions had one layout for each content).
    pub fn legacy_version(&self) -> u16 {
        if self.depth() == 1 && self.entropy.is_none() {
            1
        } else {
            2
        }
    }

    /// Sets the vocabulary of an arithmetic-coded version-3 file, which leaves it to the model
    /// that decodes it (one level: priors model one code per position).
    pub fn resolve_vocabulary(&mut self, vocabulary: u32) {
        if self.vocabularies.is_empty() {
            self.vocabularies = vec![vocabulary];
        }
    }

    /// Bits of the packed codes of one grid cell, all levels.
    pub(crate) fn bits_per_cell(&self) -> usize {
        self.vocabularies
            .iter()
            .map(|&v| bits_per_code(v) as usize)
            .sum()
    }

    /// The codes of every level, level after level, each code at its level's bits, one bit
    /// stream.
    pub(crate) fn packed_codes(&self) -> Vec<u8> {
        let cells = self.cells();
        let mut payload = Vec::with_capacity((cells * self.bits_per_cell()).div_ceil(8));
        let (mut acc, mut filled) = (0u64, 0u32);
        for (level, &v) in self.vocabularies.iter().enumerate() {
            let codes = &self.codes[level * cells..(level + 1) * cells];
            push_bits(&mut payload, &mut acc, &mut filled, codes, bits_per_code(v));
        }
        if filled > 0 {
            payload.push(acc as u8);
        }
        payload
    }

    /// Bits per pixel of the packed codes (header excluded).
    pub fn bits_per_pixel(&self) -> f64 {
        let bits = (self.cells() * self.bits_per_cell()) as f64;
        bits / (self.width as f64 * self.height as f64)
    }

    /// Keeps the first `levels` levels (a coarser image of a residual code file).
    pub fn truncate_levels(&mut self, levels: usize) {
        let levels = levels.min(self.depth());
        self.vocabularies.truncate(levels);
        self.codes.truncate(levels * self.cells());
    }

    /// Checks the fields against each other; [`CodeFile::to_bytes`] and
    /// [`CodeFile::from_bytes`] both call it.
    pub fn validate(&self) -> Result<(), CodeFileError> {
        self.validate_version()?;
        self.validate_header()?;
        let cells = self.cells();
        if self.vocabularies.is_empty() {
            // A version-3 coded file not yet given its model's vocabulary (checked in
            // `validate_header`): its codes cannot be read yet.
            return Ok(());
        }
        if let Some(e) = &self.entropy {
            if e.class == Some(NO_CLASS) {
                return Err(CodeFileError::Inconsistent(format!(
                    "class {NO_CLASS} is the mark of no class"
                )));
            }
            if self.codes.is_empty() {
                // Not decoded yet: nothing more to check.
                return Ok(());
            }
            let check = if self.version >= 3 {
                v3::codes_check(&self.codes)
            } else {
                codes_checksum(&self.codes)
            };
            if check != e.codes_crc {
                return Err(CodeFileError::CodesChecksum);
            }
        }
        if self.codes.len() != cells * self.depth() {
            return Err(CodeFileError::Inconsistent(format!(
                "{} codes for a {}×{} grid of depth {}",
                self.codes.len(),
                self.grid_width,
                self.grid_height,
                self.depth()
            )));
        }
        if let Some((index, &value)) = self
            .codes
            .iter()
            .enumerate()
            .find(|(i, &c)| c >= self.vocabularies[i / cells])
        {
            return Err(CodeFileError::CodeOutOfRange {
                index,
                value,
                codebook_size: self.vocabularies[index / cells],
            });
        }
        Ok(())
    }

    /// What the version requires of the content.
    fn validate_version(&self) -> Result<(), CodeFileError> {
        let bad = |m: String| Err(CodeFileError::Inconsistent(m));
        match self.version {
            1 | 2 => {
                if self.version != self.legacy_version() {
                    return bad(format!(
                        "version {} for {} (that content is version {})",
                        self.version,
                        if self.entropy.is_some() {
                            "arithmetic-coded codes"
                        } else {
                            "packed codes"
                        },
                        self.legacy_version()
                    ));
                }
                if self.model_id.len() != 16 {
                    return bad(format!("a {}-byte model id", self.model_id.len()));
                }
                if let Some(e) = &self.entropy {
                    if e.prior_id.len() != 8 {
                        return bad(format!("a {}-byte prior id", e.prior_id.len()));
                    }
                }
            }
            3 => v3::validate(self)?,
            other => return Err(CodeFileError::UnsupportedVersion(other)),
        }
        Ok(())
    }

    /// Everything but the codes themselves.
    pub(crate) fn validate_header(&self) -> Result<(), CodeFileError> {
        let bad = |m: String| Err(CodeFileError::Inconsistent(m));
        if self.vocabularies.is_empty() && self.version == 3 && self.entropy.is_some() {
            // Left to the model: checked once resolved.
        } else if self.vocabularies.is_empty() || self.vocabularies.len() > MAX_DEPTH {
            return bad(format!(
                "depth {} (must be 1 to {MAX_DEPTH})",
                self.vocabularies.len()
            ));
        }
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
        if let Some(v) = self
            .vocabularies
            .iter()
            .find(|&&v| !(2..=MAX_CODEBOOK).contains(&v))
        {
            return bad(format!("codebook size {v} (must be 2 to {MAX_CODEBOOK})"));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, CodeFileError> {
        self.validate()?;
        let version = self.version;
        if version == 3 {
            return Ok(v3::write(self));
        }
        let bits = bits_per_code(self.codebook_size());
        let payload = match &self.entropy {
            Some(e) => e.payload.clone(),
            None => self.packed_codes(),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.depth() + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
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
            self.codebook_size(),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let depth = if version == 1 { 0 } else { self.depth() as u8 };
        let coding = u8::from(self.entropy.is_some());
        out.extend_from_slice(&[bits, depth, coding, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut table: Vec<u8> = if version == 1 {
            Vec::new()
        } else {
            self.vocabularies
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        };
        if let Some(e) = &self.entropy {
            table.extend_from_slice(&e.prior_id);
            table.push(e.class.unwrap_or(NO_CLASS));
            table.extend_from_slice(&e.codes_crc.to_le_bytes());
        }
        let crc = checksum(&out, &table, &payload);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&table);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodeFileError> {
        if bytes.starts_with(&v3::MAGIC) {
            return v3::read(bytes);
        }
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
        if !(1..=LEGACY_VERSION).contains(&version) {
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
        let mut file = CodeFile {
            version,
            model_id: bytes[8..24].to_vec(),
            colour,
            downsample: bytes[7],
            width: u32_at(24),
            height: u32_at(28),
            grid_width: u32_at(32),
            grid_height: u32_at(36),
            vocabularies: vec![u32_at(40)],
            codes: Vec::new(),
            entropy: None,
        };
        let bits = bytes[44];
        let (depth, reserved) = match version {
            1 => (1, &bytes[45..48]),
            _ => (bytes[45] as usize, &bytes[47..48]),
        };
        if reserved.iter().any(|&b| b != 0) {
            return Err(CodeFileError::Inconsistent(
                "reserved header bytes are not zero".into(),
            ));
        }
        let coded = version > 1 && bytes[46] == 1;
        if version > 1 && bytes[46] > 1 {
            return Err(CodeFileError::Inconsistent(format!(
                "payload coding {} (this build reads 0, packed, and 1, arithmetic-coded)",
                bytes[46]
            )));
        }
        if !(1..=MAX_DEPTH).contains(&depth) {
            return Err(CodeFileError::Inconsistent(format!(
                "depth {depth} (must be 1 to {MAX_DEPTH})"
            )));
        }
        if version > 1 && depth == 1 && !coded {
            // One encoding per file: one packed level is written as version 1.
            return Err(CodeFileError::Inconsistent(
                "version 2 with one level (such a file is version 1)".into(),
            ));
        }
        let levels_len = if version == 1 { 0 } else { 4 * depth };
        let table_len = levels_len + if coded { ENTROPY_BLOCK_LEN } else { 0 };
        need("the level table", HEADER_LEN + table_len)?;
        let table = &bytes[HEADER_LEN..HEADER_LEN + table_len];
        if version > 1 {
            file.vocabularies = table[..levels_len]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if file.vocabularies[0] != u32_at(40) {
                return Err(CodeFileError::Inconsistent(format!(
                    "the level table starts with {} codes, the header says {}",
                    file.vocabularies[0],
                    u32_at(40)
                )));
            }
        }
        // Check the sizes before trusting them to size anything.
        file.validate_header()?;
        if bits != bits_per_code(file.codebook_size()) {
            return Err(CodeFileError::Inconsistent(format!(
                "{bits} bits per code for a codebook of {} (expected {})",
                file.codebook_size(),
                bits_per_code(file.codebook_size())
            )));
        }
        let cells = file.cells();
        let payload_bits = cells * file.bits_per_cell();
        // An arithmetic-coded payload has any non-empty length; packed codes have exactly theirs.
        let (payload_len, what) = if coded {
            let len = u32_at(48) as usize;
            if len == 0 {
                return Err(CodeFileError::Inconsistent(
                    "an empty arithmetic-coded payload".into(),
                ));
            }
            (len, "the coded payload")
        } else {
            let len = payload_bits.div_ceil(8);
            if u32_at(48) as usize != len {
                return Err(CodeFileError::Inconsistent(format!(
                    "payload length {} for {cells} cells of {} bits (expected {len})",
                    u32_at(48),
                    file.bits_per_cell()
                )));
            }
            (len, "the codes")
        };
        let start = HEADER_LEN + table_len;
        need(what, start + payload_len)?;
        if bytes.len() > start + payload_len {
            return Err(CodeFileError::TrailingBytes(
                bytes.len() - start - payload_len,
            ));
        }
        let payload = &bytes[start..];
        let (expected, found) = (u32_at(52), checksum(&bytes[..52], table, payload));
        if expected != found {
            return Err(CodeFileError::Checksum { expected, found });
        }
        if coded {
            let block = &table[levels_len..];
            file.entropy = Some(EntropyCoding {
                prior_id: block[..8].to_vec(),
                class: (block[8] != NO_CLASS).then_some(block[8]),
                codes_crc: u32::from_le_bytes(block[9..13].try_into().unwrap()),
                payload: payload.to_vec(),
            });
            return Ok(file);
        }
        file.unpack_codes(payload)?;
        Ok(file)
    }

    /// Reads packed codes (exactly their length, zero padding bits) into `codes`, and checks
    /// the file.
    pub(crate) fn unpack_codes(&mut self, payload: &[u8]) -> Result<(), CodeFileError> {
        let cells = self.cells();
        let payload_bits = cells * self.bits_per_cell();
        if payload.len() != payload_bits.div_ceil(8) {
            return Err(CodeFileError::Inconsistent(format!(
                "{} bytes of packed codes for {cells} cells of {} bits (expected {})",
                payload.len(),
                self.bits_per_cell(),
                payload_bits.div_ceil(8)
            )));
        }
        self.codes = unpack_levels(payload, &self.vocabularies, cells);
        if let Some(&last) = payload.last() {
            let used = payload_bits % 8;
            if used > 0 && last >> used != 0 {
                return Err(CodeFileError::Inconsistent(
                    "padding bits after the last code are not zero".into(),
                ));
            }
        }
        self.validate()
    }
}

/// CRC-32 of the header (up to the CRC field), the level table (version 2) and the payload.
fn checksum(header: &[u8], table: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..52]);
    h.update(table);
    h.update(payload);
    h.finalize()
}

/// Appends `values` at `bits` each to a bit stream (`acc` holds the `filled` bits not yet
/// written), least-significant bit first.
fn push_bits(out: &mut Vec<u8>, acc: &mut u64, filled: &mut u32, values: &[u32], bits: u8) {
    for &v in values {
        *acc |= (v as u64 & ((1u64 << bits) - 1)) << *filled;
        *filled += bits as u32;
        while *filled >= 8 {
            out.push(*acc as u8);
            *acc >>= 8;
            *filled -= 8;
        }
    }
}

/// Packs `values` at `bits` each, least-significant bit first.
pub fn pack(values: &[u32], bits: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity((values.len() * bits as usize).div_ceil(8));
    let (mut acc, mut filled) = (0u64, 0u32);
    push_bits(&mut out, &mut acc, &mut filled, values, bits);
    if filled > 0 {
        out.push(acc as u8);
    }
    out
}

/// The inverse of [`pack`]: `count` values of `bits` each.
pub fn unpack(bytes: &[u8], bits: u8, count: usize) -> Vec<u32> {
    unpack_levels_at(bytes, &[bits], count)
}

/// `cells` codes of each level, each at its vocabulary's bits, from one bit stream.
pub(crate) fn unpack_levels(bytes: &[u8], vocabularies: &[u32], cells: usize) -> Vec<u32> {
    let bits: Vec<u8> = vocabularies.iter().map(|&v| bits_per_code(v)).collect();
    unpack_levels_at(bytes, &bits, cells)
}

fn unpack_levels_at(bytes: &[u8], bits: &[u8], count: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(count * bits.len());
    let (mut acc, mut filled) = (0u64, 0u32);
    let mut bytes = bytes.iter();
    for &bits in bits {
        let mask = (1u64 << bits) - 1;
        for _ in 0..count {
            while filled < bits as u32 {
                acc |= (*bytes.next().unwrap_or(&0) as u64) << filled;
                filled += 8;
            }
            out.push((acc & mask) as u32);
            acc >>= bits;
            filled -= bits as u32;
        }
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
            version: 1,
            model_id: b"0123456789abcdef".to_vec(),
            colour: Colour::Rgb,
            downsample: 4,
            width,
            height,
            grid_width: gw,
            grid_height: gh,
            vocabularies: vec![k],
            codes: (0..gw * gh).map(|i| (i * 7919) % k).collect(),
            entropy: None,
        }
    }

    /// A depth-`l` file with the vocabularies `ks` cycled over the levels.
    fn deep(width: u32, height: u32, ks: &[u32], depth: usize) -> CodeFile {
        let mut f = sample(width, height, ks[0]);
        f.vocabularies = (0..depth).map(|l| ks[l % ks.len()]).collect();
        let cells = f.cells();
        f.codes = (0..cells * depth)
            .map(|i| (i as u32 * 7919) % f.vocabularies[i / cells])
            .collect();
        f.version = f.legacy_version();
        f
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
        v[4] = 3;
        assert_eq!(err(&v), CodeFileError::UnsupportedVersion(3));
        // A version-1 file relabelled 2 lacks its level table (depth byte 0).
        let mut v = good.clone();
        v[4] = 2;
        assert!(matches!(err(&v), CodeFileError::Inconsistent(_)));
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
        let crc = checksum(&bytes, &[], &payload);
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

    #[test]
    fn a_residual_file_is_version_2_and_its_prefix_levels_decode() {
        let f = deep(32, 32, &[512, 1000, 3], 4);
        let bytes = f.to_bytes().unwrap();
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
        assert_eq!(bytes[45], 4);
        let bits = 9 + 10 + 2 + 9;
        assert_eq!(
            bytes.len(),
            HEADER_LEN + 16 + (64 * bits as usize).div_ceil(8)
        );
        assert_eq!(f.bits_per_pixel(), 64.0 * bits as f64 / 1024.0);
        let back = CodeFile::from_bytes(&bytes).unwrap();
        assert_eq!(back, f);
        let mut two = back.clone();
        two.truncate_levels(2);
        assert_eq!(two.depth(), 2);
        assert_eq!(two.codes[..], f.codes[..2 * 64]);
        // A code above its own level's vocabulary (level 3 has 3 codes) is refused.
        let mut bad = f.clone();
        bad.codes[2 * 64 + 5] = 3;
        assert_eq!(
            bad.to_bytes().unwrap_err(),
            CodeFileError::CodeOutOfRange {
                index: 2 * 64 + 5,
                value: 3,
                codebook_size: 3
            }
        );
        // One level is written as version 1, byte for byte what older builds wrote.
        assert_eq!(
            u16::from_le_bytes([sample(8, 8, 512).to_bytes().unwrap()[4], 0]),
            1
        );
    }

    #[test]
    fn the_fuzz_seeds_are_valid_files_that_encode_back_to_themselves() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/vqz");
        let mut depths = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let file = CodeFile::from_bytes(&bytes).unwrap();
            assert_eq!(file.to_bytes().unwrap(), bytes);
            depths.push(file.depth());
        }
        assert!(depths.contains(&1) && depths.contains(&2), "{depths:?}");
    }

    #[test]
    fn an_arithmetic_coded_file_keeps_its_payload_and_checks_the_decoded_codes() {
        let mut f = deep(32, 32, &[512], 1);
        let codes = std::mem::take(&mut f.codes);
        f.version = 2;
        f.entropy = Some(EntropyCoding {
            prior_id: b"prior-id".to_vec(),
            class: Some(3),
            codes_crc: codes_checksum(&codes),
            payload: vec![0xA5; 40],
        });
        let bytes = f.to_bytes().unwrap();
        assert_eq!((bytes[4], bytes[45], bytes[46]), (2, 1, 1));
        assert_eq!(bytes.len(), HEADER_LEN + 4 + ENTROPY_BLOCK_LEN + 40);
        let mut back = CodeFile::from_bytes(&bytes).unwrap();
        assert_eq!(back, f);
        // Decoded codes are accepted only when they are the encoder's.
        back.codes = codes.clone();
        assert!(back.validate().is_ok());
        back.codes[7] ^= 1;
        assert_eq!(back.validate().unwrap_err(), CodeFileError::CodesChecksum);
        // Every byte is covered.
        for pos in 0..bytes.len() {
            let mut v = bytes.clone();
            v[pos] ^= 0x04;
            assert!(CodeFile::from_bytes(&v).is_err(), "byte {pos}");
        }
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
        fn deep_files_round_trip_and_every_byte_is_checked(width in 1u32..80, height in 1u32..80, ks in proptest::collection::vec(2u32..70_000, 1..4), depth in 1usize..9, pos in 0usize..4096, flip in 1u8..=255) {
            let f = deep(width, height, &ks, depth);
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(CodeFile::from_bytes(&bytes).unwrap(), f);
            let mut v = bytes.clone();
            let pos = pos % v.len();
            v[pos] ^= flip;
            prop_assert!(CodeFile::from_bytes(&v).is_err(), "byte {} ^ {:#x} accepted", pos, flip);
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
