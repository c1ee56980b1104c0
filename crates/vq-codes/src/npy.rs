//! NumPy's `.npy` format for integer arrays: codes `(N, L, h, w)` and labels `(N,)` that
//! `numpy.load` and `torch.from_numpy` read without this project's code, and that other tools'
//! codes come back in by.
//!
//! Written: format version 1.0 (2.0 when the header would not fit 65,535 bytes), C order,
//! little-endian, the header padded so that the data starts at a multiple of 64 bytes, byte for
//! byte what `numpy.save` writes. Read: versions 1.0, 2.0 and 3.0, every integer type of either
//! byte order, C order. Anything else (floats, Fortran order, object arrays, a cut file) is a
//! [`NpyError`] saying what is wrong.

use std::fmt;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Data starts at a multiple of this many bytes (what NumPy aligns to since 1.x).
const ALIGN: usize = 64;
/// Elements a file may claim before it is refused as implausible (2^40: far beyond any code
/// set, small enough that a forged shape cannot make the reader allocate without bound).
const MAX_ELEMENTS: u128 = 1 << 40;

/// An integer element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
}

impl Dtype {
    /// Bytes an element takes.
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 => 4,
            Dtype::I64 | Dtype::U64 => 8,
        }
    }

    fn signed(self) -> bool {
        matches!(self, Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64)
    }

    /// The values this type holds.
    pub fn range(self) -> (i128, i128) {
        let bits = 8 * self.size() as u32;
        if self.signed() {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        }
    }

    /// NumPy's `descr` of the little-endian type (`|` for one byte, as NumPy writes it).
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::I8 => "|i1",
            Dtype::U8 => "|u1",
            Dtype::I16 => "<i2",
            Dtype::U16 => "<u2",
            Dtype::I32 => "<i4",
            Dtype::U32 => "<u4",
            Dtype::I64 => "<i8",
            Dtype::U64 => "<u8",
        }
    }

    /// The smallest signed type that holds every value in `min..=max` (codes and labels are
    /// written signed, which is what PyTorch's indices are).
    pub fn smallest_signed(min: i64, max: i64) -> Dtype {
        [Dtype::I8, Dtype::I16, Dtype::I32]
            .into_iter()
            .find(|d| {
                let (lo, hi) = d.range();
                lo <= min as i128 && max as i128 <= hi
            })
            .unwrap_or(Dtype::I64)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::I16 => "int16",
            Dtype::U16 => "uint16",
            Dtype::I32 => "int32",
            Dtype::U32 => "uint32",
            Dtype::I64 => "int64",
            Dtype::U64 => "uint64",
        };
        f.write_str(name)
    }
}

/// An integer array: its shape and its elements in C order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
    /// The element type it was read as (or is to be written as).
    pub dtype: Dtype,
}

/// Why bytes are not an integer `.npy` array this module reads, or an array cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    #[error("not a NumPy .npy file (it does not start with \\x93NUMPY)")]
    NotNpy,
    #[error(".npy format version {0}.{1}, not 1.0, 2.0 or 3.0")]
    Version(u8, u8),
    #[error("the file ends inside its {0}")]
    Truncated(&'static str),
    #[error("its header is not a .npy header: {0}")]
    Header(String),
    #[error("its elements are {0}, not integers (codes and labels are integer arrays)")]
    NotIntegers(String),
    #[error("it is stored in Fortran order; save it in C order (numpy.ascontiguousarray)")]
    FortranOrder,
    #[error("its shape {0:?} claims more elements than a code array can have")]
    TooLarge(Vec<usize>),
    #[error("its shape {shape:?} needs {expected} bytes of data, the file has {found}")]
    DataLength {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("value {value} does not fit {dtype}")]
    Overflow { value: i128, dtype: Dtype },
    #[error("shape {shape:?} holds {expected} elements, not {found}")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
}

impl Array {
    /// An array of `shape` holding `data`, written as `dtype`; checks that the sizes agree and
    /// every value fits.
    pub fn new(shape: Vec<usize>, data: Vec<i64>, dtype: Dtype) -> Result<Array, NpyError> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(NpyError::ShapeMismatch {
                shape,
                expected,
                found: data.len(),
            });
        }
        let (lo, hi) = dtype.range();
        if let Some(&v) = data.iter().find(|&&v| (v as i128) < lo || (v as i128) > hi) {
            return Err(NpyError::Overflow {
                value: v as i128,
                dtype,
            });
        }
        Ok(Array { shape, data, dtype })
    }

    /// The `.npy` file: what `numpy.save` writes for the same array.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.as_slice() {
            [one] => format!("({one},)"),
            dims => format!(
                "({})",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let dict = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.dtype.descr()
        );
        // Version 1.0 has a 2-byte header length, 2.0 a 4-byte one.
        let (version, len_bytes) = if dict.len() + 1 + 10 <= u16::MAX as usize {
            (1u8, 2)
        } else {
            (2u8, 4)
        };
        let prefix = MAGIC.len() + 2 + len_bytes;
        let header_len = (prefix + dict.len() + 1).div_ceil(ALIGN) * ALIGN - prefix;
        let mut out = Vec::with_capacity(prefix + header_len + self.data.len() * self.dtype.size());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0]);
        if len_bytes == 2 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(prefix + header_len - 1, b' ');
        out.push(b'\n');
        for &v in &self.data {
            let bytes = v.to_le_bytes();
            out.extend_from_slice(&bytes[..self.dtype.size()]);
        }
        out
    }

    /// Reads a `.npy` file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Array, NpyError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(NpyError::NotNpy);
        }
        let version = bytes.get(6..8).ok_or(NpyError::Truncated("version"))?;
        let len_bytes = match (version[0], version[1]) {
            (1, 0) => 2,
            (2, 0) | (3, 0) => 4,
            (major, minor) => return Err(NpyError::Version(major, minor)),
        };
        let len_field = bytes
            .get(8..8 + len_bytes)
            .ok_or(NpyError::Truncated("header length"))?;
        let header_len = len_field
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let start = 8 + len_bytes;
        let header = bytes
            .get(start..start + header_len)
            .ok_or(NpyError::Truncated("header"))?;
        let header =
            std::str::from_utf8(header).map_err(|_| NpyError::Header("not UTF-8 text".into()))?;
        let (dtype, big_endian, shape) = parse_header(header)?;
        let count = shape
            .iter()
            .try_fold(1u128, |acc, &d| {
                let n = acc * d as u128;
                (n <= MAX_ELEMENTS).then_some(n)
            })
            .ok_or_else(|| NpyError::TooLarge(shape.clone()))? as usize;
        let data = &bytes[start + header_len..];
        let size = dtype.size();
        if data.len() != count * size {
            return Err(NpyError::DataLength {
                shape,
                expected: count * size,
                found: data.len(),
            });
        }
        let values = data
            .chunks_exact(size)
            .map(|chunk| {
                let mut le = [0u8; 8];
                le[..size].copy_from_slice(chunk);
                if big_endian {
                    le[..size].reverse();
                }
                let raw = u64::from_le_bytes(le);
                if dtype.signed() {
                    let shift = 64 - 8 * size as u32;
                    Ok(((raw << shift) as i64) >> shift)
                } else if raw > i64::MAX as u64 {
                    Err(NpyError::Overflow {
                        value: raw as i128,
                        dtype: Dtype::I64,
                    })
                } else {
                    Ok(raw as i64)
                }
            })
            .collect::<Result<Vec<i64>, NpyError>>()?;
        Ok(Array {
            shape,
            data: values,
            dtype,
        })
    }
}

/// The `descr`, its byte order and the shape of a header such as
/// `{'descr': '<i2', 'fortran_order': False, 'shape': (3, 1, 8, 8), }`.
fn parse_header(header: &str) -> Result<(Dtype, bool, Vec<usize>), NpyError> {
    let bad = |what: &str| NpyError::Header(format!("{what} in {:?}", header.trim_end()));
    let body = header
        .trim_end()
        .strip_prefix('{')
        .and_then(|h| h.strip_suffix('}'))
        .ok_or_else(|| bad("no {...} dictionary"))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for item in split_top_level(body) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once(':')
            .ok_or_else(|| bad("an entry without ':'"))?;
        let value = value.trim();
        match key.trim().trim_matches(|c| c == '\'' || c == '"') {
            "descr" => descr = Some(value.trim_matches(|c| c == '\'' || c == '"').to_string()),
            "fortran_order" => {
                fortran = Some(match value {
                    "False" => false,
                    "True" => true,
                    _ => return Err(bad("a fortran_order that is neither True nor False")),
                })
            }
            "shape" => {
                let inner = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| bad("a shape that is not a tuple"))?;
                shape = Some(
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.trim_end_matches('L').parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| bad("a shape of other than whole numbers"))?,
                )
            }
            _ => return Err(bad("an unknown key")),
        }
    }
    let descr = descr.ok_or_else(|| bad("no 'descr'"))?;
    if fortran.ok_or_else(|| bad("no 'fortran_order'"))? {
        return Err(NpyError::FortranOrder);
    }
    let shape = shape.ok_or_else(|| bad("no 'shape'"))?;
    let (Some(order), Some(kind)) = (descr.get(..1), descr.get(1..)) else {
        return Err(NpyError::NotIntegers(descr));
    };
    let dtype = match kind {
        "i1" => Dtype::I8,
        "u1" => Dtype::U8,
        "i2" => Dtype::I16,
        "u2" => Dtype::U16,
        "i4" => Dtype::I32,
        "u4" => Dtype::U32,
        "i8" => Dtype::I64,
        "u8" => Dtype::U64,
        _ => return Err(NpyError::NotIntegers(descr)),
    };
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(NpyError::NotIntegers(descr)),
    };
    Ok((dtype, big_endian && dtype.size() > 1, shape))
}

/// `body` split at the commas outside parentheses.
fn split_top_level(body: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Dtype; 8] = [
        Dtype::I8,
        Dtype::U8,
        Dtype::I16,
        Dtype::U16,
        Dtype::I32,
        Dtype::U32,
        Dtype::I64,
        Dtype::U64,
    ];

    proptest! {
        /// Any shape and values of any type come back as they went in, aligned as NumPy aligns.
        #[test]
        fn round_trip(
            shape in proptest::collection::vec(0usize..5, 0..5),
            which in 0usize..8,
            seed in any::<u64>(),
        ) {
            let dtype = ALL[which];
            let (lo, hi) = dtype.range();
            let (lo, hi) = (lo.max(i64::MIN as i128), hi.min(i64::MAX as i128));
            let n: usize = shape.iter().product();
            let mut state = seed;
            let data: Vec<i64> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let span = (hi - lo) as u128 + 1;
                    (lo + ((state as u128 * 0x9E37_79B9) % span) as i128) as i64
                })
                .collect();
            let array = Array::new(shape, data, dtype).unwrap();
            let bytes = array.to_bytes();
            let header_end = bytes.len() - n * dtype.size();
            prop_assert_eq!(header_end % ALIGN, 0);
            prop_assert_eq!(bytes[header_end - 1], b'\n');
            prop_assert_eq!(Array::from_bytes(&bytes).unwrap(), array);
        }

        /// Cut anywhere, a file is refused with an error, never read wrong or panicking.
        #[test]
        fn cut_files_are_refused(cut in 0usize..200) {
            let array = Array::new(vec![2, 3, 4], (0..24).collect(), Dtype::I16).unwrap();
            let bytes = array.to_bytes();
            prop_assume!(cut < bytes.len());
            prop_assert!(Array::from_bytes(&bytes[..cut]).is_err());
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn junk_never_panics(junk in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&junk);
            let _ = Array::from_bytes(&bytes);
        }
    }

    /// Files that NumPy 2.4 itself wrote (`tests/fixtures/npy/`, made by `np.save`): ours are
    /// the same bytes, and theirs read back, big-endian and version 2.0 included.
    #[test]
    fn numpy_files_read_and_ours_are_byte_identical() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/npy");
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let codes: Vec<i64> = (0..24).map(|i| (i * 37) % 512).collect();
        let ours = Array::new(vec![2, 1, 3, 4], codes.clone(), Dtype::I16).unwrap();
        assert_eq!(ours.to_bytes(), read("codes_i16.npy"));
        assert_eq!(Array::from_bytes(&read("codes_i16.npy")).unwrap(), ours);
        let labels = Array::new(vec![5], vec![0, 9, 3, -1, 7], Dtype::I64).unwrap();
        assert_eq!(labels.to_bytes(), read("labels_i64.npy"));
        let bytes = Array::new(vec![3], vec![0, 255, 7], Dtype::U8).unwrap();
        assert_eq!(bytes.to_bytes(), read("u8.npy"));
        let scalar = Array::new(vec![], vec![42], Dtype::I32).unwrap();
        assert_eq!(scalar.to_bytes(), read("scalar_i32.npy"));
        let big = Array::from_bytes(&read("big_endian_i4.npy")).unwrap();
        assert_eq!((big.shape, big.data), (vec![2, 2], vec![1, -2, 300, 70000]));
        let v2 = Array::from_bytes(&read("version2_u2.npy")).unwrap();
        assert_eq!((v2.shape, v2.data), (vec![3], vec![1, 2, 65535]));
    }

    #[test]
    fn what_is_not_an_integer_array_is_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/npy");
        let err = Array::from_bytes(&std::fs::read(dir.join("float32.npy")).unwrap()).unwrap_err();
        assert_eq!(err, NpyError::NotIntegers("<f4".into()));
        let err =
            Array::from_bytes(&std::fs::read(dir.join("fortran_i4.npy")).unwrap()).unwrap_err();
        assert_eq!(err, NpyError::FortranOrder);
        assert_eq!(Array::from_bytes(b"PK\x03\x04"), Err(NpyError::NotNpy));
        let mut bytes = Array::new(vec![4], vec![1, 2, 3, 4], Dtype::I32)
            .unwrap()
            .to_bytes();
        bytes.pop();
        assert!(matches!(
            Array::from_bytes(&bytes),
            Err(NpyError::DataLength {
                expected: 16,
                found: 15,
                ..
            })
        ));
        assert!(matches!(
            Array::new(vec![1], vec![300], Dtype::I8),
            Err(NpyError::Overflow { .. })
        ));
        assert_eq!(Dtype::smallest_signed(0, 511), Dtype::I16);
        assert_eq!(Dtype::smallest_signed(-1, 9), Dtype::I8);
    }
}
