//! The sketch's promise: from two machines' sketches alone, ‖a − b‖ within ±20 % of the truth in
//! at least 95 % of trials at k = 256, for tensors of 10⁵–10⁶ elements and relative differences
//! from 1e-6 to 1, whatever the shape of the difference (dense, sparse, one spatial block).

mod common;

use common::{Rng, encode};
use sdtrace::DType;
use sdtrace::stats::summarize_with_sketch;

#[test]
fn sketch_estimates_difference_norm_within_20_percent() {
    let mut rng = Rng(2024);
    let sizes = [100_000usize, 300_000, 1_000_000];
    let rels = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let (mut trials, mut good, mut worst) = (0, 0, 0.0f64);
    for trial in 0..105 {
        let n = sizes[trial % sizes.len()];
        let rel = rels[trial % rels.len()];
        let kind = trial % 3;
        let a: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let block = rng.below((n / 2) as u64) as usize;
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let d = match kind {
                    0 => rng.normal() * rel,                               // dense
                    1 if rng.below(100) == 0 => rng.normal() * rel * 10.0, // 1 % sparse
                    2 if (block..block + n / 20).contains(&i) => rng.normal() * rel * 4.5, // a region
                    _ => 0.0,
                };
                (x as f64 + d) as f32
            })
            .collect();
        // Truth from the values actually stored (after f32 rounding).
        let truth = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if truth == 0.0 {
            continue;
        }
        let shape = [n as u64];
        let key = format!("unet.trial{trial}");
        let bytes =
            |v: &[f32]| encode(DType::F32, &v.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let (_, sa) = summarize_with_sketch(DType::F32, &bytes(&a), &key, &shape, 256);
        let (_, sb) = summarize_with_sketch(DType::F32, &bytes(&b), &key, &shape, 256);
        let est = sa.diff_norm(&sb).unwrap();
        let err = (est.value - truth).abs() / truth;
        worst = worst.max(err);
        trials += 1;
        good += (err <= 0.2) as usize;
    }
    let rate = good as f64 / trials as f64;
    eprintln!("{good}/{trials} within 20 % (worst {:.1} %)", worst * 100.0);
    assert!(trials >= 100);
    assert!(
        rate >= 0.95,
        "only {good}/{trials} estimates within ±20 % (worst error {:.1} %)",
        worst * 100.0
    );
}
