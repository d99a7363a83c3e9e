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
    let &[n, c, h, w] = shape else { return None };
    let (n, c, h, w) = (n as usize, c as usize, h as usize, w as usize);
    let total = n.checked_mul(c)?.checked_mul(h)?.checked_mul(w)?;
    if total == 0 || bytes.len() != total.checked_mul(dtype.size())? {
        return None;
    }
    let (bh, bw) = (h.div_ceil(MAX_SIDE), w.div_ceil(MAX_SIDE));
    let (th, tw) = (h.div_ceil(bh), w.div_ceil(bw));
    let mut sums = vec![0.0f64; n * th * tw];
    let mut counts = vec![0u32; n * th * tw];
    let mut row = Box::new([0.0f64; super::CHUNK]);
    let row_bytes = w * dtype.size();
    for (r, raw) in bytes.chunks_exact(row_bytes).enumerate() {
        let y = r % h;
        let item = r / (c * h);
        let cells = item * th * tw + (y / bh) * tw;
        // Rows are decoded in CHUNK-sized pieces so that very wide tensors work too.
        for (p, piece) in raw.chunks(super::CHUNK * dtype.size()).enumerate() {
            let m = super::decode_chunk(dtype, piece, &mut row);
            for (i, &x) in row[..m].iter().enumerate() {
                if x.is_finite() {
                    let cell = cells + (p * super::CHUNK + i) / bw;
                    sums[cell] += x.abs();
                    counts[cell] += 1;
                }
            }
        }
    }
    let values = sums
        .iter()
        .zip(&counts)
        .map(|(&s, &k)| {
            if k == 0 {
                f32::NAN
            } else {
                (s / k as f64) as f32
            }
        })
        .collect();
    Some(Thumbnail {
        batch: n as u32,
        height: th as u32,
        width: tw as u32,
        block_h: bh as u32,
        block_w: bw as u32,
        values,
    })
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
}
