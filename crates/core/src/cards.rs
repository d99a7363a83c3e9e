//! Named NVIDIA cards for `--rng torch-cuda:NAME`: each card's SM count and maximum resident
//! threads per SM, the two numbers that fix PyTorch's CUDA noise layout.
//!
//! SM counts are NVIDIA's specifications (CUDA cores ÷ FP32 cores per SM: 128 for Pascal GP10x,
//! Ampere GA10x, Ada, Hopper and Blackwell; 64 for Volta, Turing and GA100). Threads per SM
//! come from the CUDA C++ Programming Guide's compute capability table: 2048 for 6.x, 7.0, 8.0
//! and 9.0; 1024 for 7.5; 1536 for 8.6, 8.9 and 12.0. Invariant: the table is pure data (no
//! tensor library), so the analysis can name the cards that match a measured wave size; names
//! are unique after [`normalise`].

/// One card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuPreset {
    /// The name `--rng torch-cuda:NAME` takes (compared after [`normalise`]).
    pub name: &'static str,
    /// The card as NVIDIA sells it.
    pub card: &'static str,
    pub sms: u32,
    pub threads_per_sm: u32,
    /// CUDA compute capability.
    pub cc: &'static str,
}

impl GpuPreset {
    /// Elements PyTorch draws per grid-stride wave on this card: SMs × threads per SM.
    pub fn wave(&self) -> u64 {
        self.sms as u64 * (self.threads_per_sm as u64 / 256 * 256)
    }
}

const fn p(
    name: &'static str,
    card: &'static str,
    sms: u32,
    cc: &'static str,
    threads_per_sm: u32,
) -> GpuPreset {
    GpuPreset {
        name,
        card,
        sms,
        threads_per_sm,
        cc,
    }
}

/// The named cards, oldest architecture first.
pub const PRESETS: &[GpuPreset] = &[
    p("p2000", "Quadro P2000", 8, "6.1", 2048),
    p("gtx1050ti", "GeForce GTX 1050 Ti", 6, "6.1", 2048),
    p("gtx1060-3gb", "GeForce GTX 1060 3GB", 9, "6.1", 2048),
    p("gtx1060", "GeForce GTX 1060 6GB", 10, "6.1", 2048),
    p("gtx1070", "GeForce GTX 1070", 15, "6.1", 2048),
    p("gtx1070ti", "GeForce GTX 1070 Ti", 19, "6.1", 2048),
    p("gtx1080", "GeForce GTX 1080", 20, "6.1", 2048),
    p("gtx1080ti", "GeForce GTX 1080 Ti", 28, "6.1", 2048),
    p("v100", "Tesla V100", 80, "7.0", 2048),
    p("gtx1650", "GeForce GTX 1650", 14, "7.5", 1024),
    p("gtx1660", "GeForce GTX 1660", 22, "7.5", 1024),
    p("gtx1660ti", "GeForce GTX 1660 Ti", 24, "7.5", 1024),
    p("rtx2060", "GeForce RTX 2060", 30, "7.5", 1024),
    p("rtx2070", "GeForce RTX 2070", 36, "7.5", 1024),
    p("rtx2080", "GeForce RTX 2080", 46, "7.5", 1024),
    p("rtx2080ti", "GeForce RTX 2080 Ti", 68, "7.5", 1024),
    p("t4", "Tesla T4", 40, "7.5", 1024),
    p("a100", "A100", 108, "8.0", 2048),
    p("rtx3060", "GeForce RTX 3060 12GB", 28, "8.6", 1536),
    p("rtx3060ti", "GeForce RTX 3060 Ti", 38, "8.6", 1536),
    p("rtx3070", "GeForce RTX 3070", 46, "8.6", 1536),
    p("rtx3080", "GeForce RTX 3080 10GB", 68, "8.6", 1536),
    p("rtx3090", "GeForce RTX 3090", 82, "8.6", 1536),
    p("a4000", "RTX A4000", 48, "8.6", 1536),
    p("a10", "A10", 72, "8.6", 1536),
    p("rtx4060", "GeForce RTX 4060", 24, "8.9", 1536),
    p("rtx4070", "GeForce RTX 4070", 46, "8.9", 1536),
    p("rtx4080", "GeForce RTX 4080", 76, "8.9", 1536),
    p("rtx4090", "GeForce RTX 4090", 128, "8.9", 1536),
    p("l4", "L4", 58, "8.9", 1536),
    p("h100", "H100 SXM5", 132, "9.0", 2048),
    p("h100-pcie", "H100 PCIe", 114, "9.0", 2048),
    p("rtx5090", "GeForce RTX 5090", 170, "12.0", 1536),
];

/// Lower case without `-`, `_` and spaces: `GTX-1070` and `gtx1070` are one name.
pub fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The preset called `name` (any case, with or without `-`, `_`, spaces).
pub fn find(name: &str) -> Option<&'static GpuPreset> {
    let n = normalise(name);
    PRESETS.iter().find(|p| normalise(p.name) == n)
}

/// Every preset name, comma-separated (for error messages and help).
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The presets whose wave is exactly `elements` (the tests' check of the waves).
#[cfg(test)]
fn with_wave(elements: u64) -> Vec<&'static GpuPreset> {
    PRESETS.iter().filter(|p| p.wave() == elements).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cards_of_the_original_report_have_their_waves() {
        // domain facts §0: P2000 16 384, GTX 1060 20 480, GTX 1070 30 720, T4 40 960 elements.
        for (name, wave) in [
            ("p2000", 16_384),
            ("gtx1060", 20_480),
            ("GTX-1070", 30_720),
            ("T4", 40_960),
            ("h100", 270_336),
        ] {
            assert_eq!(find(name).unwrap().wave(), wave, "{name}");
        }
        assert!(find("gtx 1080 ti").is_some());
        assert!(find("gtx9999").is_none());
        // The GTX 1070 and RTX 2060 share a wave: 15 × 2048 = 30 × 1024.
        let same: Vec<_> = with_wave(30_720).iter().map(|p| p.name).collect();
        assert_eq!(same, ["gtx1070", "rtx2060"]);
    }

    #[test]
    fn names_are_unique_and_threads_follow_the_compute_capability() {
        for (i, a) in PRESETS.iter().enumerate() {
            for b in &PRESETS[i + 1..] {
                assert_ne!(normalise(a.name), normalise(b.name));
            }
            let want = match a.cc {
                "7.5" => 1024,
                "8.6" | "8.9" | "12.0" => 1536,
                _ => 2048,
            };
            assert_eq!(a.threads_per_sm, want, "{}", a.name);
            assert_eq!(a.threads_per_sm % 256, 0);
        }
        // Every card the issue names has a preset.
        for n in [
            "p2000",
            "gtx1060",
            "gtx1070",
            "gtx1080ti",
            "rtx2060",
            "rtx3060",
            "rtx3080",
            "rtx3090",
            "rtx4090",
            "t4",
            "a4000",
            "a100",
            "h100",
        ] {
            assert!(find(n).is_some(), "{n}");
        }
    }
}
