//! Per-pair metrics: one streaming pass over two tensors' bytes, summary deltas without
//! payloads, and image metrics (PSNR, SSIM).
//!
//! [`PairAccumulator`] takes the two tensors' little-endian bytes in matching pieces (the same
//! number of elements from each side, in order) and keeps only O(1) state: sums, extrema, a
//! 65-bin histogram of ULP distances. Elements where either side is NaN or ±∞ are left out of
//! every numeric metric; where the two sides' classes differ (finite / NaN / +∞ / −∞) they count
//! as a positional NaN/Inf mismatch. ULP distances are only defined for equal dtypes: the
//! distance between two floats is the number of representable values between them (±0 are
//! equal), between two integers their difference. The p99 ULP distance is read off the
//! histogram whose bin k ≥ 1 holds distances in [2^(k−1), 2^k), and is reported as the bin's
//! upper edge 2^k − 1 (exact for 0 and 1, otherwise within a factor of two).

use crate::dtype::DType;
use crate::stats::Summary;
use serde::{Deserialize, Serialize};

use super::jf64;
use super::tolerance::Tol;

/// Elements decoded per inner batch.
const BATCH: usize = 1024;

/// Metrics of one pair computed from both payloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PayloadMetrics {
    /// Elements in each tensor.
    pub count: u64,
    /// Elements finite on both sides (the ones the numeric metrics cover).
    pub compared: u64,
    /// Bit-for-bit equal (same dtype and bytes).
    pub bit_identical: bool,
    /// Flat index of the first element whose bits (values, for different dtypes) differ.
    pub first_diff_index: Option<u64>,
    #[serde(with = "jf64")]
    pub max_abs: f64,
    /// Flat index of the first element with |a−b| = max_abs.
    pub max_abs_index: u64,
    #[serde(with = "jf64")]
    pub mean_abs: f64,
    /// ‖a−b‖ / ‖b‖ (0 when both are zero, ∞ when only b is).
    #[serde(with = "jf64")]
    pub rel_l2: f64,
    /// ‖a−b‖.
    #[serde(with = "jf64")]
    pub diff_l2: f64,
    /// a·b / (‖a‖‖b‖) (1 when both are zero, 0 when one is).
    #[serde(with = "jf64")]
    pub cosine: f64,
    /// Elements with |a−b| > beyond_tol.abs + beyond_tol.rel · |b|.
    pub beyond: u64,
    /// `beyond / compared` (0 when nothing is compared).
    #[serde(with = "jf64")]
    pub beyond_fraction: f64,
    /// The tolerance `beyond` was counted at (the record's tolerance at compare time).
    pub beyond_tol: Tol,
    /// Largest ULP distance (same dtype only).
    pub ulp_max: Option<u64>,
    /// 99th percentile ULP distance, upper bin edge (same dtype only).
    pub ulp_p99: Option<u64>,
    /// Elements whose NaN/±∞/finite class differs between the sides.
    pub nonfinite_mismatch: u64,
    pub first_nonfinite_mismatch: Option<u64>,
}

/// Streaming accumulator for [`PayloadMetrics`].
pub struct PairAccumulator {
    da: DType,
    db: DType,
    tol: Tol,
    index: u64,
    compared: u64,
    identical: bool,
    first_diff: Option<u64>,
    max_abs: f64,
    max_abs_index: u64,
    sum_abs: f64,
    sum_sq_diff: f64,
    sum_sq_a: f64,
    sum_sq_b: f64,
    dot: f64,
    beyond: u64,
    ulp_max: u64,
    ulp_hist: [u64; 65],
    nonfinite_mismatch: u64,
    first_nonfinite: Option<u64>,
    va: Box<[f64; BATCH]>,
    vb: Box<[f64; BATCH]>,
    oa: Box<[i64; BATCH]>,
    ob: Box<[i64; BATCH]>,
}

/// Class of a value: 0 finite, 1 NaN, 2 +∞, 3 −∞.
#[inline(always)]
fn class(x: f64) -> u8 {
    if x.is_finite() {
        0
    } else if x.is_nan() {
        1
    } else if x > 0.0 {
        2
    } else {
        3
    }
}

/// Decode up to BATCH elements into values and ULP-ordered integers.
fn decode(dtype: DType, bytes: &[u8], vals: &mut [f64; BATCH], ords: &mut [i64; BATCH]) -> usize {
    macro_rules! go {
        ($n:literal, $val:expr, $ord:expr) => {{
            let mut n = 0;
            for ((v, o), b) in vals
                .iter_mut()
                .zip(ords.iter_mut())
                .zip(bytes.chunks_exact($n))
            {
                let b: [u8; $n] = b.try_into().unwrap_or([0; $n]);
                *v = $val(b);
                *o = $ord(b);
                n += 1;
            }
            n
        }};
    }
    // Sign-magnitude float bits to a monotonic integer (±0 both map to 0).
    fn f32_ord(b: [u8; 4]) -> i64 {
        let u = u32::from_le_bytes(b);
        let m = (u & 0x7fff_ffff) as i64;
        if u >> 31 == 1 { -m } else { m }
    }
    fn f16_ord(b: [u8; 2]) -> i64 {
        let u = u16::from_le_bytes(b);
        let m = (u & 0x7fff) as i64;
        if u >> 15 == 1 { -m } else { m }
    }
    fn f64_ord(b: [u8; 8]) -> i64 {
        let u = u64::from_le_bytes(b);
        let m = (u & 0x7fff_ffff_ffff_ffff) as i64;
        if u >> 63 == 1 { -m } else { m }
    }
    match dtype {
        DType::F32 => go!(4, |b| f32::from_le_bytes(b) as f64, f32_ord),
        DType::F16 => go!(2, |b| half::f16::from_le_bytes(b).to_f64(), f16_ord),
        DType::BF16 => go!(2, |b| half::bf16::from_le_bytes(b).to_f64(), f16_ord),
        DType::F64 => go!(8, f64::from_le_bytes, f64_ord),
        DType::I64 => go!(8, |b| i64::from_le_bytes(b) as f64, i64::from_le_bytes),
        DType::I32 => go!(
            4,
            |b| i32::from_le_bytes(b) as f64,
            |b| i32::from_le_bytes(b) as i64
        ),
        DType::U8 => go!(1, |b: [u8; 1]| b[0] as f64, |b: [u8; 1]| b[0] as i64),
    }
}

impl PairAccumulator {
    /// An accumulator for a pair with dtypes `da` (trace A) and `db` (trace B); `tol` is the
    /// tolerance the `beyond` count uses.
    pub fn new(da: DType, db: DType, tol: Tol) -> Self {
        PairAccumulator {
            da,
            db,
            tol,
            index: 0,
            compared: 0,
            identical: true,
            first_diff: None,
            max_abs: 0.0,
            max_abs_index: 0,
            sum_abs: 0.0,
            sum_sq_diff: 0.0,
            sum_sq_a: 0.0,
            sum_sq_b: 0.0,
            dot: 0.0,
            beyond: 0,
            ulp_max: 0,
            ulp_hist: [0; 65],
            nonfinite_mismatch: 0,
            first_nonfinite: None,
            va: Box::new([0.0; BATCH]),
            vb: Box::new([0.0; BATCH]),
            oa: Box::new([0; BATCH]),
            ob: Box::new([0; BATCH]),
        }
    }

    /// Feed the next elements: `a` and `b` must hold the same number of whole elements.
    /// Returns false (and ignores the input) when they do not.
    pub fn update(&mut self, a: &[u8], b: &[u8]) -> bool {
        let (sa, sb) = (self.da.size(), self.db.size());
        if !a.len().is_multiple_of(sa)
            || !b.len().is_multiple_of(sb)
            || a.len() / sa != b.len() / sb
        {
            return false;
        }
        let same = self.da == self.db;
        if same && self.identical && a != b {
            self.identical = false;
        }
        let mut pa = a;
        let mut pb = b;
        while !pa.is_empty() {
            let take = (pa.len() / sa).min(BATCH);
            let (ca, ra) = pa.split_at(take * sa);
            let (cb, rb) = pb.split_at(take * sb);
            pa = ra;
            pb = rb;
            let n = decode(self.da, ca, &mut self.va, &mut self.oa);
            decode(self.db, cb, &mut self.vb, &mut self.ob);
            if self.first_diff.is_none() {
                let differs = if same { ca != cb } else { true };
                if differs {
                    for i in 0..n {
                        let d = if same {
                            ca[i * sa..(i + 1) * sa] != cb[i * sb..(i + 1) * sb]
                        } else {
                            self.va[i].to_bits() != self.vb[i].to_bits()
                        };
                        if d {
                            self.first_diff = Some(self.index + i as u64);
                            self.identical = false;
                            break;
                        }
                    }
                }
            }
            self.batch(n, same);
            self.index += n as u64;
        }
        true
    }

    #[inline(always)]
    fn batch(&mut self, n: usize, same: bool) {
        let all_finite = self.va[..n]
            .iter()
            .zip(&self.vb[..n])
            .fold(true, |acc, (a, b)| acc & a.is_finite() & b.is_finite());
        if all_finite {
            self.finite_batch(n, same);
        } else {
            self.mixed_batch(n, same);
        }
    }

    /// Fast path: every value finite. Branch-free lane sums (so the loop vectorises), the
    /// batch maximum located afterwards, ULP distances in i64 unless the ordinals are 64-bit.
    fn finite_batch(&mut self, n: usize, same: bool) {
        const L: usize = 4;
        let (rel, abs) = (self.tol.rel, self.tol.abs);
        let (va, vb) = (&self.va[..n], &self.vb[..n]);
        let (mut s_abs, mut s_dd, mut s_aa, mut s_bb, mut s_ab) = (
            [0.0f64; L],
            [0.0f64; L],
            [0.0f64; L],
            [0.0f64; L],
            [0.0f64; L],
        );
        let mut beyond = [0u64; L];
        let mut mx = [0.0f64; L];
        let mut lane = |i: usize, a: f64, b: f64| {
            let d = a - b;
            let ad = d.abs();
            s_abs[i] += ad;
            s_dd[i] += d * d;
            s_aa[i] += a * a;
            s_bb[i] += b * b;
            s_ab[i] += a * b;
            beyond[i] += (ad > abs + rel * b.abs()) as u64;
            mx[i] = if ad > mx[i] { ad } else { mx[i] };
        };
        let (ca, cb) = (va.chunks_exact(L), vb.chunks_exact(L));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (a, b) in ca.zip(cb) {
            for i in 0..L {
                lane(i, a[i], b[i]);
            }
        }
        for (i, (&a, &b)) in ra.iter().zip(rb).enumerate() {
            lane(i, a, b);
        }
        let bmax = mx.iter().copied().fold(0.0, f64::max);
        if bmax > self.max_abs {
            self.max_abs = bmax;
            let pos = va
                .iter()
                .zip(vb)
                .position(|(a, b)| (a - b).abs() == bmax)
                .unwrap_or(0);
            self.max_abs_index = self.index + pos as u64;
        }
        self.compared += n as u64;
        self.sum_abs += s_abs.iter().sum::<f64>();
        self.sum_sq_diff += s_dd.iter().sum::<f64>();
        self.sum_sq_a += s_aa.iter().sum::<f64>();
        self.sum_sq_b += s_bb.iter().sum::<f64>();
        self.dot += s_ab.iter().sum::<f64>();
        self.beyond += beyond.iter().sum::<u64>();
        if same {
            let wide = self.da.size() == 8;
            for (&oa, &ob) in self.oa[..n].iter().zip(&self.ob[..n]) {
                let u = if wide {
                    ((oa as i128) - (ob as i128))
                        .unsigned_abs()
                        .min(u64::MAX as u128) as u64
                } else {
                    (oa - ob).unsigned_abs()
                };
                self.ulp_max = self.ulp_max.max(u);
                self.ulp_hist[(64 - u.leading_zeros()) as usize] += 1;
            }
        }
    }

    /// General path: NaN/±Inf present; non-finite pairs are checked for positional mismatch
    /// and left out of the sums.
    fn mixed_batch(&mut self, n: usize, same: bool) {
        let (rel, abs) = (self.tol.rel, self.tol.abs);
        let mut compared = 0u64;
        let (mut s_abs, mut s_dd, mut s_aa, mut s_bb, mut s_ab) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut beyond = 0u64;
        let mut max_abs = self.max_abs;
        let mut max_i = usize::MAX;
        for i in 0..n {
            let (a, b) = (self.va[i], self.vb[i]);
            if !(a.is_finite() && b.is_finite()) {
                if class(a) != class(b) {
                    self.nonfinite_mismatch += 1;
                    if self.first_nonfinite.is_none() {
                        self.first_nonfinite = Some(self.index + i as u64);
                    }
                }
                continue;
            }
            let d = a - b;
            let ad = d.abs();
            compared += 1;
            s_abs += ad;
            s_dd += d * d;
            s_aa += a * a;
            s_bb += b * b;
            s_ab += a * b;
            beyond += (ad > abs + rel * b.abs()) as u64;
            if ad > max_abs {
                max_abs = ad;
                max_i = i;
            }
        }
        if max_i != usize::MAX {
            self.max_abs = max_abs;
            self.max_abs_index = self.index + max_i as u64;
        }
        self.compared += compared;
        self.sum_abs += s_abs;
        self.sum_sq_diff += s_dd;
        self.sum_sq_a += s_aa;
        self.sum_sq_b += s_bb;
        self.dot += s_ab;
        self.beyond += beyond;
        if same {
            for i in 0..n {
                if !(self.va[i].is_finite() && self.vb[i].is_finite()) {
                    continue;
                }
                let u = ((self.oa[i] as i128) - (self.ob[i] as i128)).unsigned_abs();
                let u = u.min(u64::MAX as u128) as u64;
                self.ulp_max = self.ulp_max.max(u);
                self.ulp_hist[(64 - u.leading_zeros()) as usize] += 1;
            }
        }
    }

    pub fn finish(self) -> PayloadMetrics {
        let same = self.da == self.db;
        let diff_l2 = self.sum_sq_diff.sqrt();
        let nb = self.sum_sq_b.sqrt();
        let na = self.sum_sq_a.sqrt();
        let rel_l2 = if diff_l2 == 0.0 {
            0.0
        } else if nb == 0.0 {
            f64::INFINITY
        } else {
            diff_l2 / nb
        };
        let cosine = match (na == 0.0, nb == 0.0) {
            (true, true) => 1.0,
            (false, false) => self.dot / (na * nb),
            _ => 0.0,
        };
        let c = self.compared.max(1) as f64;
        PayloadMetrics {
            count: self.index,
            compared: self.compared,
            bit_identical: same && self.identical && self.first_diff.is_none(),
            first_diff_index: self.first_diff,
            max_abs: self.max_abs,
            max_abs_index: self.max_abs_index,
            mean_abs: self.sum_abs / c,
            rel_l2,
            diff_l2,
            cosine,
            beyond: self.beyond,
            beyond_fraction: self.beyond as f64 / c,
            beyond_tol: self.tol,
            ulp_max: same.then_some(self.ulp_max),
            ulp_p99: same.then(|| ulp_bins_p99(&self.ulp_hist)),
            nonfinite_mismatch: self.nonfinite_mismatch,
            first_nonfinite_mismatch: self.first_nonfinite,
        }
    }
}

/// The 99th percentile from a ULP histogram (bin 0: distance 0, bin k: [2^(k−1), 2^k)),
/// as the upper edge of its bin.
pub fn ulp_bins_p99(hist: &[u64; 65]) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    // Smallest bin where at least 99 % of the elements are at or below it.
    let need = total - total / 100;
    let mut seen = 0;
    for (k, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= need {
            return if k == 0 {
                0
            } else if k == 64 {
                u64::MAX
            } else {
                (1u64 << k) - 1
            };
        }
    }
    u64::MAX
}

/// Differences of two summaries (A − B), for records compared without payloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryDelta {
    /// The bits hashes and element counts are equal: bit-identical up to a hash collision.
    pub hash_equal: bool,
    #[serde(with = "jf64")]
    pub mean: f64,
    #[serde(with = "jf64")]
    pub std: f64,
    #[serde(with = "jf64")]
    pub min: f64,
    #[serde(with = "jf64")]
    pub max: f64,
    #[serde(with = "jf64")]
    pub l2: f64,
    #[serde(with = "jf64")]
    pub abs_max: f64,
    /// ‖b‖ (the reference norm relative errors divide by).
    #[serde(with = "jf64")]
    pub l2_b: f64,
    /// |‖a‖ − ‖b‖| / ‖b‖: a lower bound of the relative L2 error.
    #[serde(with = "jf64")]
    pub rel_l2_lower_bound: f64,
    /// NaN + ±∞ counts of each side.
    pub nonfinite_a: u64,
    pub nonfinite_b: u64,
}

impl SummaryDelta {
    pub fn new(a: &Summary, b: &Summary) -> Self {
        let dl2 = (a.l2 - b.l2).abs();
        SummaryDelta {
            hash_equal: a.bits_hash == b.bits_hash && a.count == b.count,
            mean: a.mean - b.mean,
            std: a.std - b.std,
            min: a.min - b.min,
            max: a.max - b.max,
            l2: a.l2 - b.l2,
            abs_max: a.abs_max - b.abs_max,
            l2_b: b.l2,
            rel_l2_lower_bound: if dl2 == 0.0 {
                0.0
            } else if b.l2 == 0.0 {
                f64::INFINITY
            } else {
                dl2 / b.l2
            },
            nonfinite_a: a.nan + a.pos_inf + a.neg_inf,
            nonfinite_b: b.nan + b.pos_inf + b.neg_inf,
        }
    }
}

/// Image similarity of two decoded images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageMetrics {
    /// 10·log10(L² / MSE) in dB; ∞ for identical images.
    #[serde(with = "jf64")]
    pub psnr_db: f64,
    /// Mean SSIM over 7×7 windows of every channel plane (1 for identical images).
    #[serde(with = "jf64")]
    pub ssim: f64,
    /// The data range L: 255 for integer images; for float images 1 when B lies in [0, 1],
    /// 2 when in [−1, 1], else max(B) − min(B).
    #[serde(with = "jf64")]
    pub data_range: f64,
}

/// PSNR and SSIM of two images of the same shape, given as f64 values in NCHW (rank 4) or CHW
/// (rank 3) order; `None` for other ranks or mismatched lengths. Non-finite values count as 0.
pub fn image_metrics(dtype: DType, shape: &[u64], a: &[f64], b: &[f64]) -> Option<ImageMetrics> {
    let (planes, h, w) = image_dims(shape)?;
    if a.len() != b.len() || planes.checked_mul(h * w)? != a.len() {
        return None;
    }
    let row_a = |i: usize, out: &mut [f64]| out.copy_from_slice(&a[i * w..][..w]);
    let row_b = |i: usize, out: &mut [f64]| out.copy_from_slice(&b[i * w..][..w]);
    image_metrics_rows(dtype, planes, h, w, row_a, row_b)
}

/// [`image_metrics`] straight from two payloads' little-endian bytes (dtypes may differ),
/// decoding one row at a time: memory beyond the payloads is a few rows.
pub fn image_metrics_bytes(
    dtype_a: DType,
    dtype_b: DType,
    shape: &[u64],
    a: &[u8],
    b: &[u8],
) -> Option<ImageMetrics> {
    let (planes, h, w) = image_dims(shape)?;
    let n = planes.checked_mul(h * w)?;
    if a.len() != n * dtype_a.size() || b.len() != n * dtype_b.size() {
        return None;
    }
    let (mut ra, mut rb) = (
        RowDecoder::new(dtype_a, a, w),
        RowDecoder::new(dtype_b, b, w),
    );
    image_metrics_rows(
        dtype_b,
        planes,
        h,
        w,
        |i, out| ra.row(i, out),
        |i, out| rb.row(i, out),
    )
}

/// Decodes row `i` (of `w` values) of a little-endian tensor.
struct RowDecoder<'a> {
    dtype: DType,
    bytes: &'a [u8],
    w: usize,
    vals: Box<[f64; BATCH]>,
    ords: Box<[i64; BATCH]>,
}

impl<'a> RowDecoder<'a> {
    fn new(dtype: DType, bytes: &'a [u8], w: usize) -> Self {
        RowDecoder {
            dtype,
            bytes,
            w,
            vals: Box::new([0.0; BATCH]),
            ords: Box::new([0; BATCH]),
        }
    }

    fn row(&mut self, i: usize, out: &mut [f64]) {
        let size = self.dtype.size();
        let row = &self.bytes[i * self.w * size..][..self.w * size];
        for (piece, dst) in row.chunks(BATCH * size).zip(out.chunks_mut(BATCH)) {
            let k = decode(self.dtype, piece, &mut self.vals, &mut self.ords);
            dst.copy_from_slice(&self.vals[..k]);
        }
    }
}

fn image_dims(shape: &[u64]) -> Option<(usize, usize, usize)> {
    let (planes, h, w) = match *shape {
        [n, c, h, w] => (n.checked_mul(c)? as usize, h as usize, w as usize),
        [c, h, w] => (c as usize, h as usize, w as usize),
        _ => return None,
    };
    (h > 0 && w > 0 && planes > 0).then_some((planes, h, w))
}

/// PSNR and mean SSIM over 7×7 windows, reading row `i` (of `planes × h` rows of `w` values)
/// through `row_a`/`row_b`. Two passes over B (data range, then the metrics); the SSIM windows
/// slide over per-column sums of the last 7 rows, so memory is O(w).
fn image_metrics_rows(
    dtype_b: DType,
    planes: usize,
    h: usize,
    w: usize,
    mut row_a: impl FnMut(usize, &mut [f64]),
    mut row_b: impl FnMut(usize, &mut [f64]),
) -> Option<ImageMetrics> {
    let fin = |x: f64| if x.is_finite() { x } else { 0.0 };
    let (mut ra, mut rb) = (vec![0.0; w], vec![0.0; w]);
    let data_range = if dtype_b.is_float() {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..planes * h {
            row_b(i, &mut rb);
            for &x in &rb {
                lo = lo.min(fin(x));
                hi = hi.max(fin(x));
            }
        }
        if lo >= 0.0 && hi <= 1.0 {
            1.0
        } else if lo >= -1.0 && hi <= 1.0 {
            2.0
        } else {
            (hi - lo).max(f64::MIN_POSITIVE)
        }
    } else {
        255.0
    };
    let win = 7.min(h).min(w);
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let n = (win * win) as f64;
    let (mut sq_err, mut total, mut windows) = (0.0f64, 0.0f64, 0u64);
    // Per column: x, y, x², y², xy of each of the last `win` rows, and their sums.
    let mut ring = vec![[0.0f64; 5]; win * w];
    let mut cols = vec![[0.0f64; 5]; w];
    for p in 0..planes {
        cols.iter_mut().for_each(|c| *c = [0.0; 5]);
        for y in 0..h {
            row_a(p * h + y, &mut ra);
            row_b(p * h + y, &mut rb);
            let slot = &mut ring[(y % win) * w..][..w];
            for x in 0..w {
                let (u, v) = (fin(ra[x]), fin(rb[x]));
                sq_err += (u - v) * (u - v);
                let new = [u, v, u * u, v * v, u * v];
                for k in 0..5 {
                    cols[x][k] += new[k] - if y >= win { slot[x][k] } else { 0.0 };
                }
                slot[x] = new;
            }
            if y + 1 < win {
                continue;
            }
            let mut s = [0.0f64; 5];
            for x in 0..w {
                for k in 0..5 {
                    s[k] += cols[x][k] - if x >= win { cols[x - win][k] } else { 0.0 };
                }
                if x + 1 < win {
                    continue;
                }
                let (mx, my) = (s[0] / n, s[1] / n);
                let vx = (s[2] / n - mx * mx).max(0.0);
                let vy = (s[3] / n - my * my).max(0.0);
                let cxy = s[4] / n - mx * my;
                total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                    / ((mx * mx + my * my + c1) * (vx + vy + c2));
                windows += 1;
            }
        }
    }
    let mse = sq_err / (planes * h * w) as f64;
    let psnr_db = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (data_range * data_range / mse).log10()
    };
    Some(ImageMetrics {
        psnr_db,
        ssim: if windows == 0 {
            1.0
        } else {
            total / windows as f64
        },
        data_range,
    })
}

/// Decode a whole tensor's bytes to f64 (for noise tensors, which are small).
pub fn decode_all(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    let mut out = Vec::with_capacity(bytes.len() / dtype.size());
    let mut vals = Box::new([0.0; BATCH]);
    let mut ords = Box::new([0i64; BATCH]);
    for piece in bytes.chunks(BATCH * dtype.size()) {
        let n = decode(dtype, piece, &mut vals, &mut ords);
        out.extend_from_slice(&vals[..n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn hand_computed_pair() {
        let a = [1.0f32, 2.0, 3.0, f32::NAN, 5.0];
        let b = [1.0f32, 2.5, 2.0, f32::NAN, f32::INFINITY];
        let tol = Tol { rel: 0.1, abs: 0.0 };
        let mut acc = PairAccumulator::new(DType::F32, DType::F32, tol);
        assert!(acc.update(&f32s(&a), &f32s(&b)));
        let m = acc.finish();
        assert_eq!(m.count, 5);
        assert_eq!(m.compared, 3);
        assert!(!m.bit_identical);
        assert_eq!(m.first_diff_index, Some(1));
        assert_eq!(m.max_abs, 1.0);
        assert_eq!(m.max_abs_index, 2);
        assert!((m.mean_abs - 0.5).abs() < 1e-15);
        // ‖a−b‖ = √(0.25 + 1) ; ‖b‖ = √(1 + 6.25 + 4)
        assert!((m.rel_l2 - (1.25f64).sqrt() / 11.25f64.sqrt()).abs() < 1e-15);
        let cos = (1.0 + 5.0 + 6.0) / ((14.0f64).sqrt() * 11.25f64.sqrt());
        assert!((m.cosine - cos).abs() < 1e-15);
        // |2-2.5| = 0.5 > 0.25 ; |3-2| = 1 > 0.2 ; first equal.
        assert_eq!(m.beyond, 2);
        assert_eq!(m.nonfinite_mismatch, 1);
        assert_eq!(m.first_nonfinite_mismatch, Some(4));
        // 2.0 and 2.5 are 2^20 ULPs apart in f32, 3.0 and 2.0 2^22.
        assert_eq!(m.ulp_max, Some(1 << 22));
        assert_eq!(m.ulp_p99, Some((1 << 23) - 1));
    }

    #[test]
    fn identity_split_and_mismatched_pieces() {
        let v: Vec<f32> = (0..3000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bytes = f32s(&v);
        let mut acc = PairAccumulator::new(DType::F32, DType::F32, Tol { rel: 0.0, abs: 0.0 });
        assert!(acc.update(&bytes[..400], &bytes[..400]));
        assert!(!acc.update(&bytes[400..404], &bytes[400..408]));
        assert!(acc.update(&bytes[400..], &bytes[400..]));
        let m = acc.finish();
        assert!(m.bit_identical);
        assert_eq!(
            (m.count, m.max_abs, m.rel_l2, m.beyond),
            (3000, 0.0, 0.0, 0)
        );
        assert_eq!(m.ulp_max, Some(0));
        assert_eq!(m.cosine, 1.0);
    }

    #[test]
    fn mixed_dtypes_and_signed_zero() {
        let a: Vec<u8> = [0.0f64, -0.0, 1.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b = f32s(&[-0.0, 0.0, 1.5]);
        let mut acc = PairAccumulator::new(DType::F64, DType::F32, Tol { rel: 0.0, abs: 0.0 });
        assert!(acc.update(&a, &b));
        let m = acc.finish();
        assert!(!m.bit_identical, "different dtypes are never bit-identical");
        assert_eq!(m.max_abs, 0.0);
        assert_eq!(m.ulp_max, None);
        // ±0 are one value for ULP purposes.
        let mut acc = PairAccumulator::new(DType::F32, DType::F32, Tol { rel: 0.0, abs: 0.0 });
        acc.update(&f32s(&[0.0]), &f32s(&[-0.0]));
        let m = acc.finish();
        assert_eq!((m.ulp_max, m.bit_identical), (Some(0), false));
    }

    #[test]
    fn ulp_histogram_percentile() {
        let mut h = [0u64; 65];
        h[0] = 99;
        h[5] = 1;
        assert_eq!(ulp_bins_p99(&h), 0);
        h[0] = 98;
        assert_eq!(ulp_bins_p99(&h), 31);
        assert_eq!(ulp_bins_p99(&[0; 65]), 0);
    }

    #[test]
    fn image_psnr_ssim_by_hand() {
        // One 8×8 plane, u8: B all 100, A = B with one pixel +16.
        let b = vec![100.0; 64];
        let mut a = b.clone();
        a[9] = 116.0;
        let m = image_metrics(DType::U8, &[1, 1, 8, 8], &a, &b).unwrap();
        let mse: f64 = 256.0 / 64.0;
        assert!((m.psnr_db - 10.0 * (255.0f64 * 255.0 / mse).log10()).abs() < 1e-12);
        assert!(m.ssim < 1.0 && m.ssim > 0.9, "{}", m.ssim);
        let same = image_metrics(DType::U8, &[1, 1, 8, 8], &b, &b).unwrap();
        assert_eq!((same.psnr_db, same.ssim), (f64::INFINITY, 1.0));
        // Window (1,1) at top-left covers pixel 9: hand SSIM of that window.
        let n = 49.0;
        let (mx, my) = ((100.0 * 48.0 + 116.0) / n, 100.0);
        let vx: f64 = (48.0 * 100.0f64.powi(2) + 116.0f64.powi(2)) / n - mx * mx;
        let (c1, c2) = ((2.55f64).powi(2), (7.65f64).powi(2));
        let w = ((2.0 * mx * my + c1) * c2) / ((mx * mx + my * my + c1) * (vx + c2));
        // Pixel (1,1) lies in windows starting at (0|1, 0|1): 4 of the 4 windows.
        assert!((m.ssim - w).abs() < 1e-12, "{} vs {w}", m.ssim);
        assert!(image_metrics(DType::U8, &[64], &a, &b).is_none());
    }

    /// The sliding-window SSIM equals a direct sum over every window, and the byte path equals
    /// the f64 path, on a random 3-plane 13×17 image.
    #[test]
    fn streaming_ssim_matches_direct_windows() {
        let (planes, h, w) = (3usize, 13usize, 17usize);
        let mut s = 7u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let a: Vec<f64> = (0..planes * h * w).map(|_| rnd()).collect();
        let b: Vec<f64> = a.iter().map(|&x| (x + 0.1 * rnd()).min(1.0)).collect();
        let m = image_metrics(DType::F32, &[1, 3, 13, 17], &a, &b).unwrap();
        let (c1, c2, n) = (0.01f64.powi(2), 0.03f64.powi(2), 49.0);
        let (mut total, mut count) = (0.0, 0);
        for p in 0..planes {
            for y in 0..=h - 7 {
                for x in 0..=w - 7 {
                    let mut t = [0.0f64; 5];
                    for dy in 0..7 {
                        for dx in 0..7 {
                            let i = p * h * w + (y + dy) * w + x + dx;
                            let (u, v) = (a[i], b[i]);
                            for (k, q) in [u, v, u * u, v * v, u * v].into_iter().enumerate() {
                                t[k] += q;
                            }
                        }
                    }
                    let (mx, my) = (t[0] / n, t[1] / n);
                    let (vx, vy, cxy) =
                        (t[2] / n - mx * mx, t[3] / n - my * my, t[4] / n - mx * my);
                    total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                        / ((mx * mx + my * my + c1) * (vx + vy + c2));
                    count += 1;
                }
            }
        }
        assert!((m.ssim - total / count as f64).abs() < 1e-12);
        let f32s = |v: &[f64]| {
            v.iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let a32: Vec<f64> = a.iter().map(|&x| x as f32 as f64).collect();
        let b32: Vec<f64> = b.iter().map(|&x| x as f32 as f64).collect();
        let by_bytes = image_metrics_bytes(
            DType::F32,
            DType::F32,
            &[1, 3, 13, 17],
            &f32s(&a),
            &f32s(&b),
        )
        .unwrap();
        assert_eq!(
            by_bytes,
            image_metrics(DType::F32, &[1, 3, 13, 17], &a32, &b32).unwrap()
        );
    }
}
