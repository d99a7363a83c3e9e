//! sdtrace's PyTorch noise emulations against real PyTorch output (`tests/data/README.md`):
//! `torch-cpu` and CUDA `rand` bit for bit on every element (by hash of the whole tensor, both
//! draws of a seed in order), CUDA `randn` within 4e-6 on every kept element, and the noise
//! diagnosis of the H100's real noise against the emulator on a card with fewer SMs.

use safetensors::SafeTensors;
use sdtrace::analysis::{NoiseClass, diagnose};
use sdtrace::sampling::rng::{TorchCpuNoise, TorchCudaNoise};
use std::collections::BTreeMap;

struct Golden {
    shape: Vec<usize>,
    xxh3: String,
    ranges: Vec<(usize, usize)>,
    kept: Vec<f32>,
}

fn golden() -> (BTreeMap<String, Golden>, BTreeMap<String, String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/noise-golden.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let md: BTreeMap<String, String> = meta.metadata().clone().unwrap().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let info: serde_json::Value = serde_json::from_str(&md[&name]).unwrap();
        out.insert(
            name,
            Golden {
                shape: serde_json::from_value(info["shape"].clone()).unwrap(),
                xxh3: info["xxh3"].as_str().unwrap().to_string(),
                ranges: serde_json::from_value(info["ranges"].clone()).unwrap(),
                kept: t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            },
        );
    }
    (out, md)
}

fn hash(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// The kept elements of `g`, from the whole regenerated tensor.
fn kept(g: &Golden, whole: &[f32]) -> Vec<f32> {
    g.ranges
        .iter()
        .flat_map(|&(s, l)| whole[s..s + l].iter().copied())
        .collect()
}

fn seed_of(key: &str) -> u64 {
    key.split('.').nth(1).unwrap()[1..].parse().unwrap()
}

fn card(md: &BTreeMap<String, String>) -> (u32, u32) {
    (
        md["cuda.sms"].parse().unwrap(),
        md["cuda.max_threads_per_sm"].parse().unwrap(),
    )
}

#[test]
fn torch_cpu_is_bit_exact_on_every_element() {
    let (g, md) = golden();
    assert_eq!(md["cpu.cpu_capability"], "AVX512");
    let mut checked = 0;
    for (name, first) in g
        .iter()
        .filter(|(k, _)| k.starts_with("cpu/") && k.ends_with(".first"))
    {
        let second = &g[&name.replace(".first", ".second")];
        let n: usize = first.shape.iter().product();
        let mut rng = TorchCpuNoise::new(seed_of(name));
        for (which, want) in [("first", first), ("second", second)] {
            let got = rng.draw(n);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&kept(want, &got)), bits(&want.kept), "{name} {which}");
            assert_eq!(hash(&got), want.xxh3, "{name} {which}: the whole tensor");
            checked += n;
        }
    }
    // 9 sizes (scalar n7, tail-redraw n17/n33/odd, block 512..2400) × 2 draws.
    assert_eq!(
        checked,
        2 * (7 + 17 + 33 + 884 + 16_384 + 43_264 + 131_072 + 270_400 + 360_000)
    );
}

#[test]
fn torch_cuda_rand_is_bit_exact_and_randn_within_4e_6() {
    let (g, md) = golden();
    let (sms, threads) = card(&md);
    assert_eq!((sms, threads), (132, 2048));
    let mut rand = 0;
    let mut worst = 0f32;
    for (name, want) in g.iter().filter(|(k, _)| k.starts_with("cuda/")) {
        let n: usize = want.shape.iter().product();
        let seed = seed_of(name);
        if name.starts_with("cuda/rand.") {
            let got = TorchCudaNoise::new(seed, sms, threads, None).rand_n(n);
            assert_eq!(hash(&got), want.xxh3, "{name}: the whole tensor");
            rand += 1;
        } else if name.ends_with(".first") || name.ends_with(".second") {
            let mut rng = TorchCudaNoise::new(seed, sms, threads, None);
            let first = rng.randn_n(n);
            let got = if name.ends_with(".second") {
                rng.randn_n(n)
            } else {
                first
            };
            for (i, (a, b)) in kept(want, &got).iter().zip(&want.kept).enumerate() {
                let d = (a - b).abs();
                assert!(d <= 4e-6, "{name}: kept element {i}: {a} vs {b}");
                worst = worst.max(d);
            }
        }
    }
    assert_eq!(rand, 6);
    assert!(worst > 0.0 && worst < 4e-6, "{worst}");
}

#[test]
fn the_h100_noise_against_a_gtx1070_is_a_gpu_wave() {
    let (g, md) = golden();
    let (sms, threads) = card(&md);
    let h100 = &g["cuda/randn.s1744694513.832.first"];
    assert_eq!(h100.kept.len(), 43_264, "kept whole");
    let shape = [1u64, 4, 104, 104];
    let n = 43_264;
    let seed = 1_744_694_513;
    // The emulator of the same card: the same draws up to the GPU's sin/cos.
    let same = TorchCudaNoise::new(seed, sms, threads, None).randn_n(n);
    let d = diagnose(&shape, &h100.kept, &shape, &same);
    assert_eq!(d.class, NoiseClass::Close, "{}", d.summary);
    // A GTX 1070 (15 SMs × 2048): one wave of 30 720 elements, then other draws.
    let gtx1070 = TorchCudaNoise::new(seed, 15, 2048, Some("gtx1070")).randn_n(n);
    let d = diagnose(&shape, &h100.kept, &shape, &gtx1070);
    assert_eq!(d.class, NoiseClass::GpuWave, "{}", d.summary);
    assert_eq!(d.agree_prefix, Some(30_720));
    assert!(
        d.summary.contains("GPU RNG wave of 30720 elements")
            && d.summary.contains("GeForce GTX 1070")
            && d.summary.contains("above 696×696")
            && d.summary
                .contains("The first 30720 elements agree within 1e-5"),
        "{}",
        d.summary
    );
    // PyTorch's CPU noise shares nothing with it.
    let cpu = TorchCpuNoise::new(seed).draw(n);
    let d = diagnose(&shape, &h100.kept, &shape, &cpu);
    assert_eq!(d.class, NoiseClass::Unrelated, "{}", d.summary);
}
