//! Whether two generators, seeded alike, draw the same initial noise, and up to how many
//! elements: the prediction `sdtrace explain` and `sdtrace noise --compare` state from the
//! generators' definitions alone (no drawing).
//!
//! Facts used (DESIGN §5, research/domain-facts.md §0, §2): PyTorch's CUDA noise is laid out by
//! a grid-stride loop whose grid is capped at SMs × threads per SM, so two cards draw the same
//! elements up to the smaller card's wave and differ from there on, and cards with equal waves
//! draw the same noise at every size; the webui's "NV" generator is the uncapped layout (the
//! same values as any card below its wave, with numpy's math instead of the GPU's); the CPU
//! (mt19937) and sdtrace's own generator share nothing with the others. Invariant: pure logic
//! over [`RngSpec`]s, no tensor library.

use super::RngSpec;

/// What two generators seeded alike have in common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// The same values at every size; `exact`: bit for bit (else to rounding).
    Always { exact: bool },
    /// The same values for draws of at most `elements` values; in larger draws the elements
    /// from flat index `elements` on differ.
    UpTo { elements: u64, exact: bool },
    /// Different generators: the values differ at every size.
    Never,
    /// Not known from the definitions (noise read from files, a device's own generator).
    Unknown,
}

impl Agreement {
    /// Whether a draw of `elements` values agrees (`None` when unknown).
    pub fn at(self, elements: u64) -> Option<bool> {
        match self {
            Agreement::Always { .. } => Some(true),
            Agreement::UpTo { elements: k, .. } => Some(elements <= k),
            Agreement::Never => Some(false),
            Agreement::Unknown => None,
        }
    }
}

/// What generators `a` and `b` have in common (symmetric).
pub fn agreement(a: &RngSpec, b: &RngSpec) -> Agreement {
    use RngSpec::*;
    match (a, b) {
        (File(x), File(y)) if x == y => Agreement::Always { exact: true },
        (File(_), _) | (_, File(_)) | (Device, _) | (_, Device) => Agreement::Unknown,
        (Sdtrace, Sdtrace) | (TorchCpu, TorchCpu) | (A1111Nv, A1111Nv) => {
            Agreement::Always { exact: true }
        }
        (TorchCuda { .. }, TorchCuda { .. }) => {
            let (wa, wb) = (a.wave().unwrap_or(0), b.wave().unwrap_or(0));
            if wa == wb {
                Agreement::Always { exact: true }
            } else {
                Agreement::UpTo {
                    elements: wa.min(wb),
                    exact: true,
                }
            }
        }
        (TorchCuda { .. }, A1111Nv) | (A1111Nv, TorchCuda { .. }) => Agreement::UpTo {
            elements: a.wave().or(b.wave()).unwrap_or(0),
            exact: false,
        },
        _ => Agreement::Never,
    }
}

/// Noise elements of one draw for a `width`×`height` image and `batch` images drawn at once:
/// batch × 4 × (height/8) × (width/8).
pub fn draw_elements((width, height): (u32, u32), batch: u32) -> u64 {
    batch.max(1) as u64 * 4 * (height as u64 / 8) * (width as u64 / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(n: &str) -> RngSpec {
        RngSpec::parse_card("--card", n).unwrap()
    }

    #[test]
    fn generators_agree_as_their_definitions_say() {
        let (g1070, t4, r2060) = (card("gtx1070"), card("t4"), card("rtx2060"));
        assert_eq!(
            agreement(&g1070, &t4),
            Agreement::UpTo {
                elements: 30_720,
                exact: true
            }
        );
        assert_eq!(agreement(&t4, &g1070), agreement(&g1070, &t4));
        // 15 × 2048 = 30 × 1024: one grid, one layout.
        assert_eq!(agreement(&g1070, &r2060), Agreement::Always { exact: true });
        assert_eq!(
            agreement(&RngSpec::A1111Nv, &t4),
            Agreement::UpTo {
                elements: 40_960,
                exact: false
            }
        );
        for other in [&g1070, &RngSpec::A1111Nv, &RngSpec::Sdtrace] {
            assert_eq!(agreement(&RngSpec::TorchCpu, other), Agreement::Never);
        }
        assert_eq!(
            agreement(&RngSpec::TorchCpu, &RngSpec::TorchCpu),
            Agreement::Always { exact: true }
        );
        assert_eq!(
            agreement(&RngSpec::Device, &RngSpec::TorchCpu),
            Agreement::Unknown
        );
        let gtx = agreement(&g1070, &t4);
        assert_eq!(gtx.at(draw_elements((696, 696), 1)), Some(true));
        assert_eq!(gtx.at(draw_elements((704, 704), 1)), Some(false));
        assert_eq!(gtx.at(draw_elements((512, 512), 2)), Some(false));
        assert_eq!(Agreement::Unknown.at(1), None);
    }
}
