//! Noise-divergence diagnosis: what kind of difference lies between two noise tensors.
//!
//! [`diagnose`] sorts a pair (trace A's and B's `noise.initial`, or one `sampler.noise` draw)
//! into one [`NoiseClass`] by the shape of the difference, not its size:
//! - `identical`: bit for bit.
//! - `close`: every element agrees within [`AGREE_ABS`] + [`AGREE_REL`]·|b|, or the two are
//!   linearly equal to 10⁻³ of their spread with slope 1 and offset 0 and at most 10⁻² apart:
//!   the same draws computed with other math (a GPU's `__sincosf` against an emulation,
//!   float16 copies).
//! - `gpu-wave`: the first K elements agree, then (from K on) at least 90 % of elements differ
//!   and the differing tail is uncorrelated, and K is a multiple of 256: PyTorch's CUDA noise
//!   on two cards whose grids hold different numbers of threads (K = SMs × threads per SM of
//!   the smaller card). The named cards with that wave ([`presets`]) and the largest square
//!   image that still agrees are reported.
//! - `shared-prefix`: as `gpu-wave`, but K is not a multiple of 256.
//! - `scaled-shifted`: a = s·b + c almost exactly (correlation² ≥ 1 − 10⁻⁶) with s ≠ 1 or c ≠ 0.
//! - `unrelated`: no shared prefix, both sides look standard normal (mean and variance within
//!   six standard errors) and they are uncorrelated: another generator, seed or device.
//! - `shape-mismatch`: the shapes differ (no element comparison).
//! - `different`: none of the above.
//!
//! Invariants: candle-free (plain slices of numbers); no input, however odd (NaN, ±∞, empty,
//! mismatched lengths), panics; non-finite elements never agree unless bit-identical and are
//! left out of the moments.
//!
//! [`presets`]: crate::cards

use super::jf64;
use crate::cards as presets;
use serde::{Deserialize, Serialize};

/// Absolute part of the agreement tolerance (the GPU's sincos differs from libm by ≤ 3·10⁻⁶).
pub const AGREE_ABS: f64 = 1e-5;
/// Relative part of the agreement tolerance.
pub const AGREE_REL: f64 = 1e-5;

/// The kind of difference between two noise tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseClass {
    Identical,
    Close,
    GpuWave,
    SharedPrefix,
    ScaledShifted,
    Unrelated,
    ShapeMismatch,
    Different,
}

impl NoiseClass {
    pub fn name(self) -> &'static str {
        match self {
            NoiseClass::Identical => "identical",
            NoiseClass::Close => "close",
            NoiseClass::GpuWave => "gpu-wave",
            NoiseClass::SharedPrefix => "shared-prefix",
            NoiseClass::ScaledShifted => "scaled-shifted",
            NoiseClass::Unrelated => "unrelated",
            NoiseClass::ShapeMismatch => "shape-mismatch",
            NoiseClass::Different => "different",
        }
    }

    /// The two tensors come from different generators or layouts (not just other rounding).
    pub fn is_generator_difference(self) -> bool {
        matches!(
            self,
            NoiseClass::GpuWave
                | NoiseClass::SharedPrefix
                | NoiseClass::Unrelated
                | NoiseClass::Different
                | NoiseClass::ScaledShifted
        )
    }
}

/// A card arrangement whose RNG wave is K elements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveCandidate {
    pub sms: u64,
    pub threads_per_sm: u32,
    /// Named cards with exactly these numbers.
    pub cards: Vec<String>,
}

/// What a GPU RNG wave of `elements` implies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub elements: u64,
    /// SMs × threads per SM = elements, for 2048, 1536 and 1024 threads per SM.
    pub candidates: Vec<WaveCandidate>,
    /// The largest N (a multiple of 8) whose N×N single-image latent (4·(N/8)² elements) fits
    /// in the wave: cards with this wave and a larger one agree up to N×N and not above.
    pub max_square: u64,
}

/// The diagnosis of one pair of noise tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseDiagnosis {
    pub class: NoiseClass,
    /// One paragraph for reports.
    pub summary: String,
    /// Elements compared (0 for a shape mismatch).
    pub count: u64,
    /// Flat index of the first element whose bits differ.
    pub first_diff: Option<u64>,
    /// Leading elements that agree within tolerance (the K of a wave); `None` when all agree.
    pub agree_prefix: Option<u64>,
    /// Elements that do not agree within tolerance.
    pub differing: u64,
    /// Largest |a − b| over finite pairs.
    #[serde(with = "jf64")]
    pub max_abs: f64,
    /// Pearson correlation of the differing part (from the prefix on), or of all elements.
    #[serde(with = "jf64::opt")]
    pub correlation: Option<f64>,
    /// a ≈ scale·b + shift (least squares), for `scaled-shifted` and `close`.
    #[serde(with = "jf64::opt")]
    pub scale: Option<f64>,
    #[serde(with = "jf64::opt")]
    pub shift: Option<f64>,
    pub wave: Option<Wave>,
}

impl NoiseDiagnosis {
    fn new(class: NoiseClass, summary: String) -> Self {
        NoiseDiagnosis {
            class,
            summary,
            count: 0,
            first_diff: None,
            agree_prefix: None,
            differing: 0,
            max_abs: 0.0,
            correlation: None,
            scale: None,
            shift: None,
            wave: None,
        }
    }
}

/// Sums for moments and correlation over finite pairs.
#[derive(Default)]
struct Moments {
    n: f64,
    sa: f64,
    sb: f64,
    saa: f64,
    sbb: f64,
    sab: f64,
}

impl Moments {
    fn add(&mut self, a: f64, b: f64) {
        if a.is_finite() && b.is_finite() {
            self.n += 1.0;
            self.sa += a;
            self.sb += b;
            self.saa += a * a;
            self.sbb += b * b;
            self.sab += a * b;
        }
    }
    fn mean(&self) -> (f64, f64) {
        let n = self.n.max(1.0);
        (self.sa / n, self.sb / n)
    }
    /// Population variances and covariance.
    fn var_cov(&self) -> (f64, f64, f64) {
        let n = self.n.max(1.0);
        let (ma, mb) = self.mean();
        (
            (self.saa / n - ma * ma).max(0.0),
            (self.sbb / n - mb * mb).max(0.0),
            self.sab / n - ma * mb,
        )
    }
    fn correlation(&self) -> Option<f64> {
        let (va, vb, c) = self.var_cov();
        (self.n >= 2.0 && va > 0.0 && vb > 0.0).then(|| (c / (va * vb).sqrt()).clamp(-1.0, 1.0))
    }
    /// Both sides plausibly N(0, 1): mean and variance within six standard errors.
    fn standard_normal(&self) -> bool {
        let n = self.n.max(1.0);
        let (ma, mb) = self.mean();
        let (va, vb, _) = self.var_cov();
        let mean_ok = |m: f64| m.abs() <= 6.0 / n.sqrt() + 1e-3;
        let var_ok = |v: f64| (v - 1.0).abs() <= 6.0 * (2.0 / n).sqrt() + 1e-2;
        self.n >= 2.0 && mean_ok(ma) && mean_ok(mb) && var_ok(va) && var_ok(vb)
    }
}

/// Do two noise elements agree? Bit for bit, or within [`AGREE_ABS`] + [`AGREE_REL`]·|b|; a NaN
/// or infinite difference agrees only when the bits are equal. The rule [`diagnose`] counts
/// differing elements by.
pub fn element_agrees(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a - b).abs() <= AGREE_ABS + AGREE_REL * b.abs()
}

/// Keys whose records are noise: `noise.*` (the initial noise) and `sampler.noise` (ancestral
/// draws).
pub fn is_noise_key(key: &str) -> bool {
    key.starts_with("noise.") || key == "sampler.noise"
}

/// Largest N, a multiple of 8, with 4·(N/8)² ≤ `elements`.
pub fn max_square(elements: u64) -> u64 {
    let mut side = ((elements / 4) as f64).sqrt() as u64;
    while side * side > elements / 4 {
        side -= 1;
    }
    while (side + 1) * (side + 1) <= elements / 4 {
        side += 1;
    }
    8 * side
}

/// The boundary of two cards' PyTorch CUDA noise for single square images: `(agree, differ)`,
/// the largest N×N (N a multiple of 8) at which the two draw identical noise, and the first at
/// which they differ (the next multiple of 8). `None` when the waves are equal: such cards
/// draw the same noise at every size. With waves of 30 720 (GTX 1070) and 40 960 (T4)
/// elements: (696, 704). Every statement of a card pair's boundary (demo, docs) comes from here.
pub fn square_boundary(wave_a: u64, wave_b: u64) -> Option<(u64, u64)> {
    (wave_a != wave_b).then(|| square_sizes(wave_a.min(wave_b)))
}

/// For two draws whose first `elements` agree: `(agree, differ)`, the largest N×N single image
/// (N a multiple of 8) within them and the first size past them.
pub fn square_sizes(elements: u64) -> (u64, u64) {
    let agree = max_square(elements);
    (agree, agree + 8)
}

/// What a wave of `elements` implies: candidate SM counts and named cards.
pub fn wave(elements: u64) -> Wave {
    let candidates = [2048u32, 1536, 1024]
        .into_iter()
        .filter(|&t| elements > 0 && elements.is_multiple_of(t as u64))
        .map(|t| WaveCandidate {
            sms: elements / t as u64,
            threads_per_sm: t,
            cards: presets::PRESETS
                .iter()
                .filter(|p| p.threads_per_sm == t && p.sms as u64 * t as u64 == elements)
                .map(|p| p.card.to_string())
                .collect(),
        })
        .collect();
    Wave {
        elements,
        candidates,
        max_square: max_square(elements),
    }
}

fn shape_text(s: &[u64]) -> String {
    match s {
        [.., 4, h, w] => format!("{s:?} (a {}x{} image)", w * 8, h * 8),
        _ => format!("{s:?}"),
    }
}

fn pct(part: u64, whole: u64) -> String {
    format!("{:.1} %", 100.0 * part as f64 / whole.max(1) as f64)
}

/// Classify the difference between noise tensors `a` (trace A) and `b` (trace B).
pub fn diagnose<T: Copy + Into<f64>>(
    shape_a: &[u64],
    a: &[T],
    shape_b: &[u64],
    b: &[T],
) -> NoiseDiagnosis {
    if shape_a != shape_b || a.len() != b.len() {
        return NoiseDiagnosis::new(
            NoiseClass::ShapeMismatch,
            format!(
                "The noise shapes differ: A {} vs B {}; the runs used a different size or batch, so no element can be compared.",
                shape_text(shape_a),
                shape_text(shape_b)
            ),
        );
    }
    let n = a.len() as u64;
    let mut d = NoiseDiagnosis::new(NoiseClass::Identical, String::new());
    d.count = n;
    let mut all = Moments::default();
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y): (f64, f64) = (x.into(), y.into());
        if x.to_bits() == y.to_bits() {
            all.add(x, y);
            continue;
        }
        d.first_diff.get_or_insert(i as u64);
        let diff = (x - y).abs();
        if diff.is_finite() {
            d.max_abs = d.max_abs.max(diff);
        }
        if !element_agrees(x, y) {
            d.differing += 1;
            d.agree_prefix.get_or_insert(i as u64);
        }
        all.add(x, y);
    }
    let Some(first) = d.first_diff else {
        d.summary = format!("The noise is bit-identical ({n} elements).");
        return d;
    };
    let (va, vb, cov) = all.var_cov();
    let r = all.correlation();
    d.correlation = r;
    let slope = if vb > 0.0 { cov / vb } else { f64::NAN };
    let (ma, mb) = all.mean();
    let offset = ma - slope * mb;
    let spread = vb.sqrt().max(f64::MIN_POSITIVE);
    let linear = r.is_some_and(|r| r * r >= 1.0 - 1e-6);
    let unit = (slope - 1.0).abs() <= 1e-3 && offset.abs() <= 1e-3 * spread;
    let Some(k) = d.agree_prefix else {
        d.class = NoiseClass::Close;
        d.summary = format!(
            "The noise agrees up to rounding: every element within {:.1e} (first bit difference at flat index {first}). The same draws computed with different math, e.g. a GPU's approximate sin/cos against an emulation.",
            d.max_abs
        );
        return d;
    };
    if linear && unit && d.max_abs <= 1e-2 {
        d.class = NoiseClass::Close;
        d.scale = Some(slope);
        d.shift = Some(offset);
        d.summary = format!(
            "The noise agrees up to rounding: max |a−b| {:.1e} (correlation {:.7}); the same draws stored or computed at lower precision (e.g. float16).",
            d.max_abs,
            r.unwrap_or(1.0)
        );
        return d;
    }
    if linear && !unit {
        d.class = NoiseClass::ScaledShifted;
        d.scale = Some(slope);
        d.shift = Some(offset);
        d.summary = format!(
            "The noise is the same up to scale and shift: A = {slope:.6}·B {} {:.3e} (correlation {:.7}). One side was stored scaled or shifted (e.g. x_T = σ₀·noise instead of unit noise, or a key map pairing different quantities).",
            if offset < 0.0 { "−" } else { "+" },
            offset.abs(),
            r.unwrap_or(1.0)
        );
        return d;
    }
    if k > 0 {
        let mut tail = Moments::default();
        let mut tail_differs = 0u64;
        for (&x, &y) in a[k as usize..].iter().zip(&b[k as usize..]) {
            let (x, y): (f64, f64) = (x.into(), y.into());
            tail.add(x, y);
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !((x - y).abs() <= AGREE_ABS + AGREE_REL * y.abs()) {
                tail_differs += 1;
            }
        }
        let m = n - k;
        let rt = tail.correlation();
        let uncorrelated = rt.is_none_or(|r| r.abs() <= 0.1 + 6.0 / tail.n.max(1.0).sqrt());
        if tail_differs as f64 >= 0.9 * m as f64 && uncorrelated {
            d.correlation = rt;
            let agree = if first == k {
                "are bit-identical".to_string()
            } else {
                format!("agree within {AGREE_ABS:.0e} (the first bit difference is at {first})")
            };
            let lead = format!(
                "The first {k} elements {agree} and the remaining {m} ({}) are unrelated draws (correlation {:.3}).",
                pct(m, n),
                rt.unwrap_or(0.0)
            );
            if k.is_multiple_of(256) {
                let w = wave(k);
                let cands: Vec<String> = w
                    .candidates
                    .iter()
                    .map(|c| {
                        let cards = if c.cards.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", c.cards.join(", "))
                        };
                        format!("{} SMs × {}{cards}", c.sms, c.threads_per_sm)
                    })
                    .collect();
                d.class = NoiseClass::GpuWave;
                d.summary = format!(
                    "GPU RNG wave of {k} elements: consistent with SMs × threads/SM = {k}{}; these cards cannot reproduce each other's images above {s}×{s}. {lead} PyTorch draws CUDA noise in a grid capped at SMs × threads per SM, so cards with different SM counts share only the first wave; draw the noise on the CPU (--rng torch-cpu) or inject it from a file to compare the rest.",
                    if cands.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", cands.join("; "))
                    },
                    s = w.max_square
                );
                d.wave = Some(w);
            } else {
                d.class = NoiseClass::SharedPrefix;
                d.summary = format!(
                    "{lead} The same generator and seed with an output layout that depends on the run; {k} is not a multiple of 256, so this is not PyTorch's CUDA grid wave."
                );
            }
            return d;
        }
    }
    if k == 0 && all.standard_normal() && r.is_none_or(|r| r.abs() <= 6.0 / all.n.max(1.0).sqrt()) {
        d.class = NoiseClass::Unrelated;
        d.summary = format!(
            "Unrelated noise: no shared prefix; both sides look standard normal (means {ma:.3}, {mb:.3}; variances {va:.3}, {vb:.3}) and are uncorrelated (r = {:.3}). A different generator, seed or device, e.g. CPU against GPU noise.",
            r.unwrap_or(0.0)
        );
        return d;
    }
    d.class = NoiseClass::Different;
    d.summary = format!(
        "The noise differs from flat index {k} on ({} of elements beyond {AGREE_ABS:.0e}; correlation {:.3}), in no pattern a generator explains (not a shared prefix, not a scaling, not two independent N(0,1) draws).",
        pct(d.differing, n),
        r.unwrap_or(0.0)
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard normal values (Box–Muller of a 64-bit LCG).
    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (next(), next());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    const SHAPE: [u64; 4] = [1, 4, 104, 104];

    #[test]
    fn identical_and_close() {
        let a = normals(1, 43_264);
        let d = diagnose(&SHAPE, &a, &SHAPE, &a);
        assert_eq!(d.class, NoiseClass::Identical);
        assert!(d.summary.contains("bit-identical"), "{}", d.summary);
        // Ulp-level differences everywhere: close.
        let b: Vec<f32> = a.iter().map(|x| x + 2e-6 * x.signum()).collect();
        let d = diagnose(&SHAPE, &a, &SHAPE, &b);
        assert_eq!(
            (d.class, d.first_diff, d.agree_prefix),
            (NoiseClass::Close, Some(0), None)
        );
        // float16 copies: close by the linear test.
        let h: Vec<f32> = a.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        let d = diagnose(&SHAPE, &a, &SHAPE, &h);
        assert_eq!(d.class, NoiseClass::Close, "{}", d.summary);
        assert!(d.summary.contains("lower precision"));
    }

    #[test]
    fn waves_and_prefixes() {
        let a = normals(1, 43_264);
        let mut b = a.clone();
        b[30_720..].copy_from_slice(&normals(2, 43_264 - 30_720));
        let d = diagnose(&SHAPE, &a, &SHAPE, &b);
        assert_eq!(d.class, NoiseClass::GpuWave, "{}", d.summary);
        assert_eq!(d.agree_prefix, Some(30_720));
        let w = d.wave.as_ref().unwrap();
        assert_eq!(w.max_square, 696);
        assert!(
            w.candidates.iter().any(|c| c.sms == 15
                && c.threads_per_sm == 2048
                && c.cards == ["GeForce GTX 1070"])
        );
        assert!(
            w.candidates
                .iter()
                .any(|c| c.sms == 30 && c.cards == ["GeForce RTX 2060"])
        );
        assert!(
            d.summary.contains("GPU RNG wave of 30720 elements")
                && d.summary.contains("= 30720")
                && d.summary.contains("above 696×696")
                && d.summary
                    .contains("The first 30720 elements are bit-identical"),
            "{}",
            d.summary
        );
        // Not a multiple of 256: a shared prefix, not a CUDA wave.
        let mut c = a.clone();
        c[1000..].copy_from_slice(&normals(3, 43_264 - 1000));
        let d = diagnose(&SHAPE, &a, &SHAPE, &c);
        assert_eq!(
            (d.class, d.agree_prefix),
            (NoiseClass::SharedPrefix, Some(1000))
        );
    }

    #[test]
    fn unrelated_scaled_shape_and_different() {
        let a = normals(1, 16_384);
        let b = normals(9, 16_384);
        let s = [1u64, 4, 64, 64];
        let d = diagnose(&s, &a, &s, &b);
        assert_eq!((d.class, d.agree_prefix), (NoiseClass::Unrelated, Some(0)));
        // σ₀-scaled copy.
        let sc: Vec<f32> = a.iter().map(|x| x * 14.614_642).collect();
        let d = diagnose(&s, &sc, &s, &a);
        assert_eq!(d.class, NoiseClass::ScaledShifted, "{}", d.summary);
        assert!((d.scale.unwrap() - 14.614_642).abs() < 1e-4);
        assert!(d.shift.unwrap().abs() < 1e-4);
        let sh: Vec<f32> = a.iter().map(|x| x + 0.5).collect();
        assert_eq!(diagnose(&s, &a, &s, &sh).class, NoiseClass::ScaledShifted);
        // Shapes.
        let d = diagnose(&[1, 4, 64, 64], &a, &[1, 4, 32, 128], &a);
        assert_eq!(d.class, NoiseClass::ShapeMismatch);
        assert!(
            d.summary.contains("512x512") && d.summary.contains("1024x256"),
            "{}",
            d.summary
        );
        // Correlated but not linear, not a prefix: different.
        let cubed: Vec<f32> = a.iter().map(|x| x + 0.3 * x * x * x).collect();
        assert_eq!(diagnose(&s, &cubed, &s, &a).class, NoiseClass::Different);
        // A wave whose tail is correlated (a partial perturbation) is not a wave.
        let mut p = a.clone();
        for v in &mut p[8192..] {
            *v *= 1.01;
        }
        assert_eq!(diagnose(&s, &p, &s, &a).class, NoiseClass::Different);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let e: [f32; 0] = [];
        assert_eq!(diagnose(&[0], &e, &[0], &e).class, NoiseClass::Identical);
        let nan = [f32::NAN, 1.0, f32::INFINITY];
        let d = diagnose(&[3], &nan, &[3], &[0.0f32, 1.0, 2.0]);
        assert_eq!(d.first_diff, Some(0));
        assert!(d.max_abs.is_finite());
        let d = diagnose(&[3], &nan, &[3], &nan);
        assert_eq!(d.class, NoiseClass::Identical);
        assert_eq!(
            diagnose(&[2], &[1.0f64, 2.0], &[2], &[1.0f64]).class,
            NoiseClass::ShapeMismatch
        );
        assert_eq!(max_square(16_384), 512);
        assert_eq!(max_square(40_960), 808);
        assert_eq!(max_square(0), 0);
        // GTX 1070 (30 720) and T4 (40 960): 4·87² = 30 276 fits the smaller wave, 4·88² = 30 976
        // does not, so they agree up to 696×696 and differ from 704×704 on.
        assert_eq!(max_square(30_720), 696);
        assert_eq!(square_boundary(30_720, 40_960), Some((696, 704)));
        assert_eq!(square_boundary(40_960, 30_720), Some((696, 704)));
        assert_eq!(square_boundary(30_720, 30_720), None);
        for (a, b) in [(16_384u64, 20_480u64), (30_720, 40_960), (40_960, 270_336)] {
            let (agree, differ) = square_boundary(a, b).unwrap();
            let latent = |n: u64| 4 * (n / 8) * (n / 8);
            assert!(
                latent(agree) <= a.min(b) && latent(differ) > a.min(b),
                "{a} {b}"
            );
        }
        assert_eq!(wave(20_480).candidates.len(), 2);
    }
}
