//! Our UNet forward on the CPU against diffusers/PyTorch (issue #11): the Rust side of
//! `benches/pytorch/compare.sh`, which generates the model and inputs with diffusers and runs
//! both sides in one go. Run that script, not this target, for the comparison; this target alone
//! needs `SDTRACE_TORCH_ROOT` (the script's work folder) and prints one JSON line.
//!
//! The UNet is loaded from the diffusers folder the script wrote (our loader, f32), configured
//! as diffusers runs it (exact-erf GELU, full attention), probe disabled; inputs and, when
//! present, PyTorch's output come from the same folder, so the relative L2 printed is against
//! diffusers with the same weights and inputs. Environment: `SDTRACE_BENCH_RES` (512),
//! `SDTRACE_BENCH_WARMUP` (1), `SDTRACE_BENCH_ITERS` (2).

use candle_core::{DType, Device, Tensor};
use sdtrace::model::attention::{AttentionImpl, Numerics};
use sdtrace::model::config::UNetConfig;
use sdtrace::model::unet::{Added, UNet};
use sdtrace::probe::Probe;
use std::path::PathBuf;
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    sdtrace::host::keep_freed_memory();
    let Some(root) = std::env::var_os("SDTRACE_TORCH_ROOT").map(PathBuf::from) else {
        eprintln!("torch_compare: run benches/pytorch/compare.sh (it sets SDTRACE_TORCH_ROOT)");
        return;
    };
    let res = env_num("SDTRACE_BENCH_RES", 512);
    let (warmup, iters) = (
        env_num("SDTRACE_BENCH_WARMUP", 1),
        env_num("SDTRACE_BENCH_ITERS", 2),
    );
    let unet_dir = root.join("unet");
    let cfg = UNetConfig::from_diffusers_file(&unet_dir.join("config.json")).unwrap();
    let t = Instant::now();
    let unet = UNet::load(
        &unet_dir.join("diffusion_pytorch_model.safetensors"),
        &cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let inputs = candle_core::safetensors::load(
        root.join(format!("inputs_{res}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let timestep = inputs["timestep"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0] as f64;
    // SDXL: the pooled text embedding and size/crop ids.
    let added = match (inputs.get("text_embeds"), inputs.get("time_ids")) {
        (Some(p), Some(ids)) => Some(Added {
            text_embeds: p.clone(),
            time_ids: ids.clone(),
        }),
        _ => None,
    };
    let probe = Probe::disabled();
    let mut times = Vec::new();
    let mut out = None;
    for i in 0..warmup + iters {
        let t = Instant::now();
        let o = unet
            .forward_added(
                &inputs["sample"],
                timestep,
                &inputs["encoder_hidden_states"],
                added.as_ref(),
                &probe,
            )
            .unwrap();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        out = Some(o);
    }
    let out = out.expect("at least one forward");
    let reference = root.join(format!("torch_out_{res}.safetensors"));
    let (rel_l2, max_abs) = match candle_core::safetensors::load(&reference, &Device::Cpu) {
        Ok(t) => {
            let r: &Tensor = &t["out"];
            let a: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            let d2: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            let n2: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            let m = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            (Some((d2 / n2).sqrt()), Some(m))
        }
        Err(_) => (None, None),
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "sdtrace",
            "res": res,
            "times": times,
            "load_s": load_s,
            "peak_rss": sdtrace::host::proc_status_bytes("VmHWM"),
            "threads": rayon::current_num_threads(),
            "rel_l2_vs_torch": rel_l2,
            "max_abs_vs_torch": max_abs,
        })
    );
}
