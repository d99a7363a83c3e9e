//! Spatial thumbnails of NCHW tensors.
//!
//! For a rank-4 tensor (N, C, H, W), each batch item gets a map of the channel-mean of |x|,
//! average-pooled over blocks of `ceil(H/32) × ceil(W/32)` pixels, so the map is at most 32×32.
//! Non-finite elements are left out of the means; a cell with no finite element is NaN. A
//! thumbnail lets a viewer show *where* two runs differ without a payload.

use crate::dtype::DType;
use serde::{Deserialize, Serialize};

/// Largest thumbnail side.
pub const MAX_SIDE: usize = 32;

/// Pooled channel-mean |x| maps, one per batch item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub batch: u32,
    pub height: u32,
    pub width: u32,
    /// Source pixels per thumbnail cell, vertically and horizontally.
    pub block_h: u32,
    pub block_w: u32,
    /// `batch × height × width` values, row-major.
    pub values: Vec<f32>,
}

impl Thumbnail {
    /// The map of batch item `n`, row-major.
    pub fn item(&self, n: usize) -> Option<&[f32]> {
        let size = (self.height * self.width) as usize;
        self.values.get(n * size..(n + 1) * size)
    }
}

/// Thumbnail of a rank-4 tensor given as little-endian bytes; `None` for other ranks, empty
/// tensors, or bytes that do not match the shape.
pub fn thumbnail(dtype: DType, shape: &[u64], bytes: &[u8]) -> Option<Thumbnail> {
    thumbnail_parts(dtype, shape, &[bytes])
}

/// [`thumbnail`] of the tensor whose bytes are the concatenation of `parts` (e.g. the two CFG
/// halves of a batch in swapped order, without copying them together); every part must hold a
/// whole number of elements, else `None`.
pub fn thumbnail_parts(dtype: DType, shape: &[u64], parts: &[&[u8]]) -> Option<Thumbnail> {
    let mut b = ThumbnailBuilder::new(shape)?;
    if parts.iter().any(|p| p.len() % dtype.size() != 0) {
        return None;
    }
    let mut row = Box::new([0.0f64; super::CHUNK]);
    let mut row32 = Box::new([0.0f32; super::CHUNK]);
    for part in parts {
        for piece in part.chunks(super::CHUNK * dtype.size()) {
            match super::decode_chunk_f32(dtype, piece, &mut row32) {
                Some(m) if super::all_finite_f32(&row32[..m]) => b.update_finite(&row32[..m]),
                _ => {
                    let m = super::decode_chunk(dtype, piece, &mut row);
                    b.update(&row[..m]);
                }
            }
        }
    }
    b.finish()
}

/// Add each block of `B` values of `row` to its cell: |x| in f64, in element order.
#[inline(always)]
fn add_blocks<const B: usize>(sums: &mut [f64], counts: &mut [u32], row: &[f32]) {
    for ((sum, count), block) in sums.iter_mut().zip(counts).zip(row.chunks_exact(B)) {
        let mut acc = *sum;
        for &x in block {
            acc += x.abs() as f64;
        }
        *sum = acc;
        *count += B as u32;
    }
}

/// Streaming thumbnail: feed a rank-4 tensor's elements in flat order, in pieces of any size
/// (the summary feeds it the chunks it has just decoded, so the thumbnail costs no second pass
/// over memory). Each cell's |x| are added in element order, whatever the pieces.
#[derive(Clone, Debug)]
pub struct ThumbnailBuilder {
    channels: usize,
    height: usize,
    width: usize,
    block_h: usize,
    block_w: usize,
    /// Cells per thumbnail row.
    cells_w: usize,
    batch: usize,
    total: usize,
    /// Elements fed so far.
    pos: usize,
    sums: Vec<f64>,
    counts: Vec<u32>,
}

impl ThumbnailBuilder {
    /// A builder for `shape` (N, C, H, W); `None` for other ranks and empty tensors.
    pub fn new(shape: &[u64]) -> Option<Self> {
        let &[n, c, h, w] = shape else { return None };
        let dims = [n, c, h, w].map(usize::try_from);
        let [Ok(n), Ok(c), Ok(h), Ok(w)] = dims else {
            return None;
        };
        let total = n.checked_mul(c)?.checked_mul(h)?.checked_mul(w)?;
        if total == 0 {
            return None;
        }
        let (bh, bw) = (h.div_ceil(MAX_SIDE), w.div_ceil(MAX_SIDE));
        let (th, tw) = (h.div_ceil(bh), w.div_ceil(bw));
        Some(ThumbnailBuilder {
            channels: c,
            height: h,
            width: w,
            block_h: bh,
            block_w: bw,
            cells_w: tw,
            batch: n,
            total,
            pos: 0,
            sums: vec![0.0; n * th * tw],
            counts: vec![0; n * th * tw],
        })
    }

    /// The next elements, all finite (the caller has checked).
    pub fn update_finite(&mut self, vals: &[f32]) {
        // Whole rows of whole blocks take loops the compiler can unroll for the common small
        // blocks; the sums are the same either way (each cell's |x| in element order).
        let bw = self.block_w;
        if self.width.is_multiple_of(bw) {
            let mut vals = vals;
            while self.pos.is_multiple_of(self.width)
                && vals.len() >= self.width
                && self.pos < self.total
            {
                let (row, rest) = vals.split_at(self.width);
                let first = self.first_cell(self.pos / self.width, 0);
                let sums = &mut self.sums[first..first + self.width / bw];
                let counts = &mut self.counts[first..first + self.width / bw];
                match bw {
                    1 => add_blocks::<1>(sums, counts, row),
                    2 => add_blocks::<2>(sums, counts, row),
                    4 => add_blocks::<4>(sums, counts, row),
                    _ => {
                        for ((sum, count), block) in sums.iter_mut().zip(counts).zip(row.chunks(bw))
                        {
                            let mut acc = *sum;
                            for &x in block {
                                acc += x.abs() as f64;
                            }
                            *sum = acc;
                            *count += block.len() as u32;
                        }
                    }
                }
                self.pos += self.width;
                vals = rest;
            }
            if vals.is_empty() {
                return;
            }
            return self.update_finite_walk(vals);
        }
        self.update_finite_walk(vals)
    }

    fn update_finite_walk(&mut self, vals: &[f32]) {
        self.walk(vals, |block, sum, count| {
            let mut acc = *sum;
            for &x in block {
                acc += x.abs() as f64;
            }
            *sum = acc;
            *count += block.len() as u32;
        });
    }

    /// The next elements, of which non-finite ones are left out.
    pub fn update(&mut self, vals: &[f64]) {
        self.walk(vals, |block, sum, count| {
            for &x in block.iter().filter(|x| x.is_finite()) {
                *sum += x.abs();
                *count += 1;
            }
        });
    }

    /// Hand `fold` each run of `vals` that falls in one cell, in order, with that cell's sum
    /// and count. Elements past the shape's end are ignored (`finish` then gives `None`).
    #[inline(always)]
    fn walk<T>(&mut self, mut vals: &[T], mut fold: impl FnMut(&[T], &mut f64, &mut u32)) {
        while !vals.is_empty() && self.pos < self.total {
            let (r, col) = (self.pos / self.width, self.pos % self.width);
            let (row, rest) = vals.split_at((self.width - col).min(vals.len()));
            let first = self.first_cell(r, col);
            let last = first + (col + row.len()).div_ceil(self.block_w) - col / self.block_w;
            let sums = self.sums[first..last].iter_mut();
            let counts = self.counts[first..last].iter_mut();
            // The first block may be partial (a piece ended inside it); then whole blocks.
            let lead = (self.block_w - col % self.block_w).min(row.len());
            let (head, tail) = row.split_at(lead);
            let blocks = std::iter::once(head).chain(tail.chunks(self.block_w));
            for ((sum, count), block) in sums.zip(counts).zip(blocks) {
                fold(block, sum, count);
            }
            self.pos += row.len();
            vals = rest;
        }
    }

    /// The cell of column `col` of flat row `r` (rows count over N, C and H).
    #[inline(always)]
    fn first_cell(&self, r: usize, col: usize) -> usize {
        let (y, item) = (r % self.height, r / (self.channels * self.height));
        item * self.cells_w * self.height.div_ceil(self.block_h)
            + (y / self.block_h) * self.cells_w
            + col / self.block_w
    }

    /// The thumbnail; `None` when the elements fed were not exactly the shape's.
    pub fn finish(self) -> Option<Thumbnail> {
        if self.pos != self.total {
            return None;
        }
        let values = self
            .sums
            .iter()
            .zip(&self.counts)
            .map(|(&s, &k)| {
                if k == 0 {
                    f32::NAN
                } else {
                    (s / k as f64) as f32
                }
            })
            .collect();
        Some(Thumbnail {
            batch: self.batch as u32,
            height: self.height.div_ceil(self.block_h) as u32,
            width: self.cells_w as u32,
            block_h: self.block_h as u32,
            block_w: self.block_w as u32,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_channel_mean_abs() {
        // N=2, C=2, H=4, W=4 → no pooling needed (4 ≤ 32): thumbnail = mean over channels of |x|.
        let mut v = vec![0.0f32; 2 * 2 * 4 * 4];
        v[0] = -2.0; // n0 c0 (0,0)
        v[16] = 4.0; // n0 c1 (0,0)
        v[32 + 5] = 1.0; // n1 c0 (1,1)
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = thumbnail(DType::F32, &[2, 2, 4, 4], &bytes).unwrap();
        assert_eq!(
            (t.batch, t.height, t.width, t.block_h, t.block_w),
            (2, 4, 4, 1, 1)
        );
        assert_eq!(t.item(0).unwrap()[0], 3.0);
        assert_eq!(t.item(1).unwrap()[5], 0.5);
    }

    #[test]
    fn large_maps_are_pooled_to_32() {
        let (h, w) = (104usize, 70usize);
        let v = vec![1.0f32; h * w];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = thumbnail(DType::F32, &[1, 1, h as u64, w as u64], &bytes).unwrap();
        assert!(t.height <= 32 && t.width <= 32);
        assert_eq!((t.block_h, t.block_w), (4, 3));
        assert!(t.values.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn other_ranks_and_bad_lengths() {
        assert!(thumbnail(DType::F32, &[4, 4], &[0; 64]).is_none());
        assert!(thumbnail(DType::F32, &[1, 1, 2, 2], &[0; 15]).is_none());
        assert!(thumbnail(DType::F32, &[0, 1, 2, 2], &[]).is_none());
    }

    #[test]
    fn fast_path_and_parts_agree_with_the_general_path() {
        // W = 70 (blocks of 3 pixels straddle nothing), 2 items; the same values as f64 take
        // the general path, and a NaN forces one row of the f32 tensor onto it too.
        let shape = [2u64, 3, 40, 70];
        let n: usize = shape.iter().product::<u64>() as usize;
        let mut v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 70.0)
            .collect();
        let f64_bytes: Vec<u8> = v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let a = thumbnail(DType::F32, &shape, &f32_bytes(&v)).unwrap();
        let b = thumbnail(DType::F64, &shape, &f64_bytes).unwrap();
        assert_eq!(a, b);
        v[70 * 5 + 3] = f32::NAN;
        let bytes = f32_bytes(&v);
        let whole = thumbnail(DType::F32, &shape, &bytes).unwrap();
        assert!(whole.values.iter().all(|x| x.is_finite()));
        let half = bytes.len() / 2;
        let parts = thumbnail_parts(DType::F32, &shape, &[&bytes[..half], &bytes[half..]]);
        assert_eq!(parts.as_ref(), Some(&whole));
        let swapped = [&bytes[half..], &bytes[..half]];
        let s = thumbnail_parts(DType::F32, &shape, &swapped).unwrap();
        assert_eq!((s.item(0), s.item(1)), (whole.item(1), whole.item(0)));
        assert!(thumbnail_parts(DType::F32, &shape, &[&bytes[..6], &bytes[6..]]).is_none());
        // Pieces that end inside rows and blocks give the same sums.
        let mut b = ThumbnailBuilder::new(&shape).unwrap();
        for piece in v.chunks(37) {
            b.update(&piece.iter().map(|&x| x as f64).collect::<Vec<_>>());
        }
        assert_eq!(b.finish().as_ref(), Some(&whole));
    }
}
