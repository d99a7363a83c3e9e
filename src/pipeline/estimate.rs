//! What a recording will capture and how large its trace will be, computed before the run from
//! the list of probe points the pipeline will pass (key, step, shape, dtype) and the capture
//! policy. No tensor library types: the pipeline builds the list, this module sizes it.
//!
//! Sizes per record: a `stats` record is a frame of about [`STATS_RECORD_BYTES`] plus its key
//! and shape; `sketch` adds k f64 sketch values and the thumbnail (≤ 32×32 f32 per batch item
//! for rank-4 tensors); `full` adds the payload frame (raw bytes; compressed payloads are
//! counted at their raw size, so the estimate is an upper bound for them). Index rows add
//! [`INDEX_ROW_BYTES`] each. Tests compare the estimate with real traces.

use crate::dtype::DType;
use crate::probe::{Action, Policy};
use crate::stats::thumbnail::MAX_SIDE;
use crate::trace::Fidelity;
use std::collections::BTreeMap;

/// Frame bytes of a `stats` record besides its key and shape (summary, histogram, header).
pub const STATS_RECORD_BYTES: u64 = 360;
/// Bytes of one index row besides its shape.
pub const INDEX_ROW_BYTES: u64 = 48;
/// Frame header and padding of a payload frame.
const FRAME_OVERHEAD: u64 = 24;

/// One record the run will offer the probe.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRecord {
    pub key: String,
    pub step: Option<u32>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// The estimate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Records that will be written.
    pub records: u64,
    /// Probe points the policy turns off.
    pub skipped: u64,
    /// Estimated trace size in bytes.
    pub bytes: u64,
    /// Per fidelity: (records, bytes).
    pub by_fidelity: BTreeMap<Fidelity, (u64, u64)>,
    /// Per top-level key group (`unet`, `sampler`, ...): (records, bytes).
    pub by_group: BTreeMap<String, (u64, u64)>,
}

/// Bytes one record of `r` takes at `fidelity`.
pub fn record_bytes(r: &PlannedRecord, fidelity: Fidelity, sketch_k: usize) -> u64 {
    let numel: u64 = r.shape.iter().map(|&d| d as u64).product();
    let mut b =
        STATS_RECORD_BYTES + INDEX_ROW_BYTES + r.key.len() as u64 + 8 * r.shape.len() as u64;
    if fidelity >= Fidelity::Sketch {
        b += 8 * sketch_k as u64 + 8;
        if let &[n, _, h, w] = r.shape.as_slice() {
            let cells = |s: usize| s.div_ceil(s.div_ceil(MAX_SIDE).max(1));
            b += 4 * (n * cells(h) * cells(w)) as u64 + 24;
        }
    }
    if fidelity == Fidelity::Full {
        b += numel * r.dtype.size() as u64 + FRAME_OVERHEAD + 16;
    }
    b
}

/// Size the capture of `records` under `policy`.
pub fn estimate(records: &[PlannedRecord], policy: &Policy) -> Estimate {
    let mut e = Estimate {
        bytes: 16 + 4096 + 24,
        ..Estimate::default()
    };
    for r in records {
        let Action::Capture(fidelity, _) = policy.action(&r.key, r.step) else {
            e.skipped += 1;
            continue;
        };
        let b = record_bytes(r, fidelity, policy.sketch_k);
        e.records += 1;
        e.bytes += b;
        let f = e.by_fidelity.entry(fidelity).or_default();
        f.0 += 1;
        f.1 += b;
        let group = r.key.split('.').next().unwrap_or_default().to_string();
        let g = e.by_group.entry(group).or_default();
        g.0 += 1;
        g.1 += b;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, step: Option<u32>, shape: &[usize]) -> PlannedRecord {
        PlannedRecord {
            key: key.into(),
            step,
            shape: shape.to_vec(),
            dtype: DType::F32,
        }
    }

    #[test]
    fn policy_decides_fidelity_and_size() {
        let recs = [
            rec("noise.initial", None, &[1, 4, 64, 64]),
            rec("unet.conv_in", Some(0), &[2, 320, 64, 64]),
            rec(
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.probs",
                Some(0),
                &[16, 4096, 4096],
            ),
        ];
        let e = estimate(&recs, &Policy::preset("default").unwrap());
        assert_eq!((e.records, e.skipped), (2, 1));
        assert!(e.by_fidelity[&Fidelity::Full].1 > 4 * 4 * 64 * 64);
        assert!(e.by_fidelity[&Fidelity::Sketch].1 < 16 * 1024);
        let full = estimate(&recs[..2], &Policy::preset("full").unwrap());
        assert!(full.bytes > 4 * 2 * 320 * 64 * 64);
        assert_eq!(full.by_group["unet"].0, 1);
    }
}
