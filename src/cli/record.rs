//! `sdtrace record`: flags → [`RecordSpec`], the terminal side of a run (plan, progress bar or
//! plain lines, NaN warnings, Ctrl-C), and the PNG with A1111 infotext next to the trace.

use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::image::{InfotextParams, encode_png, infotext, rgb8_from_chw};
use sdtrace::pipeline::gpu::GemmPrecision;
use sdtrace::pipeline::perturb::Perturbation;
use sdtrace::pipeline::{
    DeviceChoice, ModelDType, Monitor, PipelineError, RecordSpec, Recording, RunPlan, human,
    parse_dtype, parse_size,
};
use sdtrace::probe::Policy;
use sdtrace::sampling::SamplerKind;
use sdtrace::text::PromptSyntax;
use sdtrace::trace::{NonFinite, RunHeader, RunStatus};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const RECORD_HELP: &str = "\
Capture (--capture): light (default: full payloads for noise.*, text.*, sampler.*, image;
sketches for every model probe), full, stats, sketch, off, or rules GLOB[@STEPS]=LEVEL[:CODEC]
separated by commas, added to light or to a preset named first: 'full,*.probs=off',
'unet.up_blocks.*@0-4=full:zstd'. Attention q/k/v and probabilities are recorded only when a
rule names them (*.to_q, *.probs).

Exit codes:
  0  the run completed; trace and PNG written
  2  bad usage or model files, or the trace would not fit (nothing written)
  4  stopped early by Ctrl-C or --stop-on-nan: the trace is valid and marked interrupted
  5  an error during the run: the trace is valid and marked failed
  130 a second Ctrl-C: quit at once (the trace is readable up to the last step)";

/// Flags of `sdtrace record`.
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Model: a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompt (A1111 syntax: (word), [word], (word:1.2), BREAK)
    #[arg(long, default_value = "")]
    prompt: String,
    /// Negative prompt
    #[arg(long, default_value = "")]
    negative: String,
    /// Prompt syntax: a1111 (weights, BREAK, 75-token chunks) or plain (diffusers: one chunk)
    #[arg(long, value_name = "SYNTAX", default_value = "a1111", value_parser = parse_syntax)]
    prompt_syntax: PromptSyntax,
    /// Sampler steps
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Sampler: dpmpp-2m-karras, dpmpp-2m, euler, euler-a, ddim
    #[arg(long, default_value = "dpmpp-2m-karras", value_parser = parse_sampler)]
    sampler: SamplerKind,
    /// Classifier-free guidance scale
    #[arg(long, default_value_t = 7.0)]
    cfg: f64,
    /// Seed (-1: a random one, printed and recorded)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,
    /// Image size WIDTHxHEIGHT, multiples of 8
    #[arg(long, default_value = "512x512", value_parser = parse_size)]
    size: (u32, u32),
    /// A1111's Clip skip (1 = the last layer)
    #[arg(long, default_value_t = 1)]
    clip_skip: u32,
    /// Device: cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Model dtype: f32, f16, bf16 (bf16 not on the CPU)
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: ModelDType,
    /// cuBLAS reduced precision (CUDA): none, all, or a list of f32 (TF32 tensor cores), f16
    /// (f16 accumulation), bf16 — recorded in the header
    #[arg(long, default_value = "none", value_name = "LIST")]
    gemm_reduced_precision: GemmPrecision,
    /// Attention: full, sliced:N, split:auto, split:BUDGET (e.g. split:2GiB), subquad:Q,KV
    #[arg(long, default_value = "full")]
    attention: String,
    /// CPU compute threads (default: one per core)
    #[arg(long, value_name = "N")]
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
}

fn parse_syntax(s: &str) -> Result<PromptSyntax, String> {
    match s {
        "a1111" => Ok(PromptSyntax::A1111),
        "plain" => Ok(PromptSyntax::Plain),
        _ => Err(format!("'{s}': expected a1111 or plain")),
    }
}

fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse::<SamplerKind>().map_err(|e| e.to_string())
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
            unsafe { std::env::set_var(var, n.max(1).to_string()) };
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
            "recording {} {}x{}, {} {} steps, cfg {}, seed {}, {} {} on {}\n",
            s.model.as_deref().unwrap_or("?"),
            s.width.unwrap_or(0),
            s.height.unwrap_or(0),
            s.sampler.as_deref().unwrap_or("?"),
            s.steps.unwrap_or(0),
            s.cfg_scale.unwrap_or(0.0),
            s.seed.unwrap_or(0),
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
        self.stop
            .load(Ordering::SeqCst)
            .then(|| "interrupted (Ctrl-C)".to_string())
    }
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
            std::process::exit(130);
        }
    });
}

fn seed_of(seed: i64) -> Result<u64> {
    match seed {
        -1 => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 4_294_967_296)
            .unwrap_or(0)),
        s if s >= 0 => Ok(s as u64),
        s => bail!("--seed {s}: must be -1 (random) or a number >= 0"),
    }
}

pub fn run(args: RecordArgs) -> Result<ExitCode> {
    let policy = Policy::from_spec(&args.capture).context("--capture")?;
    let seed = seed_of(args.seed)?;
    let (width, height) = args.size;
    let spec = RecordSpec {
        model: args.model.clone(),
        prompt: args.prompt.clone(),
        negative: args.negative.clone(),
        syntax: args.prompt_syntax,
        steps: args.steps,
        sampler: args.sampler,
        cfg_scale: args.cfg,
        seed,
        width,
        height,
        clip_skip: args.clip_skip,
        device: args.device,
        dtype: args.dtype,
        gemm_reduced_precision: args.gemm_reduced_precision,
        attention: args.attention.clone(),
        threads: Some(sdtrace::pipeline::compute_threads() as u32),
        policy,
        capture: args.capture.clone(),
        perturb: args.perturb.clone(),
        stop_on_nan: args.stop_on_nan,
        max_trace_size: args.max_trace_size,
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());
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
        Err(e @ PipelineError::Run { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(5));
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

fn finish(args: &RecordArgs, rec: &Recording, term: &Terminal) -> Result<ExitCode> {
    let written = format!(
        "{} ({} records, {})",
        rec.trace.path.display(),
        rec.trace.records,
        human(rec.trace.bytes)
    );
    if rec.end.status != RunStatus::Complete {
        eprintln!("run {}; trace written: {written}", rec.end.describe());
        return Ok(ExitCode::from(4));
    }
    let mut png_note = String::new();
    if !args.no_png
        && let Some((shape, data)) = &rec.image
    {
        let path = args
            .png
            .clone()
            .unwrap_or_else(|| args.output.with_extension("png"));
        write_png(&path, shape, data, &rec.header)?;
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
    Ok(ExitCode::SUCCESS)
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
