//! CPU kernels for the UNet's hot paths in f32: convolution (im2col tiles + gemm, bias fused),
//! GroupNorm with an optional fused SiLU, GEGLU, and attention in query blocks (scores, softmax
//! and the value product per block, so attention memory stays bounded at any image size).
//!
//! candle composes these from many whole-tensor passes, each with a fresh allocation (GroupNorm
//! alone is ten), converts convolution inputs to NHWC element by element, and evaluates exp, erf
//! and tanh with scalar libm calls; these kernels make one or two cache-friendly passes and
//! evaluate the transcendental functions with vectorised polynomials.
//!
//! Invariants:
//! - Each entry point returns `None` when it does not apply (not on the CPU, not f32, an input
//!   not contiguous) and the caller then uses candle's op, so other devices and dtypes are
//!   unchanged.
//! - Results do not depend on the thread count: work is cut into pieces whose boundaries depend
//!   only on the shapes, each output element is computed by exactly one piece in a fixed order,
//!   and gemm never splits the reduction dimension.
//! - Vector code is chosen at run time (AVX2+FMA on x86-64, portable code elsewhere), so one
//!   binary runs on any x86-64; results may differ in the last bits between the two paths.
//! - Accuracy: exp within ~2 ulp, GELU within ~5e-7 relative of the exact function (more in the far
//!   negative tail, where the values are below 1e-5); every
//!   kernel is checked against candle's composition in the tests below.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Run `f` on the elements of a contiguous f32 CPU tensor; `None` for anything else.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Some(f(&v[start..end])),
        _ => None,
    }
}

fn tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

/// A raw pointer that worker threads write disjoint parts of.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every user writes a region no other piece of work touches (see each call site).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Whether the AVX2+FMA kernels can run here.
#[inline]
fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Define `fn $name(args)` whose body is compiled twice: for AVX2+FMA (chosen at run time when
/// the CPU has them) and for the baseline target. Inside the body `FMA` is a `const bool`.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                if avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body::<false>($($arg),*)
        }
    };
}

/// `a·b + c`, fused where the CPU has FMA (a libm call otherwise, so it is not used there).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// e^x for f32 (Cephes' expf polynomial; inputs clamped to [-87, 88]; NaN stays NaN). Written
/// without branches or table look-ups so that loops over it vectorise.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 5.000_000_1e-1);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    // 2^n from the rounded sum's low mantissa bits (they hold n exactly): integer lane
    // arithmetic, where `n as i32` would be a scalar, saturating conversion. A NaN input makes
    // `e` NaN, so the garbage exponent it gives here does not matter.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits((n_bits.wrapping_add(127) << 23) as u32)
}

/// x·σ(x).
#[inline(always)]
fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

/// Exact-erf GELU, 0.5·x·erfc(−x/√2), with Numerical Recipes' erfc (fractional error below
/// 1.2e-7 everywhere) so that the negative tail keeps its relative accuracy.
#[inline(always)]
fn gelu_erf<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(0.5, z, 1.0);
    let mut p = 0.170_872_77;
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = madd::<FMA>(p, t, c);
    }
    let erfc_z = t * exp::<FMA>(madd::<FMA>(-z, z, p));
    let erfc_minus = if x >= 0.0 { 2.0 - erfc_z } else { erfc_z };
    0.5 * x * erfc_minus
}

/// The tanh approximation of GELU (candle's `gelu`): 0.5·x·(1 + tanh(y)) with
/// y = √(2/π)(x + 0.044715x³), evaluated as x / (1 + e^{−2y}) (the same value, without the
/// cancellation of 1 + tanh(y) in the negative tail).
#[inline(always)]
fn gelu_tanh<const FMA: bool>(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    let y = K * madd::<FMA>(0.044_715 * x, x * x, x);
    x / (1.0 + exp::<FMA>(-2.0 * y))
}

simd_fn! {
    /// `out[i] = e^{x[i]}` (for the tests and benchmarks of the polynomial).
    fn exp_slice(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp::<FMA>(v);
        }
    }
}

/// e^x elementwise (exposed for tests and benchmarks).
pub fn exp_f32(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    exp_slice(x, &mut out);
    out
}

simd_fn! {
    /// Sum and sum of squared deviations from `mean` of `x`, in f64 over 8 lanes.
    fn moments(x: &[f32], mean: f64, out: &mut [f64; 2]) {
        let mut s = [0f64; 8];
        let mut q = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                let d = c[l] as f64 - mean;
                s[l] += d;
                q[l] += d * d;
            }
        }
        let (mut st, mut qt) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
        for &v in rest {
            let d = v as f64 - mean;
            st += d;
            qt += d * d;
        }
        *out = [st, qt];
    }
}

simd_fn! {
    /// `out = (x − mean)·a + b`, then SiLU when `act`.
    fn scale_shift(x: &[f32], mean: f32, a: f32, b: f32, act: bool, out: &mut [f32]) {
        if act {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = silu::<FMA>(madd::<FMA>(v - mean, a, b));
            }
        } else {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = madd::<FMA>(v - mean, a, b);
            }
        }
    }
}

/// GroupNorm over `x` [B, C, …] with per-channel `weight`/`bias` [C], then SiLU when `silu`.
/// Statistics per (batch, group) in f64: the mean first, then the squared deviations from it.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Option<Result<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 || groups == 0 || dims[1] % groups != 0 {
        return None;
    }
    let c = dims[1];
    let plane: usize = dims[2..].iter().product();
    let per_group = c / groups * plane;
    with_f32(x, |xs| {
        with_f32(weight, |w| {
            with_f32(bias, |b| {
                if w.len() != c || b.len() != c || per_group == 0 {
                    return None;
                }
                let mut out = vec![0f32; xs.len()];
                out.par_chunks_mut(per_group)
                    .zip(xs.par_chunks(per_group))
                    .enumerate()
                    .for_each(|(i, (o, xg))| {
                        let n = xg.len() as f64;
                        let mut m = [0f64; 2];
                        moments(xg, 0.0, &mut m);
                        let mean = m[0] / n;
                        moments(xg, mean, &mut m);
                        // Σ(x−mean) is ~0 but not exactly: the usual correction term.
                        let var = ((m[1] - m[0] * m[0] / n) / n).max(0.0);
                        let inv = 1.0 / (var + eps).sqrt();
                        let c0 = (i % groups) * (c / groups);
                        for (j, (oc, xc)) in o.chunks_mut(plane).zip(xg.chunks(plane)).enumerate() {
                            let a = (w[c0 + j] as f64 * inv) as f32;
                            scale_shift(xc, mean as f32, a, b[c0 + j], silu, oc);
                        }
                    });
                Some(tensor(out, &dims))
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()
}

simd_fn! {
    fn geglu_rows(h: &[f32], inner: usize, erf: bool, out: &mut [f32]) {
        for (o, r) in out.chunks_mut(inner).zip(h.chunks(2 * inner)) {
            let (a, g) = r.split_at(inner);
            if erf {
                for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                    *o = a * gelu_erf::<FMA>(g);
                }
            } else {
                for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                    *o = a * gelu_tanh::<FMA>(g);
                }
            }
        }
    }
}

/// GEGLU: `h` [.., 2·inner] → `h[.., :inner] · gelu(h[.., inner:])` with exact-erf (`erf`) or
/// tanh GELU.
pub fn geglu(h: &Tensor, erf: bool) -> Option<Result<Tensor>> {
    let mut dims = h.dims().to_vec();
    let last = *dims.last()?;
    if last % 2 != 0 || last == 0 {
        return None;
    }
    let inner = last / 2;
    *dims.last_mut()? = inner;
    with_f32(h, |hs| {
        let mut out = vec![0f32; hs.len() / 2];
        const ROWS: usize = 64;
        out.par_chunks_mut(ROWS * inner)
            .zip(hs.par_chunks(ROWS * 2 * inner))
            .for_each(|(o, r)| geglu_rows(r, inner, erf, o));
        tensor(out, &dims)
    })
}

/// Threads gemm may use for one call when the work around it is not already split.
fn gemm_parallelism(pieces: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && pieces < 2 * threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Elements of one im2col tile (8 MiB of f32): large enough for efficient gemm calls, small
/// enough to stay in the last-level cache.
const COL_TILE: usize = 2 << 20;

/// 2-D convolution, NCHW, groups 1, dilation 1: `x` [B, Cin, H, W], `w` [Cout, Cin, kh, kw],
/// optional `bias` [Cout]. Output rows are cut into tiles; each tile's im2col matrix
/// [Cin·kh·kw, pixels] is built in a per-thread buffer and multiplied by the weights with gemm
/// straight into the output, which was filled with the bias first. 1×1 stride-1 convolutions
/// multiply the input itself.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Option<Result<Tensor>> {
    let (b, cin, h, wd) = x.dims4().ok()?;
    let (cout, cin2, kh, kw) = w.dims4().ok()?;
    if cin != cin2 || stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return None;
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let (p_in, p_out) = (h * wd, ho * wo);
    let k = cin * kh * kw;
    let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
    let rows = if direct {
        ho
    } else {
        (COL_TILE / (k * wo).max(1)).clamp(1, ho)
    };
    let tiles = ho.div_ceil(rows);
    let pieces = b * tiles;
    let par = gemm_parallelism(pieces);
    let bias_of = |f: &dyn Fn(Option<&[f32]>) -> Option<Result<Tensor>>| match bias {
        None => f(None),
        Some(t) => with_f32(t, |bs| f(Some(bs))).flatten(),
    };
    with_f32(x, |xs| {
        with_f32(w, |ws| {
            bias_of(&|bs: Option<&[f32]>| {
                if bs.is_some_and(|bs| bs.len() != cout) {
                    return None;
                }
                let mut out = vec![0f32; b * cout * p_out];
                let dst = SendPtr(out.as_mut_ptr());
                let work = |col: &mut Vec<f32>, piece: usize| {
                    let (bi, t) = (piece / tiles, piece % tiles);
                    let (r0, r1) = (t * rows, ((t + 1) * rows).min(ho));
                    let n = (r1 - r0) * wo;
                    let img = &xs[bi * cin * p_in..(bi + 1) * cin * p_in];
                    let (rhs, rhs_rs): (&[f32], usize) = if direct {
                        (&img[r0 * wo..], p_in)
                    } else {
                        col.resize(k * n, 0.0);
                        im2col(
                            img,
                            (cin, h, wd),
                            (kh, kw),
                            stride,
                            padding,
                            (r0, r1, wo),
                            col,
                        );
                        (col.as_slice(), n)
                    };
                    // SAFETY: this piece writes output rows [r0, r1) of image `bi` for every
                    // output channel, which no other piece writes; `out` outlives the loop.
                    unsafe {
                        let d = dst.get().add(bi * cout * p_out + r0 * wo);
                        if let Some(bs) = bs {
                            for (co, &bv) in bs.iter().enumerate() {
                                std::slice::from_raw_parts_mut(d.add(co * p_out), n).fill(bv);
                            }
                        }
                        gemm::gemm(
                            cout,
                            n,
                            k,
                            d,
                            1,
                            p_out as isize,
                            bs.is_some(),
                            ws.as_ptr(),
                            1,
                            k as isize,
                            rhs.as_ptr(),
                            1,
                            rhs_rs as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            par,
                        );
                    }
                };
                if matches!(par, Parallelism::None) {
                    (0..pieces)
                        .into_par_iter()
                        .for_each_init(Vec::new, |col, piece| work(col, piece));
                } else {
                    let mut col = Vec::new();
                    (0..pieces).for_each(|piece| work(&mut col, piece));
                }
                Some(tensor(out, &[b, cout, ho, wo]))
            })
        })
        .flatten()
    })
    .flatten()
}

/// The im2col matrix of output rows `[r0, r1)` (each `wo` wide) of one image: row
/// `(ci·kh + dy)·kw + dx`, column `(oy − r0)·wo + ox` holds `img[ci, oy·s + dy − p, ox·s + dx − p]`
/// or 0 outside the image.
fn im2col(
    img: &[f32],
    (cin, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    p: usize,
    (r0, r1, wo): (usize, usize, usize),
    col: &mut [f32],
) {
    let n = (r1 - r0) * wo;
    for ci in 0..cin {
        let plane = &img[ci * h * w..(ci + 1) * h * w];
        for dy in 0..kh {
            for dx in 0..kw {
                let row = &mut col[((ci * kh + dy) * kw + dx) * n..][..n];
                // Output columns whose input column ox·s + dx − p lies inside [0, w).
                let ox_lo = p.saturating_sub(dx).div_ceil(s).min(wo);
                let ox_hi = if w + p > dx {
                    ((w + p - dx - 1) / s + 1).min(wo)
                } else {
                    0
                }
                .max(ox_lo);
                for (oy, out) in (r0..r1).zip(row.chunks_mut(wo)) {
                    let iy = (oy * s + dy) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    if ox_hi == ox_lo {
                        continue;
                    }
                    let x0 = ox_lo * s + dx - p;
                    if s == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&src[x0..x0 + (ox_hi - ox_lo)]);
                    } else {
                        for (o, i) in out[ox_lo..ox_hi].iter_mut().zip((x0..).step_by(s)) {
                            *o = src[i];
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// Each row of `s` (rows of `n`) ← e^{row − max(row)}, and `inv[r]` ← 1 / that row's sum
    /// (so softmax(row) = row · inv[r]), accumulated in f32 over 8 lanes.
    fn exp_rows(s: &mut [f32], n: usize, inv: &mut [f32]) {
        for (row, inv) in s.chunks_mut(n).zip(inv.iter_mut()) {
            // `>` rather than f32::max, whose NaN rule keeps the loop scalar; NaNs are skipped
            // either way.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for l in 0..8 {
                    if c[l] > lanes[l] {
                        lanes[l] = c[l];
                    }
                }
            }
            let max = (chunks.remainder().iter().chain(&lanes))
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut lanes = [0f32; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for c in &mut chunks {
                for l in 0..8 {
                    c[l] = exp::<FMA>(c[l] - max);
                    lanes[l] += c[l];
                }
            }
            let mut sum: f32 = lanes.iter().sum();
            for v in chunks.into_remainder() {
                *v = exp::<FMA>(*v - max);
                sum += *v;
            }
            *inv = 1.0 / sum;
        }
    }
}

/// Score elements one query block may hold (2 MiB of f32).
const SCORE_BLOCK: usize = 512 << 10;

/// Full attention softmax(q·kᵀ·scale)·v with `heads` heads over token-major tensors: `q`
/// [B, Nq, heads·d], `k`/`v` [B, Nk, heads·d] → [B, Nq, heads·d] (the heads are addressed by
/// stride, so no transposed copies are made). Work is cut into (batch, head, query block)
/// pieces; each computes its scores with one gemm, the exponentials of each row over all
/// keys, its output rows with a second gemm, and scales each output row by its softmax
/// normaliser. With `want_probs` the probabilities are returned too, as
/// [B·heads, Nq, Nk] (copied out block by block, so the output is the same either way).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    want_probs: bool,
) -> Option<Result<(Tensor, Option<Tensor>)>> {
    let (b, nq, hd) = q.dims3().ok()?;
    let (bk, nk, hdk) = k.dims3().ok()?;
    if bk != b || hdk != hd || v.dims() != k.dims() || heads == 0 || hd % heads != 0 || nk == 0 {
        return None;
    }
    let d = hd / heads;
    let qb = (SCORE_BLOCK / nk).clamp(16, nq.max(16)).min(nq.max(1));
    let blocks = nq.div_ceil(qb);
    let pieces = b * heads * blocks;
    with_f32(q, |qs| {
        with_f32(k, |ks| {
            with_f32(v, |vs| {
                let mut out = vec![0f32; b * nq * hd];
                let dst = SendPtr(out.as_mut_ptr());
                let mut probs = if want_probs {
                    vec![0f32; b * heads * nq * nk]
                } else {
                    Vec::new()
                };
                let probs_dst = SendPtr(probs.as_mut_ptr());
                (0..pieces).into_par_iter().for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(scores, inv): &mut (Vec<f32>, Vec<f32>), piece| {
                        let (bh, blk) = (piece / blocks, piece % blocks);
                        let (bi, hh) = (bh / heads, bh % heads);
                        let q0 = blk * qb;
                        let m = qb.min(nq - q0);
                        scores.resize(m * nk, 0.0);
                        inv.resize(m, 0.0);
                        let q_ptr = qs[bi * nq * hd + q0 * hd + hh * d..].as_ptr();
                        let k_ptr = ks[bi * nk * hd + hh * d..].as_ptr();
                        let v_ptr = vs[bi * nk * hd + hh * d..].as_ptr();
                        // SAFETY: the pointers address rows of q, k, v inside their slices with
                        // the strides given; this piece writes output rows [q0, q0+m) of
                        // (bi, hh), which no other piece writes; `out` outlives the loop.
                        unsafe {
                            gemm::gemm(
                                m,
                                nk,
                                d,
                                scores.as_mut_ptr(),
                                1,
                                nk as isize,
                                false,
                                q_ptr,
                                1,
                                hd as isize,
                                k_ptr,
                                hd as isize,
                                1,
                                0.0,
                                scale as f32,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                            exp_rows(scores, nk, inv);
                            if want_probs {
                                // Rows [q0, q0+m) of (bi, hh): this piece's alone.
                                let p = std::slice::from_raw_parts_mut(
                                    probs_dst.get().add((bh * nq + q0) * nk),
                                    m * nk,
                                );
                                for ((p, e), &inv) in
                                    p.chunks_mut(nk).zip(scores.chunks(nk)).zip(inv.iter())
                                {
                                    for (p, &e) in p.iter_mut().zip(e) {
                                        *p = e * inv;
                                    }
                                }
                            }
                            gemm::gemm(
                                m,
                                d,
                                nk,
                                dst.get().add(bi * nq * hd + q0 * hd + hh * d),
                                1,
                                hd as isize,
                                false,
                                scores.as_ptr(),
                                1,
                                nk as isize,
                                v_ptr,
                                1,
                                hd as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                            // The softmax's normalisation, applied to the m × d output rows
                            // rather than the m × nk probabilities.
                            let o = dst.get().add(bi * nq * hd + q0 * hd + hh * d);
                            for (r, &inv) in inv.iter().enumerate() {
                                for v in std::slice::from_raw_parts_mut(o.add(r * hd), d) {
                                    *v *= inv;
                                }
                            }
                        }
                    },
                );
                let probs = want_probs
                    .then(|| tensor(probs, &[b * heads, nq, nk]))
                    .transpose()?;
                Ok((tensor(out, &[b, nq, hd])?, probs))
            })
        })
    })
    .flatten()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Module};

    fn rand(shape: &[usize], seed: u64, amp: f32) -> Tensor {
        let mut s = seed | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n).sqrt()
    }

    #[test]
    fn exp_is_accurate_over_its_range_and_keeps_nan() {
        let xs: Vec<f32> = (-8700..=8800).map(|i| i as f32 / 100.0).collect();
        let got = exp_f32(&xs);
        for (x, e) in xs.iter().zip(&got) {
            let want = (*x as f64).exp();
            let rel = ((*e as f64 - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) = {e}, want {want} (rel {rel:e})");
        }
        assert!(exp_f32(&[f32::NAN])[0].is_nan());
        assert_eq!(exp_f32(&[-1000.0])[0], (-87f32).exp());
        let big = exp_f32(&[1000.0])[0];
        assert!(big.is_finite() && big > 1e38);
    }

    #[test]
    fn gelu_polynomials_match_the_exact_functions() {
        let erfc = candle_core::cpu::erf::erfc_f64;
        // Both code paths: with FMA (as the AVX2 kernels run) and without (the portable ones).
        let variants: [(fn(f32) -> f32, fn(f32) -> f32); 2] = [
            (gelu_erf::<true>, gelu_tanh::<true>),
            (gelu_erf::<false>, gelu_tanh::<false>),
        ];
        for (gelu_e, gelu_t) in variants {
            for i in -1200..=1200 {
                let x = i as f32 / 100.0;
                let xd = x as f64;
                let want = 0.5 * xd * erfc(-xd / std::f64::consts::SQRT_2);
                let e = gelu_e(x) as f64;
                // In the negative tail the relative error grows with x² (f32 rounding of the
                // exponent, −x²/2 or ≈ −1.6x); there the values are below 1e-5 and matter little.
                let tol = 5e-7 * (xd * xd).max(1.0);
                if want.abs() > 1e-30 {
                    let rel = (e - want).abs() / want.abs();
                    assert!(rel <= tol, "gelu_erf({x}) = {e}, want {want} (rel {rel:e})");
                }
                let y = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
                let want_t = xd / (1.0 + (-2.0 * y).exp()); // = 0.5·x·(1 + tanh y), stably
                let t = gelu_t(x) as f64;
                let rel = (t - want_t).abs() / want_t.abs();
                assert!(
                    want_t.abs() < 1e-30 || rel <= tol,
                    "gelu_tanh({x}) = {t}, want {want_t} (rel {rel:e})"
                );
            }
        }
    }

    #[test]
    fn group_norm_matches_candle_with_and_without_silu() {
        for (dims, groups) in [
            (vec![2, 64, 9, 7], 32),
            (vec![1, 6, 5], 3),
            (vec![3, 32, 1, 1], 32),
        ] {
            let c = dims[1];
            let x = (rand(&dims, 1, 3.0) + 0.7).unwrap();
            let w = rand(&[c], 2, 1.0);
            let b = rand(&[c], 3, 0.5);
            let reference = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)
                .unwrap()
                .forward(&x)
                .unwrap();
            let got = group_norm(&x, &w, &b, groups, 1e-5, false)
                .unwrap()
                .unwrap();
            assert!(rel_l2(&got, &reference) < 1e-6, "{dims:?}");
            let got = group_norm(&x, &w, &b, groups, 1e-5, true).unwrap().unwrap();
            assert!(
                rel_l2(&got, &reference.silu().unwrap()) < 1e-6,
                "{dims:?} silu"
            );
        }
        // Not applicable: f16, non-contiguous.
        let x = rand(&[1, 4, 3, 3], 1, 1.0);
        let (w, b) = (rand(&[4], 2, 1.0), rand(&[4], 3, 1.0));
        assert!(group_norm(&x.to_dtype(DType::F16).unwrap(), &w, &b, 2, 1e-5, false).is_none());
        assert!(group_norm(&x.transpose(2, 3).unwrap(), &w, &b, 2, 1e-5, false).is_none());
    }

    #[test]
    fn conv2d_matches_candle_for_every_shape_the_unet_uses() {
        // (batch, cin, h, w, cout, kernel, stride, padding)
        for (b, cin, h, w, cout, kk, s, p) in [
            (2, 4, 9, 7, 8, 3, 1, 1),
            (2, 8, 10, 10, 8, 3, 2, 1),
            (1, 8, 9, 11, 4, 3, 2, 1),
            (1, 8, 9, 11, 4, 3, 2, 0),
            (2, 16, 6, 5, 12, 1, 1, 0),
            (1, 3, 4, 4, 5, 3, 1, 0),
            (1, 2, 1, 1, 3, 3, 1, 1),
            (2, 300, 16, 16, 7, 3, 1, 1), // several tiles per image
        ] {
            let x = rand(&[b, cin, h, w], 4, 1.0);
            let wt = rand(&[cout, cin, kk, kk], 5, 0.3);
            let bias = rand(&[cout], 6, 0.2);
            let cfg = candle_nn::Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            for with_bias in [true, false] {
                let bias_t = with_bias.then(|| bias.clone());
                let reference = candle_nn::Conv2d::new(wt.clone(), bias_t.clone(), cfg)
                    .forward(&x)
                    .unwrap();
                let got = conv2d(&x, &wt, bias_t.as_ref(), s, p).unwrap().unwrap();
                let err = rel_l2(&got, &reference);
                assert!(
                    err < 1e-6,
                    "{b} {cin} {h}x{w} → {cout} k{kk} s{s} p{p}: {err:e}"
                );
            }
        }
    }

    #[test]
    fn attention_matches_the_composed_ops() {
        for (b, nq, nk, heads, d) in [(2, 50, 37, 3, 8), (1, 300, 300, 2, 16), (2, 7, 77, 4, 5)] {
            let q = rand(&[b, nq, heads * d], 7, 1.5);
            let k = rand(&[b, nk, heads * d], 8, 1.5);
            let v = rand(&[b, nk, heads * d], 9, 1.0);
            let scale = 1.0 / (d as f64).sqrt();
            let split = |t: &Tensor, n: usize| {
                t.reshape((b, n, heads, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (qh, kh, vh) = (split(&q, nq), split(&k, nk), split(&v, nk));
            let probs = candle_nn::ops::softmax_last_dim(
                &(qh.matmul(&kh.t().unwrap()).unwrap() * scale).unwrap(),
            )
            .unwrap();
            let reference = probs
                .matmul(&vh)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, nq, heads * d))
                .unwrap();
            let (got, none) = attention(&q, &k, &v, heads, scale, false).unwrap().unwrap();
            assert!(none.is_none());
            let err = rel_l2(&got, &reference);
            assert!(err < 1e-6, "{b} {nq}x{nk} h{heads} d{d}: {err:e}");
            let (again, p) = attention(&q, &k, &v, heads, scale, true).unwrap().unwrap();
            assert_eq!(
                again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "asking for the probabilities changed the output"
            );
            let p = p.unwrap().reshape((b, heads, nq, nk)).unwrap();
            assert!(rel_l2(&p, &probs) < 1e-6);
        }
    }

    #[test]
    fn geglu_matches_candle() {
        let h = rand(&[2, 70, 2 * 24], 10, 4.0);
        let parts = h.chunk(2, D::Minus1).unwrap();
        for erf in [true, false] {
            let gate = if erf {
                parts[1].gelu_erf().unwrap()
            } else {
                parts[1].gelu().unwrap()
            };
            let reference = (&parts[0] * gate).unwrap();
            let got = geglu(&h, erf).unwrap().unwrap();
            assert!(rel_l2(&got, &reference) < 1e-6, "erf={erf}");
        }
    }
}
