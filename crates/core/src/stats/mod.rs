//! Per-tensor summaries: what every record carries, whatever its fidelity.
//!
//! One pass over a tensor's little-endian bytes produces a [`Summary`] (counts, extrema, mean,
//! std, L2 norm, abs-max and its index, a 64-bin histogram of log2|x|, and an XXH3-64 hash of the
//! raw bytes) and, when asked, a CountSketch ([`sketch`]) and the thumbnail of an NCHW tensor
//! ([`thumbnail`](mod@thumbnail)) from the same decoded chunks, so a record reads the tensor's
//! memory once.
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
pub use thumbnail::{Thumbnail, ThumbnailBuilder, thumbnail, thumbnail_parts};

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

/// Decode up to [`CHUNK`] elements of an f32/f16/bf16 tensor into `out` (exactly: both 16-bit
/// formats are subsets of f32). Returns `None` for other dtypes.
fn decode_chunk_f32(dtype: DType, bytes: &[u8], out: &mut [f32; CHUNK]) -> Option<usize> {
    macro_rules! decode {
        ($n:literal, $conv:expr) => {{
            let mut n = 0;
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact($n)) {
                let b: [u8; $n] = b.try_into().unwrap_or([0; $n]);
                *o = $conv(b);
                n += 1;
            }
            Some(n)
        }};
    }
    match dtype {
        DType::F32 => decode!(4, f32::from_le_bytes),
        DType::F16 => decode!(2, |b| half::f16::from_le_bytes(b).to_f32()),
        DType::BF16 => decode!(2, |b| half::bf16::from_le_bytes(b).to_f32()),
        _ => None,
    }
}

/// Streaming accumulator behind [`summarize`]; feed it the tensor's bytes in order. Results are
/// identical however the bytes are split: elements are processed in chunks of [`CHUNK`]
/// counted from the tensor's start, and a piece that ends inside a chunk leaves the rest of it
/// waiting for the next piece.
pub struct SummaryBuilder {
    dtype: DType,
    /// Bytes of a chunk begun by one piece and not yet completed (fewer than a chunk's).
    tail: Vec<u8>,
    hasher: Xxh3,
    count: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    zeros: u64,
    /// Zeros seen by the fast path (they also sit in `exp_counts[_][0]`).
    fast_zeros: u64,
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
    /// Fast path: counts by biased f32 exponent, interleaved tables (so runs of equal
    /// exponents do not serialise on one counter); folded into `hist` at the end.
    exp_counts: Box<[[u64; 256]; EXP_TABLES]>,
    buf: Box<[f64; CHUNK]>,
    buf32: Box<[f32; CHUNK]>,
    sketch: Option<SketchBuilder>,
    thumbnail: Option<ThumbnailBuilder>,
}

impl SummaryBuilder {
    pub fn new(dtype: DType) -> Self {
        SummaryBuilder {
            dtype,
            tail: Vec::new(),
            hasher: Xxh3::new(),
            count: 0,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            zeros: 0,
            fast_zeros: 0,
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
            exp_counts: Box::new([[0; 256]; EXP_TABLES]),
            buf: Box::new([0.0; CHUNK]),
            buf32: Box::new([0.0; CHUNK]),
            sketch: None,
            thumbnail: None,
        }
    }

    /// Also accumulate a CountSketch in the same pass.
    pub fn with_sketch(mut self, sketch: SketchBuilder) -> Self {
        self.sketch = Some(sketch);
        self
    }

    /// Also accumulate the thumbnail of a tensor of `shape` in the same pass (nothing for a
    /// shape that has none: not rank 4, or empty); see [`SummaryBuilder::finish_all`].
    pub fn with_thumbnail(mut self, shape: &[u64]) -> Self {
        self.thumbnail = ThumbnailBuilder::new(shape);
        self
    }

    /// Feed the next bytes of the tensor. The whole tensor must be a whole number of elements
    /// (callers validate tensor lengths up front; a ragged last element is hashed but not
    /// decoded).
    pub fn update(&mut self, mut bytes: &[u8]) {
        let chunk_bytes = CHUNK * self.dtype.size();
        if !self.tail.is_empty() {
            let take = (chunk_bytes - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tail.len() < chunk_bytes {
                return;
            }
            let tail = std::mem::take(&mut self.tail);
            self.chunk(&tail);
            self.tail = tail;
            self.tail.clear();
        }
        let whole = bytes.len() / chunk_bytes * chunk_bytes;
        for piece in bytes[..whole].chunks_exact(chunk_bytes) {
            self.chunk(piece);
        }
        self.tail.extend_from_slice(&bytes[whole..]);
    }

    /// One chunk (fewer elements only at the tensor's end), in order.
    fn chunk(&mut self, piece: &[u8]) {
        // Hash while the piece is in cache: one pass over memory for everything.
        self.hasher.update(piece);
        let start = self.count;
        let n = match decode_chunk_f32(self.dtype, piece, &mut self.buf32) {
            // All-finite f32-representable chunks take the fast path.
            Some(n) if all_finite_f32(&self.buf32[..n]) => {
                if let Some(sk) = self.sketch.as_mut() {
                    sk.update_finite_f32(start, &self.buf32[..n]);
                }
                if let Some(t) = self.thumbnail.as_mut() {
                    t.update_finite(&self.buf32[..n]);
                }
                self.finite_f32_chunk(start, n);
                n
            }
            _ => {
                let n = decode_chunk(self.dtype, piece, &mut self.buf);
                if let Some(sk) = self.sketch.as_mut() {
                    sk.update(start, &self.buf[..n]);
                }
                if let Some(t) = self.thumbnail.as_mut() {
                    t.update(&self.buf[..n]);
                }
                self.general_chunk(start, n);
                n
            }
        };
        self.count += n as u64;
    }

    /// Fast path over `buf32[..n]`, every value finite: one pass of shifted sums (shift = the
    /// chunk's first value, so the variance does not cancel), extrema, zeros and exponents.
    fn finite_f32_chunk(&mut self, start: u64, n: usize) {
        let vals = &self.buf32[..n];
        let shift = vals[0] as f64;
        let c = f32_kernel(vals, shift, &mut self.exp_counts);
        self.zeros += c.zeros as u64;
        self.fast_zeros += c.zeros as u64;
        let (cmin, cmax) = (c.min as f64, c.max as f64);
        self.min = self.min.min(cmin);
        self.max = self.max.max(cmax);
        let cam = cmax.max(-cmin);
        if cam > self.abs_max {
            self.abs_max = cam;
            let pos = vals
                .iter()
                .position(|&x| (x.abs() as f64) == cam)
                .unwrap_or(0);
            self.abs_max_index = start + pos as u64;
        }
        let nf = n as f64;
        let m2 = (c.sq - c.sum * c.sum / nf).max(0.0);
        let sumsq = c.sq + 2.0 * shift * c.sum + nf * shift * shift;
        self.merge_moments(n as u64, shift + c.sum / nf, m2, sumsq);
    }

    /// General path over `buf[..n]` (any dtype, non-finite values allowed): counts NaN/±Inf and
    /// folds the finite rest with a two-pass mean and M2.
    fn general_chunk(&mut self, start: u64, n: usize) {
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
        let (summary, sketch, _) = self.finish_all();
        (summary, sketch)
    }

    /// The finished summary, and the sketch and thumbnail when they were requested (the
    /// thumbnail is `None` also when the bytes fed did not match its shape).
    pub fn finish_all(mut self) -> (Summary, Option<Sketch>, Option<Thumbnail>) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.chunk(&tail);
        }
        // Fold the fast path's exponent counts into log2 bins. Biased exponent 0 holds zeros
        // (already counted in `zeros`) and subnormals (all below 2^-126: bin 0).
        for (e, total) in (0..256).map(|e| (e, self.exp_counts.iter().map(|t| t[e]).sum::<u64>())) {
            match e {
                0 => self.hist[0] += total - self.fast_zeros,
                255 => {} // never reached: non-finite chunks take the general path
                e => self.hist[hist_bin(f64::from_bits(((e as u64) + 1023 - 127) << 52))] += total,
            }
        }
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
        (
            summary,
            self.sketch.map(SketchBuilder::finish),
            self.thumbnail.and_then(ThumbnailBuilder::finish),
        )
    }
}

/// Interleaved exponent-count tables of the fast path.
const EXP_TABLES: usize = 8;

/// What the fast path learns from one chunk.
struct F32Chunk {
    min: f32,
    max: f32,
    zeros: u32,
    /// Σ(x − shift) and Σ(x − shift)², in f64.
    sum: f64,
    sq: f64,
}

/// Lanes of the fast path's accumulators: lane `i` folds the elements whose index within the
/// chunk is ≡ i (mod 8). Both implementations below follow this exactly, and add in the same
/// order, so their results are bit-identical.
const L: usize = 8;

/// Accumulator lanes of the fast path.
struct Lanes {
    min: [f32; L],
    max: [f32; L],
    zeros: [u32; L],
    sum: [f64; L],
    sq: [f64; L],
}

impl Lanes {
    fn new() -> Self {
        Lanes {
            min: [f32::INFINITY; L],
            max: [f32::NEG_INFINITY; L],
            zeros: [0; L],
            sum: [0.0; L],
            sq: [0.0; L],
        }
    }

    /// Fold `xs` (at most one group of `L`) into lanes 0.. in order.
    #[inline(always)]
    fn fold_scalar(&mut self, xs: &[f32], shift: f64) {
        for (i, &x) in xs.iter().enumerate() {
            let d = x as f64 - shift;
            self.sum[i] += d;
            self.sq[i] += d * d;
            self.min[i] = if x < self.min[i] { x } else { self.min[i] };
            self.max[i] = if x > self.max[i] { x } else { self.max[i] };
            self.zeros[i] += (x == 0.0) as u32;
        }
    }

    fn finish(&self) -> F32Chunk {
        F32Chunk {
            min: self.min.iter().copied().fold(f32::INFINITY, f32::min),
            max: self.max.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            zeros: self.zeros.iter().sum(),
            sum: self.sum.iter().sum(),
            sq: self.sq.iter().sum(),
        }
    }
}

/// Exponent counts of one chunk into interleaved tables.
#[inline(always)]
fn count_exponents(vals: &[f32], counts: &mut [[u64; 256]; EXP_TABLES]) {
    let mut groups = vals.chunks_exact(EXP_TABLES);
    for c in &mut groups {
        for (t, &x) in c.iter().enumerate() {
            counts[t][((x.to_bits() >> 23) & 0xff) as usize] += 1;
        }
    }
    for &x in groups.remainder() {
        counts[0][((x.to_bits() >> 23) & 0xff) as usize] += 1;
    }
}

fn f32_kernel_portable(
    vals: &[f32],
    shift: f64,
    counts: &mut [[u64; 256]; EXP_TABLES],
) -> F32Chunk {
    let mut lanes = Lanes::new();
    for c in vals.chunks(L) {
        lanes.fold_scalar(c, shift);
    }
    count_exponents(vals, counts);
    lanes.finish()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn f32_kernel_avx2(vals: &[f32], shift: f64, counts: &mut [[u64; 256]; EXP_TABLES]) -> F32Chunk {
    use std::arch::x86_64::*;
    let mut lanes = Lanes::new();
    let mut groups = vals.chunks_exact(L);
    // SAFETY (all intrinsics below): AVX2 is enabled for this function; loads and stores go
    // through `[f32; 8]`/`[f64; 4]` arrays of exactly the width they touch.
    unsafe {
        let shift4 = _mm256_set1_pd(shift);
        let zero = _mm256_setzero_ps();
        let (mut mn, mut mx) = (
            _mm256_set1_ps(f32::INFINITY),
            _mm256_set1_ps(f32::NEG_INFINITY),
        );
        let mut zeros = _mm256_setzero_si256();
        let (mut s_lo, mut s_hi, mut q_lo, mut q_hi) = (
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
        );
        for c in &mut groups {
            let x = _mm256_loadu_ps(c.as_ptr());
            // min/max(x, m) return m unless x < m (x > m): the scalar rule, NaN-free input.
            mn = _mm256_min_ps(x, mn);
            mx = _mm256_max_ps(x, mx);
            // Equal-to-zero lanes are all ones (-1): subtracting counts them.
            zeros = _mm256_sub_epi32(
                zeros,
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(x, zero)),
            );
            let d_lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), shift4);
            let d_hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)), shift4);
            s_lo = _mm256_add_pd(s_lo, d_lo);
            s_hi = _mm256_add_pd(s_hi, d_hi);
            q_lo = _mm256_add_pd(q_lo, _mm256_mul_pd(d_lo, d_lo));
            q_hi = _mm256_add_pd(q_hi, _mm256_mul_pd(d_hi, d_hi));
        }
        _mm256_storeu_ps(lanes.min.as_mut_ptr(), mn);
        _mm256_storeu_ps(lanes.max.as_mut_ptr(), mx);
        _mm256_storeu_si256(lanes.zeros.as_mut_ptr().cast(), zeros);
        _mm256_storeu_pd(lanes.sum.as_mut_ptr(), s_lo);
        _mm256_storeu_pd(lanes.sum.as_mut_ptr().add(4), s_hi);
        _mm256_storeu_pd(lanes.sq.as_mut_ptr(), q_lo);
        _mm256_storeu_pd(lanes.sq.as_mut_ptr().add(4), q_hi);
    }
    lanes.fold_scalar(groups.remainder(), shift);
    count_exponents(vals, counts);
    lanes.finish()
}

/// The fast-path kernel over one all-finite chunk, with AVX2 when the CPU has it (runtime
/// dispatch; identical results either way).
fn f32_kernel(vals: &[f32], shift: f64, counts: &mut [[u64; 256]; EXP_TABLES]) -> F32Chunk {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only requirement of this function.
        return unsafe { f32_kernel_avx2(vals, shift, counts) };
    }
    f32_kernel_portable(vals, shift, counts)
}

/// No NaN or ±Inf among `vals` (branch-free, so it vectorises).
fn all_finite_f32(vals: &[f32]) -> bool {
    vals.iter().fold(0u32, |acc, x| {
        acc | ((x.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
    }) == 0
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

    /// The specialised chunk decoders read what [`DType::decode`] reads.
    #[test]
    fn chunk_decoders_agree_with_the_dtype_decoder() {
        let bytes: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for d in DType::ALL {
            let mut out = [0f64; CHUNK];
            let n = decode_chunk(d, &bytes, &mut out);
            let want = d.decode_all(&bytes);
            assert_eq!(n, want.len(), "{d}");
            for (got, want) in out[..n].iter().zip(&want) {
                assert!(
                    got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                    "{d}"
                );
            }
            let mut out32 = [0f32; CHUNK];
            if let Some(n) = decode_chunk_f32(d, &bytes, &mut out32) {
                for (got, want) in out32[..n].iter().zip(&want) {
                    assert!(*got as f64 == *want || got.is_nan() && want.is_nan(), "{d}");
                }
            }
        }
    }

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
    fn dispatched_kernel_equals_portable_kernel() {
        // Awkward values: mixed magnitudes, zeros of both signs, subnormals, a ragged tail.
        let mut v: Vec<f32> = (0..CHUNK - 3)
            .map(|i| ((i * 7919) % 2003) as f32 * 0.37 - 300.0)
            .collect();
        v[3] = 0.0;
        v[9] = -0.0;
        v[17] = 1e-40;
        v[100] = 3.0e38;
        for n in [v.len(), 8, 5, 1] {
            let mut ca = Box::new([[0u64; 256]; EXP_TABLES]);
            let mut cb = Box::new([[0u64; 256]; EXP_TABLES]);
            let a = f32_kernel(&v[..n], v[0] as f64, &mut ca);
            let b = f32_kernel_portable(&v[..n], v[0] as f64, &mut cb);
            assert_eq!(a.min.to_bits(), b.min.to_bits());
            assert_eq!(a.max.to_bits(), b.max.to_bits());
            assert_eq!(a.zeros, b.zeros);
            assert_eq!(a.sum.to_bits(), b.sum.to_bits(), "n={n}");
            assert_eq!(a.sq.to_bits(), b.sq.to_bits(), "n={n}");
            assert_eq!(ca, cb);
        }
    }

    #[test]
    fn fast_and_general_paths_agree() {
        // The same values as f32 (fast path) and as f64 (general path).
        let v: Vec<f32> = (0..3000)
            .map(|i| {
                if i % 50 == 0 {
                    0.0
                } else {
                    ((i * 31) % 997) as f32 / 13.0 - 30.0
                }
            })
            .collect();
        let a = summarize(DType::F32, &f32_bytes(&v));
        let b = summarize(
            DType::F64,
            &v.iter()
                .flat_map(|&x| (x as f64).to_le_bytes())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            (a.count, a.zeros, a.min, a.max, a.abs_max, a.abs_max_index),
            (b.count, b.zeros, b.min, b.max, b.abs_max, b.abs_max_index)
        );
        assert_eq!(a.log2_hist, b.log2_hist);
        assert!(
            (a.mean - b.mean).abs() < 1e-12
                && (a.std - b.std).abs() < 1e-12
                && (a.l2 - b.l2).abs() < 1e-9
        );
    }

    #[test]
    fn chunked_updates_equal_one_update() {
        let v: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 10.0)
            .collect();
        let b = f32_bytes(&v);
        let whole = summarize(DType::F32, &b);
        // Chunk-sized pieces, and pieces that split chunks (and elements) anywhere.
        for size in [4 * 1024, 1000, 7, 4 * 1024 + 3] {
            let mut sb = SummaryBuilder::new(DType::F32);
            for piece in b.chunks(size) {
                sb.update(piece);
            }
            assert_eq!(sb.finish().0, whole, "pieces of {size} bytes");
        }
    }
}
