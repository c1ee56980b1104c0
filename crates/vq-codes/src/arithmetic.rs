//! A binary arithmetic coder over integer frequency tables (Witten, Neal and Cleary, 1987,
//! with 32-bit state): encoding a symbol of frequency `f` out of `total` costs about
//! `log2(total / f)` bits, so codes drawn with a prior's probabilities cost about the prior's
//! negative log-likelihood. Everything is integer arithmetic: the same tables give the same
//! bytes on every machine.

/// Largest table total the coder takes (the state's spare precision).
pub const MAX_TOTAL: u32 = 1 << 16;

const HALF: u64 = 1 << 31;
const QUARTER: u64 = 1 << 30;
const MASK: u64 = (1 << 32) - 1;

/// One symbol's interval in a frequency table: `[low, high)` out of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub low: u32,
    pub high: u32,
    pub total: u32,
}

/// Writes intervals as bits.
#[derive(Debug)]
pub struct Encoder {
    low: u64,
    high: u64,
    pending: u64,
    bits: BitWriter,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            low: 0,
            high: MASK,
            pending: 0,
            bits: BitWriter::default(),
        }
    }

    /// Narrows the state to `interval` (`low < high <= total <= MAX_TOTAL`).
    pub fn encode(&mut self, interval: Interval) {
        let Interval { low, high, total } = interval;
        debug_assert!(low < high && high <= total && total <= MAX_TOTAL);
        let range = self.high - self.low + 1;
        self.high = self.low + range * high as u64 / total as u64 - 1;
        self.low += range * low as u64 / total as u64;
        loop {
            if self.high < HALF {
                self.emit(false);
            } else if self.low >= HALF {
                self.emit(true);
                self.low -= HALF;
                self.high -= HALF;
            } else if self.low >= QUARTER && self.high < HALF + QUARTER {
                self.pending += 1;
                self.low -= QUARTER;
                self.high -= QUARTER;
            } else {
                break;
            }
            self.low <<= 1;
            self.high = (self.high << 1) | 1;
        }
    }

    fn emit(&mut self, bit: bool) {
        self.bits.push(bit);
        for _ in 0..self.pending {
            self.bits.push(!bit);
        }
        self.pending = 0;
    }

    /// The bytes: the shortest bit string that, followed by the zeros a [`Decoder`] reads past
    /// the end, lies in the final interval; trailing zero bytes are dropped, since the decoder
    /// reads them anyway.
    pub fn finish(mut self) -> Vec<u8> {
        // After the last renormalisation the interval spans more than a quarter, so two bits
        // always suffice.
        for k in 1..=32u32 {
            let step = 1u64 << (32 - k);
            let value = self.low.div_ceil(step) * step;
            if value <= self.high {
                for i in 0..k {
                    let bit = (value >> (31 - i)) & 1 == 1;
                    if i == 0 {
                        self.emit(bit);
                    } else {
                        self.bits.push(bit);
                    }
                }
                break;
            }
        }
        let mut bytes = self.bits.into_bytes();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }
}

/// Reads back the intervals an [`Encoder`] wrote, given the same tables.
#[derive(Debug)]
pub struct Decoder<'a> {
    low: u64,
    high: u64,
    value: u64,
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let mut d = Decoder {
            low: 0,
            high: MASK,
            value: 0,
            bytes,
            position: 0,
        };
        for _ in 0..32 {
            d.value = (d.value << 1) | d.next_bit();
        }
        d
    }

    /// Past the end, the stream reads as zeros (what the encoder's padding stands for).
    fn next_bit(&mut self) -> u64 {
        let byte = self.bytes.get(self.position / 8).copied().unwrap_or(0);
        let bit = (byte >> (7 - self.position % 8)) & 1;
        self.position += 1;
        bit as u64
    }

    /// The cumulative count the next symbol's interval contains, below `total`.
    pub fn target(&self, total: u32) -> u32 {
        let range = self.high - self.low + 1;
        let t = ((self.value - self.low + 1) * total as u64 - 1) / range;
        t.min(total as u64 - 1) as u32
    }

    /// Consumes the symbol whose interval holds [`Decoder::target`].
    pub fn consume(&mut self, interval: Interval) {
        let Interval { low, high, total } = interval;
        let range = self.high - self.low + 1;
        self.high = self.low + range * high as u64 / total as u64 - 1;
        self.low += range * low as u64 / total as u64;
        loop {
            if self.high < HALF {
            } else if self.low >= HALF {
                self.low -= HALF;
                self.high -= HALF;
                self.value -= HALF;
            } else if self.low >= QUARTER && self.high < HALF + QUARTER {
                self.low -= QUARTER;
                self.high -= QUARTER;
                self.value -= QUARTER;
            } else {
                break;
            }
            self.low <<= 1;
            self.high = (self.high << 1) | 1;
            self.value = (self.value << 1) | self.next_bit();
        }
    }
}

#[derive(Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    filled: u32,
}

impl BitWriter {
    fn push(&mut self, bit: bool) {
        if self.filled.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().expect("a byte was pushed") |= 0x80 >> (self.filled % 8);
        }
        self.filled += 1;
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A frequency table from probabilities: every symbol gets at least 1 of `MAX_TOTAL` (so any
/// code can be coded), the rest in proportion, largest remainders first. Integer-exact given
/// the same `f64` inputs.
pub fn frequencies(probabilities: &[f64]) -> Vec<u32> {
    let n = probabilities.len();
    assert!(n >= 1 && n < MAX_TOTAL as usize / 2, "table of {n} symbols");
    let spare = (MAX_TOTAL as usize - n) as f64;
    let sum: f64 = probabilities.iter().map(|p| p.max(0.0)).sum();
    let scaled: Vec<f64> = probabilities
        .iter()
        .map(|p| {
            if sum > 0.0 {
                p.max(0.0) / sum * spare
            } else {
                spare / n as f64
            }
        })
        .collect();
    let mut freqs: Vec<u32> = scaled.iter().map(|s| 1 + s.floor() as u32).collect();
    let assigned: u32 = freqs.iter().sum();
    let mut left = MAX_TOTAL - assigned;
    // Hand the remainder out by the fractional parts, ties to the lower index.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (scaled[a] - scaled[a].floor(), scaled[b] - scaled[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        freqs[i] += 1;
        left -= 1;
    }
    freqs
}

/// A frequency table from logits, computed the same to the bit on every machine: the
/// exponentials in `f64` by the `libm` crate's software `exp` (not the platform's), every
/// symbol at least 1 of `MAX_TOTAL`, the rest in proportion, rounded down, and what rounding
/// leaves over given to the most likely symbol (the first of equals). It costs no sort, unlike
/// [`frequencies`] (which files of format version 2 were coded with).
pub fn frequencies_of_logits(logits: &[f32]) -> Vec<u32> {
    let n = logits.len();
    assert!(n >= 1 && n < MAX_TOTAL as usize / 2, "table of {n} symbols");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let p: Vec<f64> = logits.iter().map(|&l| libm::exp(l as f64 - max)).collect();
    let sum: f64 = p.iter().sum();
    let spare = (MAX_TOTAL as usize - n) as f64;
    let mut freqs: Vec<u32> = p
        .iter()
        .map(|&p| 1 + ((p / sum * spare).floor() as u32).min(MAX_TOTAL - n as u32))
        .collect();
    let assigned: u32 = freqs.iter().sum();
    let top = (0..n).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    // Rounding down leaves over at most `n`; the most likely symbol holds at least
    // `spare / n`, so it absorbs either sign.
    freqs[top] = (freqs[top] as i64 + MAX_TOTAL as i64 - assigned as i64) as u32;
    freqs
}

/// The interval of `symbol` in `freqs`.
pub fn interval(freqs: &[u32], symbol: usize) -> Interval {
    let low: u32 = freqs[..symbol].iter().sum();
    Interval {
        low,
        high: low + freqs[symbol],
        total: freqs.iter().sum(),
    }
}

/// The symbol whose interval holds the decoder's target, and that interval.
pub fn find(freqs: &[u32], target: u32) -> (usize, Interval) {
    let total = freqs.iter().sum();
    let mut low = 0;
    for (symbol, &f) in freqs.iter().enumerate() {
        if target < low + f {
            return (
                symbol,
                Interval {
                    low,
                    high: low + f,
                    total,
                },
            );
        }
        low += f;
    }
    unreachable!("the target {target} is below the total {total}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(tables: &[Vec<u32>], symbols: &[usize]) -> Vec<u8> {
        let mut enc = Encoder::new();
        for (t, &s) in tables.iter().zip(symbols) {
            enc.encode(interval(t, s));
        }
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes);
        for (t, &s) in tables.iter().zip(symbols) {
            let total = t.iter().sum();
            let (got, iv) = find(t, dec.target(total));
            assert_eq!(got, s);
            dec.consume(iv);
        }
        bytes
    }

    #[test]
    fn skewed_tables_cost_their_information_content() {
        // 1,000 symbols of probability 0.9 each: about 152 bits.
        let table = frequencies(&[0.9, 0.05, 0.05]);
        let tables = vec![table; 1000];
        let bytes = round_trip(&tables, &[0; 1000]);
        let ideal = 1000.0 * -(0.9f64.log2()) / 8.0;
        assert!((bytes.len() as f64) < ideal + 4.0, "{} bytes", bytes.len());
    }

    #[test]
    fn frequency_tables_sum_to_the_total_and_keep_every_symbol() {
        let f = frequencies(&[1.0, 0.0, 1e-30, 0.5]);
        assert_eq!(f.iter().sum::<u32>(), MAX_TOTAL);
        assert!(f.iter().all(|&x| x >= 1));
        assert!(f[0] > f[3] && f[3] > f[1]);
        assert_eq!(frequencies(&[0.0, 0.0]), vec![MAX_TOTAL / 2, MAX_TOTAL / 2]);
    }

    proptest! {
        #[test]
        fn any_tables_and_symbols_round_trip(
            weights in proptest::collection::vec(proptest::collection::vec(0.0f64..1.0, 2..40), 1..200),
            picks in proptest::collection::vec(any::<u32>(), 200),
        ) {
            let tables: Vec<Vec<u32>> = weights.iter().map(|w| frequencies(w)).collect();
            let symbols: Vec<usize> = tables.iter().zip(&picks).map(|(t, &p)| p as usize % t.len()).collect();
            let bytes = round_trip(&tables, &symbols);
            let bits: f64 = tables.iter().zip(&symbols)
                .map(|(t, &s)| (MAX_TOTAL as f64 / t[s] as f64).log2())
                .sum();
            prop_assert!((bytes.len() * 8) as f64 <= bits + 16.0, "{} bytes for {} bits", bytes.len(), bits);
        }
    }
}
