//! CountSketch: a seeded linear projection of a tensor to `k` numbers.
//!
//! Element `i` of a tensor adds `sign(i) · x_i` to bucket `bucket(i)`. Elements come in pairs
//! sharing one 64-bit hash `h = splitmix64(seed + (⌊i/2⌋ + 1) · 0x9E3779B97F4A7C15)`; an even
//! `i` takes the low 32 bits of `h`, an odd `i` the high 32 bits, and from that half
//! `bucket = half & (k − 1)` and `sign = −1` if bit 31 is set, else +1. The seed is XXH3-64 of
//! the key and shape (see [`sketch_seed`]), so two machines recording the same key with the
//! same shape use the same projection, and because the projection is linear, `‖S(a) − S(b)‖`
//! estimates `‖a − b‖` without either tensor. The squared-norm estimate is unbiased with
//! relative standard deviation about √(2/k); for the norm itself about 1/√(2k) (4.4 % at
//! k = 256).
//!
//! `k` is a power of two between 1 and 65 536. Buckets accumulate in f64 and are stored in f64:
//! at relative differences of 1e-6 an f32 bucket would round away the signal.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// Default number of buckets.
pub const DEFAULT_K: usize = 256;

/// Largest allowed number of buckets.
pub const MAX_K: usize = 1 << 16;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A finished sketch of one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// Seed the bucket/sign hash was derived from (see [`sketch_seed`]).
    pub seed: u64,
    /// `k` buckets.
    pub values: Vec<f64>,
}

/// Estimate of ‖a − b‖ from two sketches of the same key and shape, with a one-sigma relative
/// error bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormEstimate {
    pub value: f64,
    /// Relative standard error of `value` (≈ 1/√(2k)).
    pub rel_error: f64,
}

impl Sketch {
    /// Estimate ‖a − b‖ where `self` sketches a and `other` sketches b. `None` if the sketches
    /// were made with different seeds or sizes and so are not comparable.
    pub fn diff_norm(&self, other: &Sketch) -> Option<NormEstimate> {
        if self.seed != other.seed
            || self.values.len() != other.values.len()
            || self.values.is_empty()
        {
            return None;
        }
        let sq: f64 = self
            .values
            .iter()
            .zip(&other.values)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        Some(NormEstimate {
            value: sq.sqrt(),
            rel_error: 1.0 / (2.0 * self.values.len() as f64).sqrt(),
        })
    }

    /// Estimate of ‖a‖ from the sketch alone.
    pub fn norm(&self) -> f64 {
        self.values.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
}

/// The seed for `key` and `shape`: XXH3-64 (seed 0) of the key's UTF-8 bytes, one 0xFF byte, and
/// each dimension as u64 little-endian.
pub fn sketch_seed(key: &str, shape: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    h.update(key.as_bytes());
    h.update(&[0xFF]);
    for d in shape {
        h.update(&d.to_le_bytes());
    }
    h.digest()
}

#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit hash shared by elements `2·pair` (low half) and `2·pair + 1` (high half).
fn pair_hash(seed: u64, pair: u64) -> u64 {
    splitmix64(seed.wrapping_add(pair.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// `x` with its sign flipped when bit 31 of `half` is set (branch-free: the sign is a coin
/// flip, which a branch would mispredict half the time).
#[inline(always)]
fn signed(half: u32, x: f64) -> f64 {
    f64::from_bits(x.to_bits() ^ (((half >> 31) as u64) << 63))
}

/// Incremental sketch: feed values in flat-index order.
#[derive(Clone, Debug)]
pub struct SketchBuilder {
    seed: u64,
    mask: u64,
    buckets: Vec<f64>,
}

impl SketchBuilder {
    /// A sketch for `key`/`shape` with `k` buckets; `k` is rounded up to a power of two and
    /// clamped to 1..=[`MAX_K`].
    pub fn new(key: &str, shape: &[u64], k: usize) -> Self {
        let k = k.clamp(1, MAX_K).next_power_of_two();
        SketchBuilder {
            seed: sketch_seed(key, shape),
            mask: k as u64 - 1,
            buckets: vec![0.0; k],
        }
    }

    /// Add `vals` (f32 or f64), whose first element has flat index `start`. Non-finite values
    /// are skipped so that a single NaN does not erase the whole sketch (the summary counts
    /// them instead).
    pub fn update<T: Copy + Into<f64>>(&mut self, start: u64, vals: &[T]) {
        let (mut z, vals) = self.align(start, vals);
        let mut pairs = vals.chunks_exact(2);
        for p in &mut pairs {
            let h = splitmix64(z);
            z = z.wrapping_add(GAMMA);
            self.add(h as u32, p[0].into());
            self.add((h >> 32) as u32, p[1].into());
        }
        if let [last] = pairs.remainder() {
            self.add(splitmix64(z) as u32, (*last).into());
        }
    }

    /// [`SketchBuilder::update`] for values known to be finite (the summary's fast path has
    /// checked them): the same buckets and signs, without the per-element finiteness test.
    pub fn update_finite_f32(&mut self, start: u64, vals: &[f32]) {
        let (mut z, vals) = self.align(start, vals);
        let mask = self.mask;
        // Slicing to exactly `mask + 1` buckets lets the compiler drop the bounds checks.
        let Some(buckets) = self.buckets.get_mut(..=mask as usize) else {
            return;
        };
        let mut pairs = vals.chunks_exact(2);
        for p in &mut pairs {
            let h = splitmix64(z);
            z = z.wrapping_add(GAMMA);
            let (lo, hi) = (h as u32, (h >> 32) as u32);
            buckets[(lo as u64 & mask) as usize] += signed(lo, p[0] as f64);
            buckets[(hi as u64 & mask) as usize] += signed(hi, p[1] as f64);
        }
        if let [last] = pairs.remainder() {
            let lo = splitmix64(z) as u32;
            buckets[(lo as u64 & mask) as usize] += signed(lo, *last as f64);
        }
    }

    /// Bring `vals` (first flat index `start`) to a pair boundary: an odd `start` adds the first
    /// value under the high half of its pair's hash. Returns the splitmix64 state of the first
    /// whole pair and the values from there.
    fn align<'a, T: Copy + Into<f64>>(&mut self, start: u64, vals: &'a [T]) -> (u64, &'a [T]) {
        let mut pair = start / 2;
        let mut vals = vals;
        if start % 2 == 1
            && let Some((&first, rest)) = vals.split_first()
        {
            self.add((pair_hash(self.seed, pair) >> 32) as u32, first.into());
            pair += 1;
            vals = rest;
        }
        let z = self
            .seed
            .wrapping_add(pair.wrapping_add(1).wrapping_mul(GAMMA));
        (z, vals)
    }

    /// Add `x` under one 32-bit half hash: bucket from the low bits, sign from bit 31.
    #[inline(always)]
    fn add(&mut self, half: u32, x: f64) {
        let b = (half as u64 & self.mask) as usize;
        self.buckets[b] += if x.is_finite() { signed(half, x) } else { 0.0 };
    }

    pub fn finish(self) -> Sketch {
        Sketch {
            seed: self.seed,
            values: self.buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_seeded_by_key_and_shape() {
        let a: Vec<f64> = (0..1000).map(|i| (i as f64).sin()).collect();
        let b: Vec<f64> = (0..1000).map(|i| (i as f64).cos()).collect();
        let sk = |v: &[f64]| {
            let mut s = SketchBuilder::new("unet.conv_in", &[1000], 64);
            s.update(0, v);
            s.finish()
        };
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let (sa, sb, ss) = (sk(&a), sk(&b), sk(&sum));
        for i in 0..64 {
            assert!((sa.values[i] + sb.values[i] - ss.values[i]).abs() < 1e-9);
        }
        assert_ne!(
            sketch_seed("unet.conv_in", &[1000]),
            sketch_seed("unet.conv_out", &[1000])
        );
        assert_ne!(sketch_seed("k", &[10, 100]), sketch_seed("k", &[100, 10]));
    }

    #[test]
    fn split_updates_match_one_update() {
        let v: Vec<f64> = (0..777).map(|i| i as f64 * 0.25).collect();
        let mut one = SketchBuilder::new("k", &[777], 256);
        one.update(0, &v);
        let mut two = SketchBuilder::new("k", &[777], 256);
        two.update(0, &v[..301]);
        two.update(301, &v[301..302]);
        two.update(302, &v[302..]);
        assert_eq!(one.finish(), two.finish());
    }

    #[test]
    fn finite_fast_path_equals_the_general_update() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin() * 50.0).collect();
        for start in [0u64, 7, 4096] {
            let mut a = SketchBuilder::new("k", &[1001], 256);
            let mut b = a.clone();
            a.update(start, &v);
            b.update_finite_f32(start, &v[..500]);
            b.update_finite_f32(start + 500, &v[500..]);
            assert_eq!(a.finish(), b.finish(), "start {start}");
        }
    }

    #[test]
    fn incomparable_sketches() {
        let a = SketchBuilder::new("a", &[4], 8).finish();
        let b = SketchBuilder::new("b", &[4], 8).finish();
        assert!(a.diff_norm(&b).is_none());
        assert_eq!(
            SketchBuilder::new("a", &[4], 100).finish().values.len(),
            128
        );
    }
}
