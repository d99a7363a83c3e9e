//! What the tensor, noise and image views show, computed from record frames and payloads.
//!
//! Pure functions from bytes to plain data: [`tensor_detail`] (both summaries, the histogram of
//! |a−b| by decade, a pooled spatial map of max |a−b| — or, without payloads, the difference of
//! the two recorded thumbnails — and the worst channels), [`noise_detail`] (which flat-index
//! ranges of `noise.initial` differ, and how the difference is shaped), [`image_detail`] (the
//! final images and their amplified difference, via the report's [`ReportImages`]). The
//! loader reads the bytes; nothing here touches a file. Payloads are decoded in pieces, so
//! memory stays at the payloads plus a few small maps. Malformed input yields a note, never a
//! panic.

use crate::analysis::noise::{NoiseDiagnosis, diagnose};
use crate::analysis::{PairRecord, decode_all};
use crate::dtype::DType;
use crate::image::ImageTensor;
use crate::report::ReportImages;
use crate::stats::Summary;
use crate::stats::thumbnail::Thumbnail;
use crate::trace::RecordMeta;

/// Largest side of a spatial map.
pub const MAP_SIDE: usize = 64;
/// Buckets of the noise map.
pub const NOISE_BUCKETS: usize = 4096;
/// Decades of the |a−b| histogram: 10^LO … 10^(LO+DECADES).
pub const DIFF_LO: i32 = -12;
pub const DIFF_DECADES: usize = 15;
/// Worst channels listed.
pub const WORST: usize = 6;
/// Elements decoded per piece.
const PIECE: usize = 1 << 16;

/// One trace's side of a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub fidelity: String,
    pub summary: Summary,
    pub thumbnail: Option<Thumbnail>,
    pub has_payload: bool,
}

impl Side {
    pub fn of(m: &RecordMeta) -> Self {
        Side {
            dtype: m.dtype,
            shape: m.shape.clone(),
            fidelity: m.fidelity.name().to_string(),
            summary: m.summary.clone(),
            thumbnail: m.thumbnail.clone(),
            has_payload: m.payload.is_some(),
        }
    }
}

/// A small 2-D map of non-negative values, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map2 {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Map2 {
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.values
            .get(y * self.width + x)
            .copied()
            .unwrap_or(f32::NAN)
    }

    /// Largest finite value (0 when none).
    pub fn max(&self) -> f32 {
        self.values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, &v| m.max(v))
    }
}

/// A channel's difference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelDiff {
    pub channel: usize,
    pub max_abs: f64,
    /// ‖a−b‖/‖b‖ over the channel.
    pub rel_l2: f64,
}

/// What the two payloads show together.
#[derive(Clone, Debug, PartialEq)]
pub struct PayloadDiff {
    pub count: u64,
    /// Elements whose values differ (NaN against NaN counts as equal).
    pub differing: u64,
    pub max_abs: f64,
    /// Counts of |a−b| by decade from 10^DIFF_LO (bin 0 also holds smaller non-zero values,
    /// the last bin larger ones).
    pub hist: Vec<u64>,
    /// Elements with a − b = 0.
    pub zero: u64,
    /// Elements where either side is not finite.
    pub nonfinite: u64,
    /// Max |a−b| pooled over space (all batch items and channels).
    pub map: Map2,
    /// Worst channels by relative L2 (rank ≥ 3 tensors).
    pub channels: Vec<ChannelDiff>,
}

/// Everything the tensor view shows for one aligned record.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDetail {
    pub record: usize,
    pub label: String,
    pub a: Side,
    pub b: Side,
    pub diff: Option<PayloadDiff>,
    /// Without payloads: |thumbnail A − thumbnail B| of batch item 0 (a hint: the thumbnails
    /// are channel means of |x|).
    pub thumb_diff: Option<Map2>,
    pub note: Option<String>,
}

/// The (batch, channels, height, width) a tensor is viewed as: the last two dimensions are
/// space, the one before them channels, the rest batch.
pub fn view_dims(shape: &[u64]) -> (usize, usize, usize, usize) {
    let d: Vec<usize> = shape
        .iter()
        .map(|&x| usize::try_from(x).unwrap_or(usize::MAX))
        .collect();
    match d.as_slice() {
        [] => (1, 1, 1, 1),
        [w] => (1, 1, 1, *w),
        [h, w] => (1, 1, *h, *w),
        [c, h, w] => (1, *c, *h, *w),
        [rest @ .., c, h, w] => (
            rest.iter().fold(1usize, |a, &x| a.saturating_mul(x)),
            *c,
            *h,
            *w,
        ),
    }
}

/// Decode `bytes` of `dtype` piecewise, calling `f(index, value)`.
fn for_each_value(dtype: DType, bytes: &[u8], mut f: impl FnMut(usize, f64)) {
    let size = dtype.size();
    let mut index = 0usize;
    for piece in bytes.chunks(PIECE * size) {
        for v in decode_all(dtype, piece) {
            f(index, v);
            index += 1;
        }
    }
}

fn decade_bin(d: f64) -> usize {
    let b = d.log10().floor() as i64 - DIFF_LO as i64;
    b.clamp(0, DIFF_DECADES as i64 - 1) as usize
}

/// Compare two payloads element by element for the tensor view.
pub fn payload_diff(
    shape: &[u64],
    da: DType,
    a: &[u8],
    db: DType,
    b: &[u8],
) -> Result<PayloadDiff, String> {
    let n = a.len() / da.size().max(1);
    if n != b.len() / db.size().max(1) {
        return Err(format!(
            "the payloads hold {} and {} elements",
            n,
            b.len() / db.size().max(1)
        ));
    }
    let (batch, ch, h, w) = view_dims(shape);
    if batch.saturating_mul(ch).saturating_mul(h).saturating_mul(w) != n {
        return Err(format!("{n} elements do not fit the shape {shape:?}"));
    }
    let (mh, mw) = (h.clamp(1, MAP_SIDE), w.clamp(1, MAP_SIDE));
    let (bh, bw) = (h.div_ceil(mh).max(1), w.div_ceil(mw).max(1));
    let (mh, mw) = (h.div_ceil(bh).max(1), w.div_ceil(bw).max(1));
    let mut map = vec![0.0f32; mh * mw];
    let mut hist = vec![0u64; DIFF_DECADES];
    let mut chan_dd = vec![0.0f64; ch];
    let mut chan_bb = vec![0.0f64; ch];
    let mut chan_max = vec![0.0f64; ch];
    let (mut zero, mut differing, mut nonfinite) = (0u64, 0u64, 0u64);
    let mut max_abs = 0.0f64;
    // Decode A whole in pieces alongside B.
    let size_a = da.size();
    let size_b = db.size();
    let mut index = 0usize;
    for (pa, pb) in a.chunks(PIECE * size_a).zip(b.chunks(PIECE * size_b)) {
        let va = decode_all(da, pa);
        let vb = decode_all(db, pb);
        for (&x, &y) in va.iter().zip(&vb) {
            let i = index;
            index += 1;
            let xw = i % w.max(1);
            let yh = (i / w.max(1)) % h.max(1);
            let c = (i / (w.max(1) * h.max(1))) % ch.max(1);
            if !(x.is_finite() && y.is_finite()) {
                nonfinite += 1;
                let same = (x.is_nan() && y.is_nan()) || x == y;
                if !same {
                    differing += 1;
                }
                continue;
            }
            let d = (x - y).abs();
            if d == 0.0 {
                zero += 1;
            } else {
                differing += 1;
                hist[decade_bin(d)] += 1;
            }
            max_abs = max_abs.max(d);
            let m = &mut map[(yh / bh) * mw + xw / bw];
            *m = m.max(d as f32);
            chan_dd[c] += d * d;
            chan_bb[c] += y * y;
            chan_max[c] = chan_max[c].max(d);
        }
    }
    let mut channels: Vec<ChannelDiff> = if shape.len() >= 3 {
        (0..ch)
            .map(|c| ChannelDiff {
                channel: c,
                max_abs: chan_max[c],
                rel_l2: if chan_dd[c] == 0.0 {
                    0.0
                } else if chan_bb[c] == 0.0 {
                    f64::INFINITY
                } else {
                    (chan_dd[c] / chan_bb[c]).sqrt()
                },
            })
            .filter(|c| c.max_abs > 0.0)
            .collect()
    } else {
        Vec::new()
    };
    channels.sort_by(|x, y| y.rel_l2.total_cmp(&x.rel_l2));
    channels.truncate(WORST);
    Ok(PayloadDiff {
        count: n as u64,
        differing,
        max_abs,
        hist,
        zero,
        nonfinite,
        map: Map2 {
            width: mw,
            height: mh,
            values: map,
        },
        channels,
    })
}

/// |A − B| of batch item 0 of two thumbnails of the same size.
pub fn thumb_diff(a: &Thumbnail, b: &Thumbnail) -> Option<Map2> {
    if (a.width, a.height) != (b.width, b.height) {
        return None;
    }
    let (ia, ib) = (a.item(0)?, b.item(0)?);
    Some(Map2 {
        width: a.width as usize,
        height: a.height as usize,
        values: ia.iter().zip(ib).map(|(x, y)| (x - y).abs()).collect(),
    })
}

/// The tensor view's data for record `record` from both record frames and, when both hold
/// them, both payloads.
pub fn tensor_detail(
    record: usize,
    label: String,
    ma: &RecordMeta,
    mb: &RecordMeta,
    payloads: Option<(&[u8], &[u8])>,
) -> TensorDetail {
    let (a, b) = (Side::of(ma), Side::of(mb));
    let mut note = None;
    let diff = match payloads {
        Some((pa, pb)) if ma.shape == mb.shape => {
            match payload_diff(&ma.shape, ma.dtype, pa, mb.dtype, pb) {
                Ok(d) => Some(d),
                Err(e) => {
                    note = Some(e);
                    None
                }
            }
        }
        Some(_) => {
            note = Some("the shapes differ: no element-wise comparison".into());
            None
        }
        None => None,
    };
    let thumb_diff = match (&a.thumbnail, &b.thumbnail) {
        (Some(x), Some(y)) if diff.is_none() => thumb_diff(x, y),
        _ => None,
    };
    TensorDetail {
        record,
        label,
        a,
        b,
        diff,
        thumb_diff,
        note,
    }
}

/// The noise view's data.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseDetail {
    pub record: usize,
    pub count: u64,
    pub shape: Vec<u64>,
    /// Flat index of the first element whose bits differ.
    pub first_diff: Option<u64>,
    pub differing: u64,
    /// Fraction of differing elements per equal flat-index range.
    pub buckets: Vec<f32>,
    /// The noise classifier's diagnosis (the same as `report`'s).
    pub diagnosis: NoiseDiagnosis,
}

/// `30720` → `30 720`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// Compare two noise tensors bit by bit (values when the dtypes differ).
pub fn noise_detail(
    record: usize,
    pair: &PairRecord,
    da: DType,
    a: &[u8],
    db: DType,
    b: &[u8],
) -> NoiseDetail {
    let (sa, sb) = (da.size().max(1), db.size().max(1));
    let n = (a.len() / sa).min(b.len() / sb);
    let nb = NOISE_BUCKETS.min(n.max(1));
    let per = n.div_ceil(nb).max(1);
    let mut diff_counts = vec![0u32; nb];
    let mut first = None;
    let mut differing = 0u64;
    let (mut va, mut vb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for_each_value(da, a, |_, v| va.push(v));
    for_each_value(db, b, |_, v| vb.push(v));
    let bitwise = da == db;
    for i in 0..n {
        let differs = if bitwise {
            a[i * sa..(i + 1) * sa] != b[i * sb..(i + 1) * sb]
        } else {
            let (x, y) = (va[i], vb[i]);
            !(x == y || (x.is_nan() && y.is_nan()))
        };
        if differs {
            differing += 1;
            first.get_or_insert(i as u64);
            if let Some(c) = diff_counts.get_mut(i / per) {
                *c += 1;
            }
        }
    }
    let buckets: Vec<f32> = diff_counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let len = per.min(n.saturating_sub(k * per)).max(1);
            c as f32 / len as f32
        })
        .collect();
    let diagnosis = match &pair.noise {
        Some(d) => d.clone(),
        None => diagnose(&pair.shape_a, &va, &pair.shape_b, &vb),
    };
    NoiseDetail {
        record,
        count: n as u64,
        shape: pair.shape_a.clone(),
        first_diff: first,
        differing,
        buckets,
        diagnosis,
    }
}

/// The image view's data.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDetail {
    pub record: usize,
    pub images: ReportImages,
}

/// Decode both image records and their difference.
pub fn image_detail(
    record: usize,
    da: DType,
    shape_a: &[u64],
    a: &[u8],
    db: DType,
    shape_b: &[u64],
    b: &[u8],
) -> Result<ImageDetail, String> {
    let ia = ImageTensor::from_record(da, shape_a, a).map_err(|e| format!("A: {e}"))?;
    let ib = ImageTensor::from_record(db, shape_b, b).map_err(|e| format!("B: {e}"))?;
    Ok(ImageDetail {
        record,
        images: ReportImages::from_records(&ia, &ib)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn dims_and_digits() {
        assert_eq!(view_dims(&[2, 4, 8, 8]), (2, 4, 8, 8));
        assert_eq!(view_dims(&[1, 77, 32]), (1, 1, 77, 32));
        assert_eq!(view_dims(&[5]), (1, 1, 1, 5));
        assert_eq!(view_dims(&[]), (1, 1, 1, 1));
        assert_eq!(group_digits(30720), "30 720");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000_000), "1 000 000");
    }

    #[test]
    fn payload_diff_maps_and_channels() {
        // [1, 2, 2, 2]: channel 1, pixel (1, 0) differs by 0.5; one NaN pair stays equal.
        let a = [0.0, 1.0, 2.0, f32::NAN, 1.0, 1.5, 1.0, 1.0];
        let mut b = a;
        b[5] = 1.0;
        let d = payload_diff(&[1, 2, 2, 2], DType::F32, &f32s(&a), DType::F32, &f32s(&b)).unwrap();
        assert_eq!((d.count, d.differing, d.zero, d.nonfinite), (8, 1, 6, 1));
        assert_eq!(d.max_abs, 0.5);
        assert_eq!((d.map.width, d.map.height), (2, 2));
        assert_eq!(d.map.get(1, 0), 0.5);
        assert_eq!(d.map.get(0, 0), 0.0);
        assert_eq!(d.hist[(-1 - DIFF_LO) as usize], 1);
        assert_eq!(d.channels.len(), 1);
        assert_eq!(d.channels[0].channel, 1);
        assert!((d.channels[0].rel_l2 - 0.25).abs() < 1e-12);
        assert!(payload_diff(&[4], DType::F32, &f32s(&a[..4]), DType::F32, &f32s(&a)).is_err());
        // Large maps pool to MAP_SIDE.
        let big = vec![0.0f32; 130 * 70];
        let d = payload_diff(&[130, 70], DType::F32, &f32s(&big), DType::F32, &f32s(&big)).unwrap();
        assert!(d.map.width <= MAP_SIDE && d.map.height <= MAP_SIDE);
        assert_eq!(d.differing, 0);
    }

    #[test]
    fn noise_prefix_is_described() {
        let n = 100usize;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut b = a.clone();
        for v in b.iter_mut().skip(30) {
            *v += 1.0;
        }
        let pair = crate::report::fixture::comparison().records[0].clone();
        let d = noise_detail(0, &pair, DType::F32, &f32s(&a), DType::F32, &f32s(&b));
        assert_eq!(d.first_diff, Some(30));
        assert_eq!(d.differing, 70);
        assert_eq!(d.buckets.len(), n);
        assert_eq!((d.buckets[29], d.buckets[30]), (0.0, 1.0));
        // The verdict is the analysis's own diagnosis of the pair.
        assert_eq!(
            d.diagnosis,
            crate::analysis::noise::diagnose(&pair.shape_a, &a, &pair.shape_b, &b)
        );
        // Different dtypes compare values.
        let h: Vec<u8> = a
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let d = noise_detail(0, &pair, DType::F32, &f32s(&a), DType::F16, &h);
        assert_eq!(d.differing, 0);
    }
}
