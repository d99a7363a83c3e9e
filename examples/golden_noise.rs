//! Check sdtrace's PyTorch noise emulations against golden PyTorch dumps, and cut the small
//! test subset kept in `tests/data/` from them.
//!
//! ```sh
//! cargo run --release --example golden_noise -- check DIR            # every element
//! cargo run --release --example golden_noise -- extract DIR OUT.safetensors
//! ```
//! DIR holds `torch-cpu-randn.safetensors` and `torch-cuda-randn.safetensors` (keys
//! `randn.s{SEED}.{SIZE}.first|second`, `rand.s{SEED}.{SIZE}`; the CUDA file's metadata names
//! the card's `sms` and `max_threads_per_sm`). `check` compares every element of every tensor
//! and prints, per key, the number of elements that are not bit-identical and the largest
//! absolute difference; it exits 1 if `torch-cpu` or CUDA `rand` is not bit-exact or CUDA
//! `randn` is off by more than 4e-6 anywhere.

use safetensors::SafeTensors;
use sdtrace::sampling::rng::{TorchCpuNoise, TorchCudaNoise};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn load(path: &Path) -> Result<(Tensors, BTreeMap<String, String>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut out = Tensors::new();
    for (name, t) in st.tensors() {
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name.to_string(), (t.shape().to_vec(), v));
    }
    let md = meta.metadata().clone().unwrap_or_default();
    Ok((out, md.into_iter().collect()))
}

/// (kind, seed, size, draw) of a golden key.
fn parse_key(k: &str) -> Option<(&str, u64, &str, Option<&str>)> {
    let mut it = k.split('.');
    let kind = it.next()?;
    let seed = it.next()?.strip_prefix('s')?.parse().ok()?;
    let size = it.next()?;
    Some((kind, seed, size, it.next()))
}

fn diff(a: &[f32], b: &[f32]) -> (usize, f32, Option<usize>) {
    let mut n = 0;
    let mut worst = 0f32;
    let mut first = None;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.to_bits() != y.to_bits() {
            n += 1;
            first.get_or_insert(i);
            worst = worst.max((x - y).abs());
        }
    }
    (n, worst, first)
}

fn check(dir: &Path) -> Result<bool, String> {
    let mut ok = true;
    let (cpu, _) = load(&dir.join("torch-cpu-randn.safetensors"))?;
    for (k, (shape, want)) in &cpu {
        let Some(("randn", seed, _, Some("first"))) = parse_key(k) else {
            continue;
        };
        let n: usize = shape.iter().product();
        let mut g = TorchCpuNoise::new(seed);
        let first = g.draw(n);
        let second = g.draw(n);
        let k2 = k.replace(".first", ".second");
        for (key, got, want) in [(k.as_str(), &first, want), (&k2, &second, &cpu[&k2].1)] {
            let (bad, worst, at) = diff(got, want);
            ok &= bad == 0;
            println!(
                "cpu  {key:<40} {n:>8} elements: {bad} differ (max {worst:.3e}, first at {at:?})"
            );
        }
    }
    let (cuda, md) = load(&dir.join("torch-cuda-randn.safetensors"))?;
    let sms: u32 = md
        .get("sms")
        .and_then(|s| s.parse().ok())
        .ok_or("no 'sms' metadata")?;
    let threads: u32 = md
        .get("max_threads_per_sm")
        .and_then(|s| s.parse().ok())
        .ok_or("no 'max_threads_per_sm' metadata")?;
    for (k, (shape, want)) in &cuda {
        let n: usize = shape.iter().product();
        match parse_key(k) {
            Some(("rand", seed, _, None)) => {
                let got = TorchCudaNoise::new(seed, sms, threads, None).rand_n(n);
                let (bad, worst, at) = diff(&got, want);
                ok &= bad == 0;
                println!(
                    "cuda {k:<40} {n:>8} elements: {bad} differ (max {worst:.3e}, first at {at:?})"
                );
            }
            Some(("randn", seed, _, Some("first"))) => {
                let mut g = TorchCudaNoise::new(seed, sms, threads, None);
                let first = g.randn_n(n);
                let second = g.randn_n(n);
                let k2 = k.replace(".first", ".second");
                for (key, got, want) in [(k.as_str(), &first, want), (&k2, &second, &cuda[&k2].1)] {
                    let (bad, worst, _) = diff(got, want);
                    ok &= worst <= 4e-6;
                    println!(
                        "cuda {key:<40} {n:>8} elements: {bad} not bit-identical, max |diff| {worst:.3e}"
                    );
                }
            }
            _ => {}
        }
    }
    Ok(ok)
}

/// Ranges kept of a golden tensor of `n` elements (whole when small).
fn kept_ranges(file: &str, key: &str, n: usize, wave: usize) -> Vec<(usize, usize)> {
    if n <= 1024 || (file == "cuda" && key == "randn.s1744694513.832.first") {
        return vec![(0, n)];
    }
    if file == "cuda" && key.starts_with("randn.") {
        let mut r = vec![(0, 256)];
        if n > wave + 128 {
            r.push((wave - 128, 256));
        }
        r.push((n - 256, 256));
        return r;
    }
    vec![(0, 64), (n - 64, 64)]
}

fn extract(dir: &Path, out: &Path) -> Result<bool, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    for (file, name) in [
        ("cpu", "torch-cpu-randn.safetensors"),
        ("cuda", "torch-cuda-randn.safetensors"),
    ] {
        let (all, md) = load(&dir.join(name))?;
        let wave: usize = md
            .get("rng_wave_elements")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if file == "cuda" {
            for k in ["sms", "max_threads_per_sm", "name", "torch", "cuda", "cc"] {
                if let Some(v) = md.get(k) {
                    meta.insert(format!("cuda.{k}"), v.clone());
                }
            }
        } else if let Some(v) = md.get("cpu_capability") {
            meta.insert("cpu.cpu_capability".into(), v.clone());
        }
        for (key, (shape, v)) in &all {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let ranges = kept_ranges(file, key, v.len(), wave);
            let kept: Vec<u8> = ranges
                .iter()
                .flat_map(|&(s, l)| bytes[4 * s..4 * (s + l)].iter().copied())
                .collect();
            let info = serde_json::json!({
                "shape": shape,
                "xxh3": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
                "ranges": ranges,
            });
            meta.insert(format!("{file}/{key}"), info.to_string());
            tensors.push((format!("{file}/{key}"), vec![kept.len() / 4], kept));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, s, b)| {
            Ok((
                k.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| e.to_string())?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let bytes = safetensors::serialize(views, Some(meta.into_iter().collect()))
        .map_err(|e| e.to_string())?;
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {} ({} bytes, {} tensors)",
        out.display(),
        bytes.len(),
        tensors.len()
    );
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["check", dir] => check(Path::new(dir)),
        ["extract", dir, out] => extract(Path::new(dir), Path::new(out)),
        _ => Err("usage: golden_noise check DIR | extract DIR OUT.safetensors".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
