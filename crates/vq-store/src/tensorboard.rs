//! TensorBoard event files (`events.out.tfevents.*`), so that `tensorboard --logdir runs/`
//! shows a run live: scalars and PNG pictures, written by hand in the documented format.
//!
//! The file is a TFRecord stream: each record is its length (u64, little-endian), the masked
//! CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. Each record's data is
//! a `tensorflow.Event` protocol buffer: `wall_time` (field 1, double), `step` (2, int64), and
//! either `file_version` (3, string, the first record: `brain.Event:2`) or `summary` (5): a
//! `Summary` of `Value`s, each a `tag` (1, string) and a `simple_value` (2, float) or an
//! `image` (4: `height` 1, `width` 2, `colorspace` 3, `encoded_image_string` 4). No crate on the
//! registries writes this without pulling in a protobuf toolchain, and the subset is small.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// CRC-32C (Castagnoli) of `bytes`, as TFRecord checks its records with.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let table: [u32; 256] = std::array::from_fn(|i| {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
        }
        c
    });
    !bytes.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8)
    })
}

/// TFRecord's masked CRC: rotated and offset, so that a CRC of data holding CRCs stays strong.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u32, out: &mut Vec<u8>) {
    varint(((field << 3) | wire) as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// What one summary value holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Scalar(f32),
    /// A PNG picture.
    Image {
        width: u32,
        height: u32,
        png: Vec<u8>,
    },
}

/// A tagged value of a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub tag: String,
    pub content: Content,
}

/// One event: a file version, or a summary of values at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub values: Vec<Value>,
}

impl Event {
    /// The event's protocol-buffer bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        key(1, 1, &mut out);
        out.extend_from_slice(&self.wall_time.to_le_bytes());
        key(2, 0, &mut out);
        varint(self.step as u64, &mut out);
        if let Some(version) = &self.file_version {
            bytes_field(3, version.as_bytes(), &mut out);
        }
        if !self.values.is_empty() {
            let mut summary = Vec::new();
            for value in &self.values {
                let mut v = Vec::new();
                bytes_field(1, value.tag.as_bytes(), &mut v);
                match &value.content {
                    Content::Scalar(x) => {
                        key(2, 5, &mut v);
                        v.extend_from_slice(&x.to_le_bytes());
                    }
                    Content::Image { width, height, png } => {
                        let mut image = Vec::new();
                        key(1, 0, &mut image);
                        varint(*height as u64, &mut image);
                        key(2, 0, &mut image);
                        varint(*width as u64, &mut image);
                        key(3, 0, &mut image);
                        varint(3, &mut image);
                        bytes_field(4, png, &mut image);
                        bytes_field(4, &image, &mut v);
                    }
                }
                bytes_field(1, &v, &mut summary);
            }
            bytes_field(5, &summary, &mut out);
        }
        out
    }
}

/// One TFRecord holding `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Why bytes are not an event file this module reads back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the file ends inside a record at byte {0}")]
    Truncated(usize),
    #[error("record at byte {0} fails its checksum")]
    Checksum(usize),
    #[error("record at byte {0} is not an Event: {1}")]
    Malformed(usize, &'static str),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next field: its number, and its bytes (length-delimited) or value (varint, fixed).
    fn field(&mut self) -> Option<(u32, Field<'a>)> {
        let k = self.varint()?;
        let field = (k >> 3) as u32;
        let f = match k & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            _ => return None,
        };
        Some((field, f))
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn parse_event(data: &[u8]) -> Option<Event> {
    let mut r = Reader { bytes: data, at: 0 };
    let mut event = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        values: Vec::new(),
    };
    while !r.done() {
        match r.field()? {
            (1, Field::Fixed64(bits)) => event.wall_time = f64::from_bits(bits),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(b)) => event.file_version = Some(String::from_utf8(b.to_vec()).ok()?),
            (5, Field::Bytes(summary)) => {
                let mut s = Reader {
                    bytes: summary,
                    at: 0,
                };
                while !s.done() {
                    let (1, Field::Bytes(value)) = s.field()? else {
                        return None;
                    };
                    event.values.push(parse_value(value)?);
                }
            }
            _ => {}
        }
    }
    Some(event)
}

fn parse_value(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader { bytes, at: 0 };
    let (mut tag, mut content) = (None, None);
    while !r.done() {
        match r.field()? {
            (1, Field::Bytes(t)) => tag = Some(String::from_utf8(t.to_vec()).ok()?),
            (2, Field::Fixed32(bits)) => content = Some(Content::Scalar(f32::from_bits(bits))),
            (4, Field::Bytes(image)) => {
                let mut i = Reader {
                    bytes: image,
                    at: 0,
                };
                let (mut width, mut height, mut png) = (0, 0, Vec::new());
                while !i.done() {
                    match i.field()? {
                        (1, Field::Varint(h)) => height = h as u32,
                        (2, Field::Varint(w)) => width = w as u32,
                        (4, Field::Bytes(p)) => png = p.to_vec(),
                        _ => {}
                    }
                }
                content = Some(Content::Image { width, height, png });
            }
            _ => {}
        }
    }
    Some(Value {
        tag: tag?,
        content: content?,
    })
}

/// The events of an event file's bytes, each record's checksums checked.
pub fn read_events(bytes: &[u8]) -> Result<Vec<Event>, EventError> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 12).ok_or(EventError::Truncated(at))?;
        let len_bytes = &head[..8];
        if masked_crc(len_bytes).to_le_bytes() != head[8..12] {
            return Err(EventError::Checksum(at));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let start = at + 12;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e.checked_add(4).is_some_and(|f| f <= bytes.len()))
            .ok_or(EventError::Truncated(at))?;
        let data = &bytes[start..end];
        if masked_crc(data).to_le_bytes() != bytes[end..end + 4] {
            return Err(EventError::Checksum(at));
        }
        events.push(parse_event(data).ok_or(EventError::Malformed(at, "bad protocol buffer"))?);
        at = end + 4;
    }
    Ok(events)
}

/// Appends events to a new `events.out.tfevents.*` file in a run folder; flushed after every
/// write, so that TensorBoard shows a run live.
#[derive(Debug)]
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// A new event file in `dir` (each process start makes its own, as PyTorch's
    /// `SummaryWriter` does; TensorBoard reads them all).
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "localhost".into());
        let wall = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.vqvae-rs",
            wall as u64,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time: wall,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            values: Vec::new(),
        })?;
        Ok(writer)
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<(), StoreError> {
        self.file
            .write_all(&record(&event.encode()))
            .and_then(|()| self.file.flush())
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Scalars at `step`, one event.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<(), StoreError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step,
            file_version: None,
            values: values
                .iter()
                .map(|(tag, v)| Value {
                    tag: tag.clone(),
                    content: Content::Scalar(*v as f32),
                })
                .collect(),
        })
    }

    /// A PNG picture at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        step: i64,
        width: u32,
        height: u32,
        png: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.write(&Event {
            wall_time: now(),
            step,
            file_version: None,
            values: vec![Value {
                tag: tag.into(),
                content: Content::Image { width, height, png },
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// CRC-32C's check value (RFC 3720 B.4) and TFRecord's framing of a known record.
    #[test]
    fn crc32c_is_castagnolis() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
    }

    proptest! {
        /// Events of scalars and pictures read back as written; a flipped byte or a cut is an
        /// error, never a wrong event or a panic.
        #[test]
        fn events_round_trip(
            step in 0i64..1_000_000,
            scalars in proptest::collection::vec(("[a-z/_]{1,12}", -1e6f32..1e6), 0..5),
            png in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut events = vec![Event { wall_time: 1.5, step: 0, file_version: Some("brain.Event:2".into()), values: vec![] }];
            events.push(Event {
                wall_time: 2.25,
                step,
                file_version: None,
                values: scalars.iter().map(|(t, v)| Value { tag: t.clone(), content: Content::Scalar(*v) })
                    .chain([Value { tag: "recon".into(), content: Content::Image { width: 4, height: 2, png: png.clone() } }])
                    .collect(),
            });
            let bytes: Vec<u8> = events.iter().flat_map(|e| record(&e.encode())).collect();
            prop_assert_eq!(read_events(&bytes).unwrap(), events);
            let mut bad = bytes.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x40;
            prop_assert!(read_events(&bad).is_err());
            prop_assert!(read_events(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    /// A file written by an independent implementation of the format (Python, for the fuzz
    /// seed): read as written, and our encoding of its events is the same bytes.
    #[test]
    fn a_file_written_elsewhere_reads_and_encodes_to_the_same_bytes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/tfevents/scalar-and-image");
        let bytes = std::fs::read(path).unwrap();
        let events = read_events(&bytes).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].step, 25);
        assert_eq!(events[1].values[0].tag, "train/loss");
        assert_eq!(events[1].values[0].content, Content::Scalar(0.25));
        assert!(matches!(
            &events[1].values[1].content,
            Content::Image { width: 3, height: 2, png } if png.as_slice() == b"\x89PNG"
        ));
        let ours: Vec<u8> = events.iter().flat_map(|e| record(&e.encode())).collect();
        assert_eq!(ours, bytes);
    }

    #[test]
    fn a_writer_makes_a_file_tensorboard_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(
            10,
            &[("train/loss".into(), 0.5), ("train/psnr".into(), 24.0)],
        )
        .unwrap();
        w.image("recon", 10, 1, 1, vec![1, 2, 3]).unwrap();
        let events = read_events(&std::fs::read(w.path()).unwrap()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 10);
        assert_eq!(events[1].values[1].content, Content::Scalar(24.0));
        assert!(w
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents."));
    }
}
