//! Per-tensor summaries: what every record carries, whatever its fidelity.
//!
//! One pass over a tensor's little-endian bytes produces a [`Summary`] (counts, extrema, mean,
//! std, L2 norm, abs-max and its index, a 64-bin histogram of log2|x|, and an XXH3-64 hash of the
//! raw bytes) and, when asked, a CountSketch ([`sketch`]) of the same elements. Thumbnails of
//! NCHW tensors are in [`thumbnail`].
//!
//! Invariants:
//! - Extrema, mean, std and L2 are over the *finite* elements only; NaN and ±Inf are counted,
//!   never folded into moments. With no finite element they are NaN (abs-max: NaN, index 0).
//! - Accumulation is in f64 over chunks of [`CHUNK`] elements, merged with Chan's parallel
//!   formula, so mean and std stay accurate for 10⁸ elements with a large mean/std ratio.
//! - The result depends only on the bytes, dtype and shape: never on threads or chunk timing.
//! - Nothing here knows about candle; inputs are plain byte slices.

pub mod sketch;
pub mod thumbnail;

use crate::dtype::DType;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

pub use sketch::{Sketch, SketchBuilder};
pub use thumbnail::{Thumbnail, thumbnail};

/// Elements processed per chunk: small enough to stay in L1 while several passes run over it.
pub const CHUNK: usize = 1024;

/// Number of log2|x| histogram bins.
pub const HIST_BINS: usize = 64;

/// Binary exponent mapped to bin 0; bin `b` holds finite non-zero x with
/// `floor(log2|x|) == b - HIST_OFFSET` (clamped into 0..=63).
pub const HIST_OFFSET: i64 = 40;

/// One-pass statistics of a tensor. See the module docs for what counts as finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of elements.
    pub count: u64,
    pub nan: u64,
    pub pos_inf: u64,
    pub neg_inf: u64,
    /// Elements equal to zero (either sign).
    pub zeros: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (divides by the number of finite elements).
    pub std: f64,
    /// Euclidean norm of the finite elements.
    pub l2: f64,
    pub abs_max: f64,
    /// Flat (row-major) index of the first element whose |x| equals `abs_max`.
    pub abs_max_index: u64,
    /// 64 bins of floor(log2|x|) over finite non-zero elements; see [`HIST_OFFSET`].
    pub log2_hist: Vec<u64>,
    /// XXH3-64 (seed 0) of the tensor's raw little-endian bytes.
    pub bits_hash: u64,
}

impl Summary {
    /// Number of finite elements.
    pub fn finite(&self) -> u64 {
        self.count - self.nan - self.pos_inf - self.neg_inf
    }

    /// True when any element is NaN or infinite.
    pub fn has_non_finite(&self) -> bool {
        self.nan + self.pos_inf + self.neg_inf > 0
    }
}

/// Histogram bin of a finite, non-zero value, from its f64 exponent bits.
#[inline(always)]
fn hist_bin(x: f64) -> usize {
    let exp = ((x.to_bits() >> 52) & 0x7ff) as i64 - 1023;
    (exp + HIST_OFFSET).clamp(0, HIST_BINS as i64 - 1) as usize
}

/// Decode up to [`CHUNK`] elements of `dtype` from `bytes` into `out`; returns the count.
/// `bytes.len()` must be a multiple of the element size and at most `CHUNK` elements.
fn decode_chunk(dtype: DType, bytes: &[u8], out: &mut [f64; CHUNK]) -> usize {
    macro_rules! decode {
        ($n:literal, $conv:expr) => {{
            let mut n = 0;
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact($n)) {
                let b: [u8; $n] = b.try_into().unwrap_or([0; $n]);
                *o = $conv(b);
                n += 1;
            }
            n
        }};
    }
    match dtype {
        DType::F32 => decode!(4, |b| f32::from_le_bytes(b) as f64),
        DType::F16 => decode!(2, |b| half::f16::from_le_bytes(b).to_f64()),
        DType::BF16 => decode!(2, |b| half::bf16::from_le_bytes(b).to_f64()),
        DType::F64 => decode!(8, f64::from_le_bytes),
        DType::I64 => decode!(8, |b| i64::from_le_bytes(b) as f64),
        DType::I32 => decode!(4, |b| i32::from_le_bytes(b) as f64),
        DType::U8 => decode!(1, |b: [u8; 1]| b[0] as f64),
    }
}

/// Streaming accumulator behind [`summarize`]; feed it whole elements in order.
pub struct SummaryBuilder {
    dtype: DType,
    hasher: Xxh3,
    count: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    zeros: u64,
    finite: u64,
    mean: f64,
    m2: f64,
    sumsq: f64,
    sumsq_comp: f64,
    min: f64,
    max: f64,
    abs_max: f64,
    abs_max_index: u64,
    hist: [u64; HIST_BINS],
    buf: Box<[f64; CHUNK]>,
    sketch: Option<SketchBuilder>,
}

impl SummaryBuilder {
    pub fn new(dtype: DType) -> Self {
        SummaryBuilder {
            dtype,
            hasher: Xxh3::new(),
            count: 0,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            zeros: 0,
            finite: 0,
            mean: 0.0,
            m2: 0.0,
            sumsq: 0.0,
            sumsq_comp: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            abs_max: -1.0,
            abs_max_index: 0,
            hist: [0; HIST_BINS],
            buf: Box::new([0.0; CHUNK]),
            sketch: None,
        }
    }

    /// Also accumulate a CountSketch in the same pass.
    pub fn with_sketch(mut self, sketch: SketchBuilder) -> Self {
        self.sketch = Some(sketch);
        self
    }

    /// Feed the next bytes of the tensor. `bytes.len()` must be a multiple of the element size
    /// (callers validate tensor lengths up front; a ragged tail is ignored).
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        let chunk_bytes = CHUNK * self.dtype.size();
        for piece in bytes.chunks(chunk_bytes) {
            let n = decode_chunk(self.dtype, piece, &mut self.buf);
            let start = self.count;
            let vals = &self.buf[..n];
            if let Some(sk) = self.sketch.as_mut() {
                sk.update(start, vals);
            }
            if vals.iter().all(|x| x.is_finite()) {
                self.finite_chunk(start, n);
            } else {
                self.mixed_chunk(start, n);
            }
            self.count += n as u64;
        }
    }

    /// Fast path: every value in `buf[..n]` is finite.
    fn finite_chunk(&mut self, start: u64, n: usize) {
        const L: usize = 8;
        let vals = &self.buf[..n];
        let mut sum = [0.0f64; L];
        let mut sq = [0.0f64; L];
        let mut mn = [f64::INFINITY; L];
        let mut mx = [f64::NEG_INFINITY; L];
        let mut am = [0.0f64; L];
        let mut zeros = [0u64; L];
        let mut lanes = vals.chunks_exact(L);
        for c in &mut lanes {
            for i in 0..L {
                let x = c[i];
                sum[i] += x;
                sq[i] += x * x;
                mn[i] = if x < mn[i] { x } else { mn[i] };
                mx[i] = if x > mx[i] { x } else { mx[i] };
                let a = x.abs();
                am[i] = if a > am[i] { a } else { am[i] };
                zeros[i] += (x == 0.0) as u64;
            }
        }
        for (i, &x) in lanes.remainder().iter().enumerate() {
            sum[i] += x;
            sq[i] += x * x;
            mn[i] = mn[i].min(x);
            mx[i] = mx[i].max(x);
            am[i] = am[i].max(x.abs());
            zeros[i] += (x == 0.0) as u64;
        }
        let csum: f64 = sum.iter().sum();
        let cmean = csum / n as f64;
        let mut dev = [0.0f64; L];
        let mut lanes = vals.chunks_exact(L);
        for c in &mut lanes {
            for i in 0..L {
                let d = c[i] - cmean;
                dev[i] += d * d;
            }
        }
        for (i, &x) in lanes.remainder().iter().enumerate() {
            dev[i] += (x - cmean) * (x - cmean);
        }
        // Histogram: four tables so runs of equal bins don't serialise on one counter.
        let mut hist = [[0u32; HIST_BINS]; 4];
        let mut quads = vals.chunks_exact(4);
        for c in &mut quads {
            for (t, &x) in c.iter().enumerate() {
                hist[t][hist_bin(x)] += 1;
            }
        }
        for &x in quads.remainder() {
            hist[0][hist_bin(x)] += 1;
        }
        let chunk_zeros: u64 = zeros.iter().sum();
        for (b, total) in self.hist.iter_mut().enumerate() {
            *total += (hist[0][b] + hist[1][b] + hist[2][b] + hist[3][b]) as u64;
        }
        // Zeros went into the lowest bin above; they belong to `zeros` only.
        self.hist[hist_bin(0.0)] -= chunk_zeros;
        self.zeros += chunk_zeros;

        let cmin = mn.iter().copied().fold(f64::INFINITY, f64::min);
        let cmax = mx.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cam = am.iter().copied().fold(0.0, f64::max);
        self.min = self.min.min(cmin);
        self.max = self.max.max(cmax);
        if cam > self.abs_max {
            self.abs_max = cam;
            let pos = vals.iter().position(|x| x.abs() == cam).unwrap_or(0);
            self.abs_max_index = start + pos as u64;
        }
        self.merge_moments(n as u64, cmean, dev.iter().sum(), sq.iter().sum());
    }

    /// Slow path for chunks holding NaN or ±Inf: count them, fold the finite rest.
    fn mixed_chunk(&mut self, start: u64, n: usize) {
        let mut finite = 0u64;
        let mut csum = 0.0;
        for (i, &x) in self.buf[..n].iter().enumerate() {
            if x.is_nan() {
                self.nan += 1;
            } else if x == f64::INFINITY {
                self.pos_inf += 1;
            } else if x == f64::NEG_INFINITY {
                self.neg_inf += 1;
            } else {
                finite += 1;
                csum += x;
                self.min = self.min.min(x);
                self.max = self.max.max(x);
                if x == 0.0 {
                    self.zeros += 1;
                } else {
                    self.hist[hist_bin(x)] += 1;
                }
                if x.abs() > self.abs_max {
                    self.abs_max = x.abs();
                    self.abs_max_index = start + i as u64;
                }
            }
        }
        if finite == 0 {
            return;
        }
        let cmean = csum / finite as f64;
        let (mut dev, mut sq) = (0.0, 0.0);
        for &x in self.buf[..n].iter().filter(|x| x.is_finite()) {
            dev += (x - cmean) * (x - cmean);
            sq += x * x;
        }
        self.merge_moments(finite, cmean, dev, sq);
    }

    /// Chan et al.'s pairwise merge of (count, mean, M2), plus a compensated sum of squares.
    fn merge_moments(&mut self, n: u64, mean: f64, m2: f64, sumsq: f64) {
        let total = self.finite + n;
        let delta = mean - self.mean;
        self.mean += delta * (n as f64 / total as f64);
        self.m2 += m2 + delta * delta * (self.finite as f64 * n as f64 / total as f64);
        self.finite = total;
        // Neumaier summation of the squares.
        let t = self.sumsq + sumsq;
        if self.sumsq.abs() >= sumsq.abs() {
            self.sumsq_comp += (self.sumsq - t) + sumsq;
        } else {
            self.sumsq_comp += (sumsq - t) + self.sumsq;
        }
        self.sumsq = t;
    }

    /// The finished summary and, when one was requested, the sketch.
    pub fn finish(self) -> (Summary, Option<Sketch>) {
        let none = self.finite == 0;
        let nan_if_none = |v: f64| if none { f64::NAN } else { v };
        let summary = Summary {
            count: self.count,
            nan: self.nan,
            pos_inf: self.pos_inf,
            neg_inf: self.neg_inf,
            zeros: self.zeros,
            min: nan_if_none(self.min),
            max: nan_if_none(self.max),
            mean: nan_if_none(self.mean),
            std: nan_if_none((self.m2 / self.finite.max(1) as f64).max(0.0).sqrt()),
            l2: (self.sumsq + self.sumsq_comp).sqrt(),
            abs_max: nan_if_none(self.abs_max),
            abs_max_index: self.abs_max_index,
            log2_hist: self.hist.to_vec(),
            bits_hash: self.hasher.digest(),
        };
        (summary, self.sketch.map(SketchBuilder::finish))
    }
}

/// Summary of a whole tensor given as little-endian bytes of `dtype`.
pub fn summarize(dtype: DType, bytes: &[u8]) -> Summary {
    let mut b = SummaryBuilder::new(dtype);
    b.update(bytes);
    b.finish().0
}

/// Summary and CountSketch (`k` buckets, seeded by `key` and `shape`) in one pass.
pub fn summarize_with_sketch(
    dtype: DType,
    bytes: &[u8],
    key: &str,
    shape: &[u64],
    k: usize,
) -> (Summary, Sketch) {
    let mut b = SummaryBuilder::new(dtype).with_sketch(SketchBuilder::new(key, shape, k));
    b.update(bytes);
    let (summary, sketch) = b.finish();
    let sketch = sketch.unwrap_or_else(|| SketchBuilder::new(key, shape, k).finish());
    (summary, sketch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn basic_values() {
        let v = [1.0f32, -2.0, 0.0, 4.0, 0.5];
        let s = summarize(DType::F32, &f32_bytes(&v));
        assert_eq!(s.count, 5);
        assert_eq!(s.zeros, 1);
        assert_eq!(s.min, -2.0);
        assert_eq!(s.max, 4.0);
        assert!((s.mean - 0.7).abs() < 1e-12);
        let var = v.iter().map(|&x| (x as f64 - 0.7).powi(2)).sum::<f64>() / 5.0;
        assert!((s.std - var.sqrt()).abs() < 1e-12);
        assert!((s.l2 - (1.0f64 + 4.0 + 16.0 + 0.25).sqrt()).abs() < 1e-12);
        assert_eq!(s.abs_max, 4.0);
        assert_eq!(s.abs_max_index, 3);
        // 1.0 -> exponent 0, -2.0 -> 1, 4.0 -> 2, 0.5 -> -1.
        for (e, c) in [(0, 1), (1, 1), (2, 1), (-1, 1)] {
            assert_eq!(s.log2_hist[(e + HIST_OFFSET) as usize], c, "exponent {e}");
        }
        assert_eq!(s.log2_hist.iter().sum::<u64>(), 4);
        assert_eq!(s.bits_hash, xxhash_rust::xxh3::xxh3_64(&f32_bytes(&v)));
    }

    #[test]
    fn non_finite_are_counted_not_folded() {
        let mut v = vec![1.0f32; 3000];
        v[5] = f32::NAN;
        v[1500] = f32::INFINITY;
        v[2999] = f32::NEG_INFINITY;
        v[2000] = -7.0;
        let s = summarize(DType::F32, &f32_bytes(&v));
        assert_eq!((s.nan, s.pos_inf, s.neg_inf), (1, 1, 1));
        assert_eq!(s.finite(), 2997);
        assert_eq!(s.min, -7.0);
        assert_eq!(s.max, 1.0);
        assert_eq!(s.abs_max_index, 2000);
        assert!(s.mean.is_finite() && s.std.is_finite());
    }

    #[test]
    fn all_nan_gives_nan_moments() {
        let s = summarize(DType::F32, &f32_bytes(&[f32::NAN; 10]));
        assert_eq!(s.nan, 10);
        assert!(s.mean.is_nan() && s.min.is_nan() && s.abs_max.is_nan());
        assert_eq!(s.l2, 0.0);
    }

    #[test]
    fn empty_tensor() {
        let s = summarize(DType::F16, &[]);
        assert_eq!(s.count, 0);
        assert!(s.mean.is_nan());
    }

    #[test]
    fn precise_for_large_mean_small_spread() {
        // 3 million values 1e4 + small alternating offsets: naive sum-of-squares variance fails.
        let n = 3_000_000usize;
        let v: Vec<f64> = (0..n)
            .map(|i| 1e4 + if i % 2 == 0 { 1e-3 } else { -1e-3 })
            .collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let s = summarize(DType::F64, &bytes);
        assert!((s.mean - 1e4).abs() < 1e-9, "mean {}", s.mean);
        assert!((s.std - 1e-3).abs() / 1e-3 < 1e-6, "std {}", s.std);
    }

    #[test]
    fn every_dtype_decodes() {
        let vals = [1.5f64, -3.0, 0.0, 2.0];
        let cases: Vec<(DType, Vec<u8>)> = vec![
            (
                DType::F32,
                vals.iter()
                    .flat_map(|&x| (x as f32).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F16,
                vals.iter()
                    .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
                    .collect(),
            ),
            (
                DType::BF16,
                vals.iter()
                    .flat_map(|&x| half::bf16::from_f64(x).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F64,
                vals.iter().flat_map(|&x| x.to_le_bytes()).collect(),
            ),
        ];
        for (d, b) in cases {
            let s = summarize(d, &b);
            assert_eq!((s.min, s.max, s.zeros), (-3.0, 2.0, 1), "{d}");
            assert_eq!(s.abs_max_index, 1, "{d}");
        }
        let ints: Vec<u8> = [3i64, -9, 4].iter().flat_map(|x| x.to_le_bytes()).collect();
        let s = summarize(DType::I64, &ints);
        assert_eq!((s.min, s.max, s.abs_max), (-9.0, 4.0, 9.0));
        let s = summarize(DType::U8, &[0, 255, 7]);
        assert_eq!((s.min, s.max, s.zeros), (0.0, 255.0, 1));
        let i32s: Vec<u8> = [-5i32, 6].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(summarize(DType::I32, &i32s).mean, 0.5);
    }

    #[test]
    fn chunked_updates_equal_one_update() {
        let v: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 10.0)
            .collect();
        let b = f32_bytes(&v);
        let whole = summarize(DType::F32, &b);
        let mut sb = SummaryBuilder::new(DType::F32);
        for piece in b.chunks(4 * 1024) {
            sb.update(piece);
        }
        assert_eq!(sb.finish().0, whole);
    }
}
