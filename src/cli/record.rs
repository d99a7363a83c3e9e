//! `sdtrace record`: flags → [`RecordSpec`] by the pure [`resolve`] (every flag checked before
//! the device, the model or the output is touched), the terminal side of a run (plan, progress bar or
//! plain lines, NaN warnings, Ctrl-C), and the PNG with A1111 infotext next to the trace.

use super::values::{DTypeArg, EmphasisArg, PredictionArg, SamplerImplArg, ScheduleArg, SyntaxArg};
use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::exit::ExitStatus;
use sdtrace::image::{InfotextParams, encode_png, infotext, rgb8_from_chw};
use sdtrace::model::attention::AttentionImpl;
use sdtrace::params::{InfotextSettings, SDTRACE_RNG_KEY, resolve_sampler};
use sdtrace::pipeline::gpu::GemmPrecision;
use sdtrace::pipeline::perturb::Perturbation;
use sdtrace::pipeline::{
    DeviceChoice, Monitor, PipelineError, RecordSpec, Recording, RunPlan, human, parse_size,
};
use sdtrace::probe::Policy;
use sdtrace::sampling::{RngSpec, SamplerKind, rng};
use sdtrace::trace::{NonFinite, RunHeader, RunStatus};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const RECORD_HELP: &str = "\
Capture (--capture): light (default: full payloads for noise.*, text.*, sampler.*, image;
sketches for every model probe), full, stats, sketch, off, or rules GLOB[@STEPS]=LEVEL[:CODEC]
separated by commas, added to light or to a preset named first: 'sketch,sampler.*=full',
'unet.up_blocks.*@0-4=full:zstd'. Attention q/k/v and probabilities are recorded only by rules
whose pattern ends in their name (*.to_q, *.to_?, *.attn1.probs); broad rules such as unet.*=full
or *=sketch, and every preset, leave them off.

Generation parameters (--params, --params-file, --from-png): the flags given here win. An infotext
without an RNG field was made with the webui's default source, the GPU, whose noise depends on the
card: add --card NAME|SMS,THREADS (the card that made it) or --rng torch-cpu (if the webui's
source was CPU); RNG: CPU and RNG: NV are read as they are. The PNG written names the generator
for the webui (RNG: CPU, RNG: NV) or, where the webui has no name for it, in an `sdtrace RNG`
field that --from-png reads back.";

/// Flags of `sdtrace record`.
#[derive(Args, Clone, Debug)]
pub struct RecordArgs {
    /// Model: a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a
    /// single-file LDM checkpoint (.safetensors, as A1111 loads; .ckpt pickles are refused)
    #[arg(long, value_name = "DIR|FILE")]
    model: PathBuf,
    /// Prompt (A1111 syntax: (word), [word], (word:1.2), BREAK) [default: empty]
    #[arg(long)]
    prompt: Option<String>,
    /// Negative prompt [default: empty]
    #[arg(long)]
    negative: Option<String>,
    /// Prompt syntax: a1111 (weights, BREAK, 75-token chunks) or plain (diffusers: one chunk)
    #[arg(long, value_name = "SYNTAX", value_enum, default_value = "a1111")]
    prompt_syntax: SyntaxArg,
    /// Sampler steps [default: 20]
    #[arg(long)]
    steps: Option<u32>,
    /// Sampler: sdtrace's names (dpmpp-2m-karras, dpmpp-2m, euler, euler-a, ddim) or the
    /// webui's ("DPM++ 2M Karras", "DPM++ 2M" with --schedule, "Euler a", "Euler", "DDIM")
    /// [default: dpmpp-2m-karras]
    #[arg(long, value_name = "NAME")]
    sampler: Option<String>,
    /// Whose sampler semantics to follow: k-diffusion (the webuis' and ComfyUI's; default) or
    /// diffusers (its EulerDiscrete, DPMSolverMultistep and DDIM schedulers, configured from the
    /// model folder's scheduler/scheduler_config.json, as a diffusers pipeline runs them)
    #[arg(long, value_name = "IMPL", value_enum, default_value = "k-diffusion")]
    sampler_impl: SamplerImplArg,
    /// The webui's Schedule type for a webui sampler name: karras, uniform or automatic
    /// ("DPM++ 2M" + karras = "DPM++ 2M Karras")
    #[arg(
        long,
        value_name = "TYPE",
        value_enum,
        ignore_case = true,
        requires = "sampler"
    )]
    schedule: Option<ScheduleArg>,
    /// Classifier-free guidance scale [default: 7]
    #[arg(long)]
    cfg: Option<f64>,
    /// Seed (-1: a random one, printed and recorded) [default: -1]
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<i64>,
    /// Noise generator: sdtrace, torch-cpu, torch-cuda:SMS[,THREADS_PER_SM], torch-cuda:CARD
    /// (e.g. gtx1070, t4), a1111-nv, file:PATH (.npy/.safetensors), device (GPU only)
    /// [default: sdtrace]
    #[arg(long, value_name = "RNG", value_parser = parse_rng)]
    rng: Option<RngSpec>,
    /// Emulate the webui's GPU noise on this card: a name (gtx1070, t4, rtx3060, …) or
    /// SMS,THREADS_PER_SM; the same as --rng torch-cuda:NAME
    #[arg(long, value_name = "NAME|SMS,THREADS", value_parser = rng::parse_card_flag, conflicts_with = "rng")]
    card: Option<RngSpec>,
    /// A1111's eta noise seed delta: Euler a's per-step noise comes from seed + ENSD (0: the
    /// generator of the initial noise continues) [default: 0]
    #[arg(long, value_name = "N")]
    ensd: Option<u64>,
    /// Image size WIDTHxHEIGHT, multiples of 8 [default: 512x512]
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// A1111's Clip skip (1 = the last layer; at least 1) [default: 1]
    #[arg(long)]
    clip_skip: Option<u32>,
    /// Device: cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Model dtype (bf16 not on the CPU)
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// cuBLAS reduced precision (CUDA): none, all, or a list of f32 (TF32 tensor cores), f16
    /// (f16 accumulation), bf16 — recorded in the header
    #[arg(long, default_value = "none", value_name = "LIST")]
    gemm_reduced_precision: GemmPrecision,
    /// Attention: full, sliced:N, split:auto, split:BUDGET (e.g. split:2GiB), subquad:Q,KV
    #[arg(long, default_value = "full")]
    attention: String,
    /// CPU compute threads (default: one per core; at most 4 per logical CPU)
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<u32>,
    /// What to record: light, full, stats, sketch, off, or rules (see below)
    #[arg(long, default_value = "light", value_name = "WHAT")]
    capture: String,
    /// Trace file to write (.sdt)
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// PNG of the result (default: the trace's path with .png)
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Write no PNG
    #[arg(long, conflicts_with = "png")]
    no_png: bool,
    /// Refuse to start when the estimated trace is larger (e.g. 500MiB, 20GiB)
    #[arg(long, default_value = "20GiB", value_name = "SIZE", value_parser = parse_bytes_arg)]
    max_trace_size: u64,
    /// Stop (cleanly) at the first NaN/Inf in a probed tensor
    #[arg(long)]
    stop_on_nan: bool,
    /// Add seeded relative noise EPS at one probe point: KEY@STEP=EPS (repeatable)
    #[arg(long, value_name = "KEY@STEP=EPS")]
    perturb: Vec<Perturbation>,
    /// No progress output
    #[arg(short, long)]
    quiet: bool,
    /// What the UNet predicts: epsilon or v (SD 2.x 768-v models); single-file SD 1.x
    /// checkpoints default to epsilon, SD 2.x ones need it said
    #[arg(long, value_name = "KIND", value_enum)]
    prediction: Option<PredictionArg>,
    /// Refuse a single-file checkpoint whose hash differs: A1111's old 8-hex hash, the 10-hex
    /// short SHA-256 of the infotext's "Model hash", or the full SHA-256 ('off': do not check
    /// the infotext's Model hash)
    #[arg(long, value_name = "HASH")]
    expect_hash: Option<String>,
    /// A diffusers tokenizer/ folder to use instead of the model's own (single files: instead of
    /// the built-in OpenAI CLIP vocabulary)
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// Load a single-file checkpoint that holds tensors nothing reads (listed in the header)
    #[arg(long)]
    ignore_unknown_keys: bool,
    /// Settings from A1111 generation parameters ("infotext": prompt, Negative prompt:, Steps,
    /// Sampler, CFG scale, Seed, Size, Model hash, Clip skip…); flags given here win
    #[arg(long, value_name = "TEXT", group = "infotext")]
    params: Option<String>,
    /// The same, read from a text file
    #[arg(long, value_name = "FILE", group = "infotext")]
    params_file: Option<PathBuf>,
    /// The same, from the 'parameters' text of a PNG the webui saved
    #[arg(long, value_name = "IMAGE.png", group = "infotext")]
    from_png: Option<PathBuf>,
    /// A1111 before 1.8: alphas_cumprod in fp16 (shifts every σ)
    #[arg(long)]
    a1111_alphas_fp16: bool,
    /// A1111 before 2023-01-05: Karras σ bounds (0.1, 10) instead of the model's
    #[arg(long)]
    a1111_old_karras: bool,
    /// A1111's CFG batching: [cond; uncond] in one call when the prompts have the same token
    /// count, else two calls (cond, then uncond) without padding the shorter prompt
    #[arg(long)]
    a1111_cond_uncond: bool,
    /// A1111's emphasis mode [default: original]
    #[arg(long, value_name = "MODE", value_enum, ignore_case = true)]
    emphasis: Option<EmphasisArg>,
    /// SDXL: the original size its UNet is conditioned on [default: the image size, as the
    /// webui sets it]
    #[arg(long, value_name = "WxH", value_parser = parse_pair_x)]
    sdxl_original_size: Option<(u32, u32)>,
    /// SDXL: the crop's top-left corner its UNet is conditioned on (the webui's
    /// sdxl_crop_top, sdxl_crop_left) [default: 0,0]
    #[arg(long, value_name = "TOP,LEFT", value_parser = parse_crop)]
    sdxl_crop: Option<(u32, u32)>,
    /// Free VRAM that --attention split:auto plans for, as a card of that size would (e.g. 5GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes_arg)]
    vram_budget: Option<u64>,
}

/// Longest --params-file read.
const MAX_PARAMS_FILE: u64 = 1 << 20;
/// Largest --from-png read.
const MAX_PNG: u64 = 256 << 20;

/// Read `path` whole, refusing files above `limit` bytes.
fn read_limited(path: &Path, limit: u64, flag: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .len();
    if len > limit {
        bail!(
            "{flag} {}: {} is larger than the {} this flag reads; is it the right file?",
            path.display(),
            human(len),
            human(limit)
        );
    }
    sdtrace::files::require_regular(path)
        .and_then(|_| std::fs::read(path))
        .with_context(|| format!("{flag} {}", path.display()))
}

/// An A1111 infotext given by --params, --params-file or --from-png, parsed.
#[derive(Clone, Debug)]
pub struct Infotext {
    /// The flag (and file) it came from, e.g. `--params-file p.txt`.
    source: String,
    /// The text as given.
    text: String,
    settings: InfotextSettings,
}

/// Read and parse the infotext of --params / --params-file / --from-png (the only files
/// `record` reads before [`resolve`]).
pub fn read_infotext(args: &RecordArgs) -> Result<Option<Infotext>> {
    let (source, text) = if let Some(t) = &args.params {
        ("--params".to_string(), t.clone())
    } else if let Some(p) = &args.params_file {
        let bytes = read_limited(p, MAX_PARAMS_FILE, "--params-file")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("--params-file {}: not UTF-8 text", p.display()))?;
        (format!("--params-file {}", p.display()), text)
    } else if let Some(p) = &args.from_png {
        let bytes = read_limited(p, MAX_PNG, "--from-png")?;
        let text = sdtrace::params::parameters_of_png(&bytes)
            .with_context(|| format!("--from-png {}", p.display()))?;
        (format!("--from-png {}", p.display()), text)
    } else {
        return Ok(None);
    };
    let settings =
        InfotextSettings::parse(&text).with_context(|| format!("{source}: A1111 infotext"))?;
    Ok(Some(Infotext {
        source,
        text,
        settings,
    }))
}

/// Why an infotext without a usable generator needs a choice, and the two commands.
fn rng_refusal(source: &str, parsed: &InfotextSettings) -> String {
    let what = match parsed
        .not_applied
        .iter()
        .find(|f| f.key == "RNG")
        .map(|f| f.value.as_str())
    {
        Some("(absent: GPU)") | None => {
            "has no RNG field, so the webui drew the noise with its default source, the GPU".into()
        }
        Some(v) => format!("says RNG: {v}, so the webui drew the noise on the GPU"),
    };
    format!(
        "{source}: the infotext {what}; GPU noise depends on the card once an image is larger than the card's RNG wave (from 520×520 on a P2000, 704×704 on a GTX 1070), so sdtrace will not guess. Say which, by adding one of:\n  \
         --card gtx1070   the card that made the image (a name, or SMS,THREADS such as --card 15,2048; the same as --rng torch-cuda:SMS,THREADS)\n  \
         --rng torch-cpu  if the webui's source was CPU (Settings → Sampler parameters → Random number generator source)\n\
         cards: {}",
        rng::presets::names()
    )
}

/// `--rng`, refusing a `file:PATH` that is a FIFO or device before anything waits on it.
pub fn parse_rng(s: &str) -> Result<RngSpec, String> {
    let spec = rng::parse_flag(s)?;
    if let RngSpec::File(path) = &spec {
        sdtrace::files::require_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(spec)
}

/// Most compute threads per logical CPU that `--threads` accepts.
const THREADS_PER_CPU: usize = 4;

/// `--threads N`: 1 up to [`THREADS_PER_CPU`] × the logical CPUs. More only slows the run and
/// costs memory (1 000 ran > 60 s in 891 MB where the default takes 0.3 s; 100 000 hung a
/// machine), so it is refused, not clamped silently.
fn parse_threads(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': expected a number of threads, e.g. 4"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    check_threads(n, cpus)
}

fn check_threads(n: u32, cpus: usize) -> Result<u32, String> {
    let max = THREADS_PER_CPU * cpus;
    if n == 0 {
        return Err("0: give at least 1 thread (leave --threads out for one per core)".into());
    }
    if n as usize > max {
        return Err(format!(
            "{n} is more than {THREADS_PER_CPU} per logical CPU ({cpus} here, so at most {max}); more threads only slow the run and cost memory: give at most {max}, or leave --threads out for one per core"
        ));
    }
    Ok(n)
}

/// `--sdxl-original-size WxH`: two positive numbers.
fn parse_pair_x(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{s}': expected WIDTHxHEIGHT in pixels, e.g. 1024x1024");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    match (w.trim().parse::<u32>(), h.trim().parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(bad()),
    }
}

/// `--sdxl-crop TOP,LEFT`: two numbers of pixels.
fn parse_crop(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{s}': expected TOP,LEFT in pixels, e.g. 0,0");
    let (t, l) = s.split_once(',').ok_or_else(bad)?;
    match (t.trim().parse::<u32>(), l.trim().parse::<u32>()) {
        (Ok(t), Ok(l)) => Ok((t, l)),
        _ => Err(bad()),
    }
}

fn parse_bytes_arg(s: &str) -> Result<u64, String> {
    sdtrace::model::attention::parse_bytes(s)
        .ok_or_else(|| format!("'{s}': expected a size such as 500MiB or 20GiB"))
}

/// Apply `--threads` before any compute thread pool starts.
pub fn configure_threads(args: &RecordArgs) {
    if let Some(n) = args.threads {
        // candle reads both (its barrier pool CANDLE_NUM_THREADS, gemm's rayon pool
        // RAYON_NUM_THREADS) when its first kernel runs.
        for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            // SAFETY: called at the start of `main`, before any other thread exists.
            unsafe { std::env::set_var(var, n.to_string()) };
        }
    }
}

/// The terminal side of a run.
struct Terminal {
    tty: bool,
    quiet: bool,
    stop: Arc<AtomicBool>,
    started: Instant,
    step_times: Vec<Duration>,
    stage: String,
}

impl Terminal {
    fn line(&mut self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
    }
}

impl Monitor for Terminal {
    fn plan(&mut self, p: &RunPlan) {
        if self.quiet {
            return;
        }
        let s = &p.header.settings;
        let mut text = format!(
            "recording {} {}x{}, {} {} steps, cfg {}, seed {} ({}), {} {} on {}\n",
            s.model.as_deref().unwrap_or("?"),
            s.width.unwrap_or(0),
            s.height.unwrap_or(0),
            s.sampler.as_deref().unwrap_or("?"),
            s.steps.unwrap_or(0),
            s.cfg_scale.unwrap_or(0.0),
            s.seed.unwrap_or(0),
            s.rng.as_deref().unwrap_or("?"),
            s.dtype.as_deref().unwrap_or("?"),
            s.attention.as_deref().unwrap_or("?"),
            p.header.device.device.as_deref().unwrap_or("?"),
        );
        let e = &p.estimate;
        text += &format!(
            "capture: {} records ({} probe points per step, {} turned off), estimated trace {}",
            e.records,
            p.points_per_step,
            e.skipped,
            human(e.bytes)
        );
        if let Some(free) = p.free_disk {
            text += &format!(" ({} free)", human(free));
        }
        for (f, (n, b)) in &e.by_fidelity {
            text += &format!("\n  {:<6} {n:>7} records {:>11}", f.name(), human(*b));
        }
        for (g, (n, b)) in &e.by_group {
            text += &format!("\n  {g:<13} {n:>7} records {:>11}", human(*b));
        }
        if s.attention
            .as_deref()
            .is_some_and(|a| a.starts_with("split"))
            && let Some(plan) = s.extra.get("attention_plan").and_then(|p| p.as_object())
        {
            text += &format!(
                "\nattention {}: query slices per layer (Doggettx split)",
                s.attention.as_deref().unwrap_or("?")
            );
            for (key, c) in plan {
                text += &format!(
                    "\n  {key:<64} {:>3} × {} queries",
                    c["query_slices"], c["queries"]
                );
            }
        }
        self.line(&text);
    }

    fn stage(&mut self, name: &str) {
        self.stage = name.to_string();
        if !self.quiet && !self.tty {
            eprintln!("{name}...");
        }
    }

    fn step(&mut self, step: u32, steps: u32, took: Duration) {
        self.step_times.push(took);
        if self.quiet {
            return;
        }
        let done = step + 1;
        // The first step includes warm-up; average the others when there are some.
        let recent = if self.step_times.len() > 1 {
            &self.step_times[1..]
        } else {
            &self.step_times[..]
        };
        let per = recent.iter().sum::<Duration>().as_secs_f64() / recent.len() as f64;
        let eta = per * (steps - done) as f64;
        if self.tty {
            let width = 30;
            let filled = (done as usize * width) / steps.max(1) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] step {done}/{steps}  {:.2} s/step  ETA {:.0} s",
                "#".repeat(filled),
                ".".repeat(width - filled),
                per,
                eta
            );
            if done == steps {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else {
            eprintln!(
                "step {done}/{steps} {:.2} s (ETA {:.0} s)",
                took.as_secs_f64(),
                eta
            );
        }
    }

    fn nonfinite(&mut self, n: &NonFinite) {
        let step = n.step.map_or("-".to_string(), |s| s.to_string());
        self.line(&format!(
            "warning: non-finite values in {} at step {step}: {} NaN, {} +Inf, {} -Inf",
            n.key, n.nan, n.pos_inf, n.neg_inf
        ));
    }

    fn stop_requested(&mut self) -> Option<String> {
        if !self.stop.load(Ordering::SeqCst) {
            return None;
        }
        Some(if TERMINATED.load(Ordering::SeqCst) {
            "terminated (SIGTERM)".to_string()
        } else {
            "interrupted (Ctrl-C)".to_string()
        })
    }
}

/// Set by SIGTERM (what `timeout`, systemd and container runtimes send), which stops a
/// recording like the first Ctrl-C: the current step finishes and the trace is closed with a
/// run-end marked interrupted.
static TERMINATED: AtomicBool = AtomicBool::new(false);

/// The stop flag SIGTERM sets; the same flag as Ctrl-C's once [`stop_flag`] made it.
static TERM_STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

#[cfg(unix)]
extern "C" fn on_sigterm(_: libc::c_int) {
    // Only atomic stores: async-signal-safe.
    TERMINATED.store(true, Ordering::SeqCst);
    if let Some(flag) = TERM_STOP.get() {
        flag.store(true, Ordering::SeqCst);
    }
}

/// Route SIGTERM to the stop flag (Unix; elsewhere SIGTERM keeps its default).
fn install_sigterm(stop: Arc<AtomicBool>) {
    let _ = TERM_STOP.set(stop);
    #[cfg(unix)]
    {
        let handler: extern "C" fn(libc::c_int) = on_sigterm;
        // SAFETY: `on_sigterm` only performs atomic loads and stores (async-signal-safe), and
        // TERM_STOP is fully initialised before the handler is installed; `signal` with a
        // valid handler function pointer has no other preconditions.
        unsafe {
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        }
    }
}

/// The process's stop flag, set by the first Ctrl-C or by SIGTERM. The handler is installed once, so the runs
/// of a sweep share it (and a sweep sees it to stop between runs).
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        install_ctrl_c(flag.clone());
        install_sigterm(flag.clone());
        flag
    })
    .clone()
}

/// First Ctrl-C: finish the current step and close the trace. Second: stop at once (the
/// trace is then recoverable but unfinished).
fn install_ctrl_c(stop: Arc<AtomicBool>) {
    let presses = AtomicU32::new(0);
    let _ = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            stop.store(true, Ordering::SeqCst);
            eprintln!(
                "\nstopping after the current step; the trace will be closed and marked interrupted (Ctrl-C again to quit at once)"
            );
        } else {
            eprintln!(
                "\nquitting now; the trace is left unfinished (readable up to the last step)"
            );
            std::process::exit(i32::from(ExitStatus::Interrupted.code()));
        }
    });
}

/// A random seed, as `--seed -1` draws it (below 2³², as the webui's).
fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 4_294_967_296)
        .unwrap_or(0)
}

/// What [`resolve`] takes from outside the flags, so that it stays pure.
#[derive(Clone, Copy, Debug)]
pub struct Surroundings {
    /// `--model` names a folder (diffusers) rather than a single file.
    pub model_is_dir: bool,
    /// The seed `--seed -1` (or no seed from flags or infotext) stands for.
    pub random_seed: u64,
    /// Compute threads in effect (recorded).
    pub threads: u32,
}

impl Surroundings {
    /// This process's: the file system's answer for `--model`, the clock's seed, candle's
    /// threads.
    pub fn here(args: &RecordArgs) -> Self {
        Surroundings {
            model_is_dir: args.model.is_dir(),
            random_seed: random_seed(),
            threads: sdtrace::pipeline::compute_threads() as u32,
        }
    }
}

/// A run `record` will make: its spec, and the infotext's account (applied, overridden, not
/// applied) for the terminal.
#[derive(Debug)]
pub struct Resolved {
    pub spec: RecordSpec,
    pub infotext_lines: Vec<String>,
}

/// Flags and infotext → the [`RecordSpec`] of the run, every value checked: a pure step (no
/// device, no model file, no output file touched), so that a bad flag is refused before any
/// work, naming the flag and what to give instead. Flags win over the infotext.
pub fn resolve(args: &RecordArgs, info: Option<Infotext>, env: &Surroundings) -> Result<Resolved> {
    let policy = Policy::from_spec(&args.capture).context("--capture")?;
    let attention = AttentionImpl::parse(&args.attention, args.vram_budget)
        .map_err(|e| anyhow::anyhow!("--attention: {e}"))?;
    let sampler_flag = args
        .sampler
        .as_deref()
        .map(|name| resolve_sampler(name, args.schedule.map(ScheduleArg::webui_name)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sampler: {e}"))?;
    let mut info = info;
    if let Some(i) = &mut info {
        if i.settings.gpu_source && args.rng.is_none() && args.card.is_none() {
            bail!("{}", rng_refusal(&i.source, &i.settings));
        }
        let parsed = &mut i.settings;
        for (given, key, flag) in [
            (args.prompt.is_some(), "Prompt", "--prompt"),
            (args.negative.is_some(), "Negative prompt", "--negative"),
            (args.steps.is_some(), "Steps", "--steps"),
            (args.sampler.is_some(), "Sampler", "--sampler"),
            (args.cfg.is_some(), "CFG scale", "--cfg"),
            (args.seed.is_some(), "Seed", "--seed"),
            (args.size.is_some(), "Size", "--size"),
            (args.clip_skip.is_some(), "Clip skip", "--clip-skip"),
            (args.expect_hash.is_some(), "Model hash", "--expect-hash"),
            (args.emphasis.is_some(), "Emphasis", "--emphasis"),
            (args.rng.is_some(), "RNG", "--rng"),
            (args.rng.is_some(), SDTRACE_RNG_KEY, "--rng"),
            (args.card.is_some(), "RNG", "--card"),
            (args.card.is_some(), SDTRACE_RNG_KEY, "--card"),
            (args.ensd.is_some(), "ENSD", "--ensd"),
        ] {
            if given {
                parsed.overridden(key, flag);
            }
        }
        if env.model_is_dir
            && args.expect_hash.is_none()
            && parsed.model_hash.is_some()
            && let Some(i) = parsed.applied.iter().position(|f| f.key == "Model hash")
        {
            let mut f = parsed.applied.remove(i);
            f.note = format!(
                "not checked: {} is a diffusers folder, the webui's hashes are of single files",
                args.model.display()
            );
            parsed.not_applied.push(f);
        }
    }
    let from = info.as_ref().map(|i| &i.settings);
    let source = info.as_ref().map_or("", |i| i.source.as_str());
    let sampler = match (
        sampler_flag,
        from.and_then(|s| s.sampler),
        from.and_then(|s| s.unsupported_sampler.as_deref()),
    ) {
        (Some(s), _, _) | (None, Some(s), _) => s,
        (None, None, Some(theirs)) => bail!(
            "{source}: the infotext's sampler '{theirs}' has no sdtrace equivalent; give --sampler (one of {})",
            SamplerKind::ALL.map(|k| k.name()).join(", ")
        ),
        (None, None, None) => SamplerKind::DpmPp2mKarras,
    };
    let seed = match (args.seed, from.and_then(|s| s.seed)) {
        (Some(-1), _) | (None, None) => env.random_seed,
        (Some(s), _) if s >= 0 => s as u64,
        (Some(s), _) => bail!("--seed {s}: give -1 (a random seed) or a number >= 0"),
        (None, Some(s)) => s,
    };
    let clip_skip = match (args.clip_skip, from.and_then(|s| s.clip_skip)) {
        (Some(0), _) => bail!(
            "--clip-skip 0: give 1 or more (1 = the last layer, the webui's default; 2 = the penultimate)"
        ),
        (Some(n), _) => n,
        (None, Some(0)) => bail!(
            "{source}: Clip skip: 0 is not a webui value; give --clip-skip 1 or more (1 = the last layer)"
        ),
        (None, Some(n)) => n,
        (None, None) => 1,
    };
    let steps = args.steps.or(from.and_then(|s| s.steps)).unwrap_or(20);
    if steps == 0 {
        bail!("--steps 0: give at least 1 sampler step");
    }
    let cfg_scale = args.cfg.or(from.and_then(|s| s.cfg_scale)).unwrap_or(7.0);
    if !cfg_scale.is_finite() {
        bail!("--cfg {cfg_scale}: give a finite guidance scale such as 7");
    }
    let (width, height) = args
        .size
        .or(from.and_then(|s| s.size))
        .unwrap_or((512, 512));
    let mut expect_hash = args.expect_hash.clone();
    if expect_hash.is_none() && !env.model_is_dir {
        expect_hash = from.and_then(|s| s.model_hash.clone());
    }
    if expect_hash.as_deref() == Some("off") {
        expect_hash = None;
    }
    let mut infotext_json = None;
    let mut infotext_lines = Vec::new();
    if let Some(i) = &info {
        infotext_lines.push(format!("infotext from {}:", i.source));
        infotext_lines.extend(i.settings.describe().into_iter().map(|l| format!("  {l}")));
        let mut j = i.settings.to_json();
        j["source"] = serde_json::json!(i.source);
        j["text"] = serde_json::json!(i.text);
        infotext_json = Some(j);
    }
    let spec = RecordSpec {
        model: args.model.clone(),
        prompt: args
            .prompt
            .clone()
            .or(from.and_then(|s| s.prompt.clone()))
            .unwrap_or_default(),
        negative: args
            .negative
            .clone()
            .or(from.and_then(|s| s.negative.clone()))
            .unwrap_or_default(),
        syntax: args.prompt_syntax.into(),
        steps,
        sampler,
        sampler_impl: args.sampler_impl.into(),
        cfg_scale,
        seed,
        rng: args
            .rng
            .clone()
            .or(args.card.clone())
            .or(from.and_then(|s| s.rng.clone()))
            .unwrap_or_default(),
        ensd: args.ensd.or(from.and_then(|s| s.ensd)).unwrap_or(0),
        width,
        height,
        clip_skip,
        device: args.device,
        dtype: args.dtype.into(),
        gemm_reduced_precision: args.gemm_reduced_precision,
        attention,
        threads: Some(env.threads),
        policy,
        capture: args.capture.clone(),
        perturb: args.perturb.clone(),
        stop_on_nan: args.stop_on_nan,
        max_trace_size: args.max_trace_size,
        model_options: sdtrace::pipeline::model::ModelOptions {
            prediction: args.prediction.map(Into::into),
            expect_hash,
            tokenizer: args.tokenizer.clone(),
            ignore_unknown_keys: args.ignore_unknown_keys,
        },
        a1111: sdtrace::pipeline::A1111Options {
            alphas_fp16: args.a1111_alphas_fp16 || from.and_then(|s| s.alphas_fp16) == Some(true),
            old_karras: args.a1111_old_karras,
            emphasis: args
                .emphasis
                .map(Into::into)
                .or(from.and_then(|s| s.emphasis))
                .unwrap_or_default(),
            vram_budget: args.vram_budget,
            infotext: infotext_json,
            batching: if args.a1111_cond_uncond {
                sdtrace::sampling::Batching::A1111
            } else {
                sdtrace::sampling::Batching::UncondFirst
            },
        },
        size_conditioning: sdtrace::pipeline::SizeConditioning {
            original_size: args.sdxl_original_size,
            crop: args.sdxl_crop.unwrap_or((0, 0)),
        },
    };
    // What the library refuses of any spec (bf16 on the CPU, webui switches with diffusers'
    // schedulers), checked here too so that it comes before the device opens.
    spec.check()?;
    Ok(Resolved {
        spec,
        infotext_lines,
    })
}

pub fn run(args: RecordArgs) -> Result<ExitStatus> {
    let info = read_infotext(&args)?;
    let Resolved {
        spec,
        infotext_lines,
    } = resolve(&args, info, &Surroundings::here(&args))?;
    if !args.quiet {
        for line in &infotext_lines {
            eprintln!("{line}");
        }
    }
    let stop = stop_flag();
    let mut term = Terminal {
        tty: std::io::stderr().is_terminal(),
        quiet: args.quiet,
        stop,
        started: Instant::now(),
        step_times: Vec::new(),
        stage: String::new(),
    };
    let result = if args.quiet {
        let mut q = QuietStop(&mut term);
        sdtrace::pipeline::record(&spec, &args.output, &mut q)
    } else {
        sdtrace::pipeline::record(&spec, &args.output, &mut term)
    };
    let rec = match result {
        Ok(r) => r,
        // The trace exists and says how the run ended: the error is the run's outcome, not a
        // failure to record (a sweep reports it and stops).
        Err(e @ (PipelineError::Run { .. } | PipelineError::Unclosed { .. })) => {
            let status = super::exit::pipeline(&e);
            eprintln!("error: {}", super::error_text(&anyhow::Error::from(e)));
            return Ok(status);
        }
        Err(e) => return Err(e).with_context(|| format!("record -o {}", args.output.display())),
    };
    finish(&args, &rec, &term)
}

/// Quiet, but still stoppable with Ctrl-C.
struct QuietStop<'a>(&'a mut Terminal);
impl Monitor for QuietStop<'_> {
    fn stop_requested(&mut self) -> Option<String> {
        self.0.stop_requested()
    }
}

fn finish(args: &RecordArgs, rec: &Recording, term: &Terminal) -> Result<ExitStatus> {
    let written = format!(
        "{} ({} records, {})",
        rec.trace.path.display(),
        rec.trace.records,
        human(rec.trace.bytes)
    );
    if rec.end.status != RunStatus::Complete {
        eprintln!("run {}; trace written: {written}", rec.end.describe());
        return Ok(ExitStatus::Incomplete);
    }
    let mut png_note = String::new();
    if !args.no_png
        && let Some((shape, data)) = &rec.image
    {
        let path = args
            .png
            .clone()
            .unwrap_or_else(|| args.output.with_extension("png"));
        if let Err(e) = write_png(&path, shape, data, &rec.header) {
            // The run is done and its trace complete: only the picture is missing.
            eprintln!(
                "error: {}; the trace {written} is complete, only the PNG is missing (`sdtrace export {} image OUT.png` writes it when the trace kept the image)",
                super::error_text(&e),
                rec.trace.path.display()
            );
            return Ok(ExitStatus::Usage);
        }
        png_note = format!(", image {}", path.display());
    }
    if !args.quiet {
        eprintln!(
            "done in {:.1} s: trace {written}{png_note}{}",
            term.started.elapsed().as_secs_f64(),
            if rec.end.nonfinite.is_empty() {
                String::new()
            } else {
                format!("; {} probed tensors held NaN/Inf", rec.end.nonfinite.len())
            }
        );
    }
    Ok(ExitStatus::Success)
}

fn write_png(path: &Path, shape: &[usize], data: &[f32], header: &RunHeader) -> Result<()> {
    let images = rgb8_from_chw(shape, data).context("the decoded image")?;
    let Some((w, h, rgb)) = images.into_iter().next() else {
        bail!("the decoded image is empty");
    };
    let mut params = InfotextParams::from_settings(&header.settings, w, h)?;
    params.extra.push((
        "Recorded by".into(),
        format!("sdtrace {}", env!("CARGO_PKG_VERSION")),
    ));
    let text = infotext(&params);
    let png = encode_png(w, h, &rgb, &[("parameters", text.as_str())])
        .with_context(|| format!("encoding {}", path.display()))?;
    sdtrace::export::write_atomic(path, &png).with_context(|| format!("--png {}", path.display()))
}

impl RecordArgs {
    /// One run per size for `sdtrace sweep`: `output` is the folder; each run writes
    /// `W x H.sdt` (and its PNG) there, with one seed for all (a random one picked once when
    /// neither a flag nor the infotext gives it).
    pub fn sweep_runs(&self, sizes: &[(u32, u32)]) -> Result<Vec<RecordArgs>> {
        if self.size.is_some() {
            bail!("sweep sets the image size itself: give --sizes, not --size");
        }
        if self.png.is_some() {
            bail!("sweep names each PNG after its trace: leave out --png (or pass --no-png)");
        }
        // Read the infotext and resolve every flag once before any run, so that a refusal,
        // such as a missing generator choice or a bad --attention, comes before the folder is
        // made.
        let info = read_infotext(self)?;
        let from_infotext = info.as_ref().and_then(|i| i.settings.seed);
        resolve(self, info, &Surroundings::here(self))?;
        let mut seed = self.seed;
        if (seed.is_none() && from_infotext.is_none()) || seed == Some(-1) {
            seed = Some(random_seed() as i64);
        }
        Ok(sizes
            .iter()
            .map(|&(w, h)| RecordArgs {
                size: Some((w, h)),
                seed,
                output: self.output.join(format!("{w}x{h}.sdt")),
                ..self.clone()
            })
            .collect())
    }

    /// The trace this run writes.
    pub fn output(&self) -> &Path {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        record: RecordArgs,
    }

    /// Flags as clap reads them, with a model and an output that do not exist: resolving
    /// must not look at either.
    fn parse(extra: &[&str]) -> std::result::Result<RecordArgs, clap::Error> {
        let base = [
            "record",
            "--model",
            "/no/such/model",
            "-o",
            "/no/such/dir/x.sdt",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.record)
    }

    const HERE: Surroundings = Surroundings {
        model_is_dir: true,
        random_seed: 1234,
        threads: 2,
    };

    fn resolved(extra: &[&str]) -> Result<RecordSpec> {
        let args = parse(extra).map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = read_infotext(&args)?;
        resolve(&args, info, &HERE).map(|r| r.spec)
    }

    fn refused(extra: &[&str]) -> String {
        match resolved(extra) {
            Ok(_) => panic!("{extra:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn defaults_resolve_without_touching_anything() {
        let spec = resolved(&[]).unwrap();
        assert_eq!(spec.seed, 1234);
        assert_eq!(
            (spec.width, spec.height, spec.steps, spec.clip_skip),
            (512, 512, 20, 1)
        );
        assert_eq!(spec.attention, AttentionImpl::Full);
        assert_eq!(spec.sampler, SamplerKind::DpmPp2mKarras);
        assert_eq!(spec.threads, Some(2));
        assert_eq!(spec.dtype, sdtrace::pipeline::ModelDType::F32);
        let spec = resolved(&["--attention", "split:auto", "--vram-budget", "2GiB"]).unwrap();
        assert_eq!(
            spec.attention,
            AttentionImpl::Split {
                budget: Some(2 << 30)
            }
        );
    }

    /// Each bad flag is refused by the pure step, naming the flag and what to give.
    #[test]
    fn each_bad_flag_names_itself_and_the_fix() {
        for (flags, want) in [
            (
                &["--attention", "bogus"][..],
                &["--attention", "'bogus'", "expected full, sliced:N"][..],
            ),
            (&["--attention", "sliced:0"], &["--attention", "positive"]),
            (&["--clip-skip", "0"], &["--clip-skip 0", "give 1 or more"]),
            (&["--seed", "-5"], &["--seed -5", "give -1"]),
            (&["--steps", "0"], &["--steps 0", "at least 1"]),
            (
                &["--dtype", "bf16"],
                &["--dtype bf16", "use --dtype f32 or f16"],
            ),
            (&["--capture", "unet.*=loud"], &["--capture"]),
            (&["--sampler", "nope"], &["--sampler"]),
            (
                &["--sampler-impl", "diffusers", "--a1111-alphas-fp16"],
                &["--sampler-impl diffusers", "--sampler-impl k-diffusion"],
            ),
            (
                &[
                    "--params",
                    "a cat\nSteps: 5, Seed: 1, Clip skip: 0, RNG: CPU",
                ],
                &["--params", "Clip skip: 0", "--clip-skip 1"],
            ),
            (
                &["--params", "a cat\nSteps: 5, Seed: 1, Sampler: Euler"],
                &["--params", "--card", "--rng torch-cpu"],
            ),
        ] {
            let e = refused(flags);
            for w in want {
                assert!(e.contains(w), "{flags:?}: '{w}' not in: {e}");
            }
            assert!(!e.contains("record -o"), "{flags:?} blamed the output: {e}");
        }
    }

    /// Closed value sets are clap's: refused with the list of values, which --help shows too.
    #[test]
    fn closed_value_sets_are_validated_by_clap() {
        for (flag, bad, listed) in [
            ("--dtype", "int8", "f32, f16, bf16"),
            ("--prompt-syntax", "markdown", "a1111, plain"),
            ("--sampler-impl", "comfy", "k-diffusion, diffusers"),
            ("--emphasis", "loud", "original, no-norm"),
            ("--prediction", "x0", "epsilon, v"),
        ] {
            let e = parse(&[flag, bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(flag) && e.contains(listed), "{flag} {bad}: {e}");
        }
        let e = parse(&["--sampler", "euler", "--schedule", "sometimes"])
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("karras, uniform, automatic"));
        let a = parse(&[
            "--dtype",
            "half",
            "--emphasis",
            "No norm",
            "--schedule",
            "Karras",
            "--sampler",
            "DPM++ 2M",
        ])
        .unwrap();
        let spec = resolve(&a, None, &HERE).unwrap();
        assert_eq!(spec.spec.dtype, sdtrace::pipeline::ModelDType::F16);
        assert_eq!(spec.spec.sampler, SamplerKind::DpmPp2mKarras);
        assert_eq!(
            spec.spec.a1111.emphasis,
            sdtrace::pipeline::conditioning::Emphasis::NoNorm
        );
    }

    /// The infotext fills what the flags leave out; flags win.
    #[test]
    fn flags_win_over_the_infotext() {
        let text = "a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler a, CFG scale: 4, Seed: 3, Size: 64x128, Clip skip: 2, RNG: CPU";
        let spec = resolved(&["--params", text, "--steps", "7"]).unwrap();
        assert_eq!(
            (spec.prompt.as_str(), spec.negative.as_str()),
            ("a cat", "dog")
        );
        assert_eq!((spec.steps, spec.seed, spec.clip_skip), (7, 3, 2));
        assert_eq!((spec.width, spec.height), (64, 128));
        assert_eq!(spec.sampler, SamplerKind::EulerA);
        assert_eq!(spec.cfg_scale, 4.0);
        assert!(spec.a1111.infotext.is_some());
        let spec = resolved(&["--params", text, "--seed", "-1"]).unwrap();
        assert_eq!(spec.seed, 1234);
    }
}
