//! The `sdtrace` command line: clap parsing, output at the edge, exit codes.
//!
//! Exit codes are an API, defined once in [`sdtrace::exit::ExitStatus`]: every command returns
//! one, errors are mapped to one by [`cli::exit::of`], and each command's help table is
//! generated from the statuses it can return ([`cli::exit`]). Nothing below `main` calls
//! `process::exit`, except the second Ctrl-C of a recording, which quits at once with 130.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sdtrace::analysis::{
    AllowMissing, CompareOptions, Comparison, Criteria, FailOn, KeyMap, PairRecord, TolConfig,
    compare_paths, judge,
};
use sdtrace::escape::printable;
use sdtrace::exit::ExitStatus;
use sdtrace::export::{ExportFormat, to_npy, to_png, to_safetensors, write_atomic};
use sdtrace::image::ImageTensor;
use sdtrace::inspect::{LsFilter, info_json, ls_json, ls_rows, render_info, render_ls, trace_info};
use sdtrace::report::{
    Format, ReportExtras, ReportImages, ReportNoise, noise_picture_record, render,
};
use sdtrace::trace::TraceReader;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(name = "sdtrace", version, about = "Tensor-trace differential debugger for Stable Diffusion", after_help = sdtrace::exit::full_table())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a trace's run header, record counts, steps, keys and stored bytes
    #[command(after_help = cli::exit::help("", cli::exit::READ))]
    Info {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Also read every record and payload and check all checksums
        #[arg(long)]
        verify: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List records, one line each with their main summary values
    #[command(after_help = cli::exit::help("", cli::exit::READ))]
    Ls {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Only keys matching this glob (`*` any run of characters, `?` one character)
        #[arg(long, value_name = "GLOB")]
        key: Option<String>,
        /// Only records of this sampler step
        #[arg(long, value_name = "N")]
        step: Option<u32>,
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
    },
    /// The original report's case in miniature: record emulated GTX 1070 / Tesla T4 runs and an
    /// f32/f16 pair on a tiny synthetic model (no download), then judge them
    #[command(after_help = cli::exit::help(cli::demo::DEMO_HELP, cli::exit::DEMO))]
    Demo(cli::demo::DemoArgs),
    /// Run the text-to-image pipeline and record every probe point into a trace (and a PNG)
    #[command(after_help = cli::exit::help(cli::record::RECORD_HELP, cli::exit::RECORD), args_override_self = true)]
    Record(cli::record::RecordArgs),
    /// Record the same generation at a series of sizes, one trace per size in one folder (the
    /// original report's experiment; compare two folders with report --matrix)
    #[command(
        after_help = cli::exit::help(&cli::sweep::help(), cli::exit::SWEEP),
        args_override_self = true,
        mut_arg("output", |a| a
            .value_name("DIR")
            .help("Folder for the traces (created): one WxH.sdt, and WxH.png, per size"))
    )]
    Sweep(cli::sweep::SweepArgs),
    /// Write the initial latent noise a run would use, or compare generators (GPU cards, CPU)
    /// size by size, without a model
    #[command(after_help = cli::exit::help(&cli::noise::help(), cli::exit::NOISE))]
    Noise(cli::noise::NoiseArgs),
    /// Compare the generation parameters of two images (webui, Forge, ComfyUI, sdtrace PNGs):
    /// every setting that differs, and whether their noise can agree, from which size it cannot,
    /// and the fix. No model needed
    #[command(after_help = cli::exit::help(cli::explain::EXPLAIN_HELP, cli::exit::EXPLAIN))]
    Explain(cli::explain::ExplainArgs),
    /// Write a deterministic random-weight model in the diffusers folder layout, or as one
    /// single-file LDM checkpoint (tests, demos, benchmarks; no download)
    #[command(after_help = cli::exit::help("", cli::exit::WRITE))]
    Synth {
        /// Output folder (created; existing files in it are replaced), or file with --format ldm
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// tiny: SD 1.x structure at tiny widths; sd15: SD 1.5's real shapes (3.4 GB of f32);
        /// sdxl-tiny: SDXL's structure (two text encoders, text_time UNet) at tiny widths; sdxl:
        /// SDXL base's real shapes (10 GB of f32). SDXL sizes are diffusers folders only
        #[arg(long, default_value = "tiny", value_name = "SIZE")]
        size: sdtrace::model::synth::SynthSize,
        /// Seed of the weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Layout of the model (both hold the same weights)
        #[arg(long, value_enum, default_value_t = cli::values::SynthFormat::Diffusers, value_name = "FORMAT")]
        format: cli::values::SynthFormat,
        /// Weight dtype of an ldm file: f32 or f16
        #[arg(long, default_value = "f32", value_parser = sdtrace::pipeline::parse_dtype)]
        dtype: sdtrace::pipeline::ModelDType,
    },
    /// Write one record's tensor to .npy or .safetensors, or an image record to .png with A1111's
    /// generation parameters (chosen by the output's extension)
    #[command(after_help = cli::exit::help("", cli::exit::WRITE))]
    Export {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Probe key, e.g. noise.initial, sampler.x or image
        key: String,
        /// Output file: NAME.npy, NAME.safetensors or NAME.png (or give it with -o)
        #[arg(
            value_name = "OUT",
            required_unless_present = "output",
            conflicts_with = "output"
        )]
        out: Option<PathBuf>,
        /// Sampler step (leave out for records outside the sampling loop)
        #[arg(long, value_name = "N")]
        step: Option<u32>,
        /// Model evaluation within the step
        #[arg(long, value_name = "E", default_value_t = 0)]
        eval: u32,
        /// Output file: NAME.npy, NAME.safetensors or NAME.png
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Batch item to write to a .png
        #[arg(long, value_name = "I", default_value_t = 0)]
        index: usize,
    },
    /// Compare two traces: where the runs part, where the error grows, and why
    #[command(after_help = cli::exit::help(REPORT_HELP, cli::exit::REPORT))]
    Report {
        /// Trace A, the reference (.sdt)
        #[arg(required_unless_present = "from")]
        a: Option<PathBuf>,
        /// Trace B, the run under test (.sdt)
        #[arg(required_unless_present = "from")]
        b: Option<PathBuf>,
        /// Output format
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = cli::values::ReportFormat::Text)]
        format: cli::values::ReportFormat,
        /// Write the report to FILE instead of stdout
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        judge: JudgeArgs,
        /// Also save all metrics as JSON, to re-judge later with --from
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
        /// Re-judge a comparison saved with --save instead of reading traces
        #[arg(long, value_name = "FILE", conflicts_with_all = ["a", "b", "noise_floor", "map"])]
        from: Option<PathBuf>,
        /// A and B are folders of traces (sdtrace sweep -o DIR): compare them size by size and
        /// print the size × verdict table (text, json or markdown)
        #[arg(long, conflicts_with_all = ["from", "save", "noise_floor"])]
        matrix: bool,
    },
    /// Explore a comparison interactively: summary, step × layer heatmap, layer, tensor,
    /// noise and image views (press ? for the keys)
    #[command(after_help = cli::exit::help(DIFF_HELP, cli::exit::DIFF))]
    Diff {
        /// Trace A, the reference (.sdt)
        a: PathBuf,
        /// Trace B, the run under test (.sdt)
        b: PathBuf,
        #[command(flatten)]
        judge: JudgeArgs,
        /// Do not capture the mouse (clicks select cells otherwise)
        #[arg(long)]
        no_mouse: bool,
        /// Folder that `e` exports the selected tensors to
        #[arg(long, value_name = "DIR", default_value = ".")]
        export_dir: PathBuf,
        /// Terminal graphics for the image view
        #[arg(long, value_enum, value_name = "PROTOCOL", default_value_t = cli::values::Graphics::Auto)]
        graphics: cli::values::Graphics,
    },
}

/// How two traces are compared and judged: the flags `report` and `diff` share.
#[derive(clap::Args, Debug)]
struct JudgeArgs {
    /// Tolerance for every record, e.g. rel=1e-3,abs=1e-5 (default: per dtype; in diff, `t`
    /// edits it)
    #[arg(long, value_name = "rel=R,abs=A")]
    tol: Option<String>,
    /// Tolerance for keys matching GLOB, e.g. 'unet.*=rel=1e-2' (repeatable; last match wins)
    #[arg(long = "tol-key", value_name = "GLOB=rel=R,abs=A")]
    tol_key: Vec<String>,
    /// A repeat run of A (same machine) or an f64 reference: tolerance = k × its error
    #[arg(long, value_name = "TRACE")]
    noise_floor: Option<PathBuf>,
    /// The k of --noise-floor
    #[arg(long, value_name = "K", default_value_t = 3.0)]
    floor_k: f64,
    /// Key renaming file (`FROM => TO` per line) for traces of other implementations
    #[arg(long, value_name = "FILE")]
    map: Option<PathBuf>,
    /// What fails the verdict (report: exit 1): first-exceed (default), amplify, or image
    /// (the default with --min-psnr/--min-ssim)
    #[arg(long, value_name = "WHAT")]
    fail_on: Option<FailOn>,
    /// Tolerate records that only one trace holds: comma-separated key globs ('vae.*,image'),
    /// or `all`, which also accepts a truncated, interrupted or failed run. Without it any of
    /// these makes the verdict `incomplete` (report: exit 4). The report lists what it allowed.
    #[arg(long, value_name = "KEYS|all")]
    allow_missing: Option<AllowMissing>,
    /// With --fail-on image: the final images pass from this PSNR (dB) on
    #[arg(long, value_name = "DB")]
    min_psnr: Option<f64>,
    /// With --fail-on image: the final images pass from this SSIM (0..1) on
    #[arg(long, value_name = "X")]
    min_ssim: Option<f64>,
    /// Worker threads for payload comparison (0: one per core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
}

impl JudgeArgs {
    fn tolerances(&self) -> Result<TolConfig> {
        Ok(TolConfig::from_flags(
            self.tol.as_deref(),
            &self.tol_key,
            self.floor_k,
        )?)
    }

    /// What decides the verdict besides tolerances; --min-psnr/--min-ssim judge the final image.
    fn criteria(&self) -> Result<Criteria> {
        Ok(Criteria::from_flags(
            self.fail_on,
            self.allow_missing.clone(),
            self.min_psnr,
            self.min_ssim,
        )?)
    }

    fn compare_options(&self) -> Result<CompareOptions> {
        Ok(CompareOptions {
            map: self
                .map
                .as_deref()
                .map(KeyMap::load)
                .transpose()?
                .unwrap_or_default(),
            tol: self.tolerances()?,
            threads: self.threads,
        })
    }
}

const DIFF_HELP: &str = "\
Shows the same analysis as `sdtrace report`. Payload metrics are computed in the background
(progress in the title bar); a trace still being recorded is followed as it grows.
Keys: arrows/hjkl move, Enter drills down, Esc/Backspace back, Tab switches panes, f first
over tolerance, s source, a amplification onset, m metric, t tolerance, / filter, n/N next or
previous failing cell, e export, 1-5 views, ? all keys, q quit. NO_COLOR turns colour off.";

const REPORT_HELP: &str = "\
Records pair by (step, eval, key). A record fails when its relative L2 error exceeds rel AND its
absolute error exceeds abs; default tolerances per dtype: f64 rel=1e-7,abs=1e-7; f32
rel=1.3e-6,abs=1e-5; f16 rel=1e-3,abs=1e-5; bf16 rel=1.6e-2,abs=1e-5; integers exact.
The JSON schema is in docs/REPORT.md.";

/// mimalloc, told to keep freed memory for reuse ([`sdtrace::host::keep_freed_memory`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sdtrace::host::keep_freed_memory();
    let cli = Cli::parse();
    if let Command::Record(args) = &cli.command {
        cli::record::configure_threads(args);
    }
    if let Command::Sweep(args) = &cli.command {
        cli::record::configure_threads(args.record());
    }
    match run(cli) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            cli::exit::of(&e).into()
        }
    }
}

/// An error for the terminal: its chain of causes, each said once (an I/O error's text is
/// often part of the message that wraps it), with control characters escaped (messages quote
/// keys and paths from the inputs; the message's own line breaks stay).
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    let lines: Vec<_> = text.split('\n').map(printable).collect();
    lines.join("\n")
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn run(cli: Cli) -> Result<ExitStatus> {
    match cli.command {
        Command::Diff {
            a,
            b,
            judge,
            no_mouse,
            export_dir,
            graphics,
        } => {
            let compare = judge.compare_options()?;
            let criteria = judge.criteria()?;
            let opts = sdtrace::tui::DiffOptions {
                tol: compare.tol,
                map: compare.map,
                a,
                b,
                floor: judge.noise_floor,
                criteria,
                threads: judge.threads,
                mouse: !no_mouse,
                export_dir,
                poll: std::time::Duration::from_millis(500),
                timings: std::env::var_os("SDTRACE_DIFF_TIMINGS").map(PathBuf::from),
                graphics: graphics.protocol(),
            };
            Ok(sdtrace::tui::run(opts)?)
        }
        Command::Record(args) => cli::record::run(args),
        Command::Sweep(args) => cli::sweep::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Noise(args) => cli::noise::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Info {
            trace,
            verify,
            json,
        } => {
            let r = TraceReader::open(&trace)?;
            let mut info = trace_info(&r);
            if verify {
                info.verify(&r);
            }
            emit(&if json {
                json_text(&info_json(&info))
            } else {
                render_info(&info)
            })?;
            if verify && !info.damage.is_empty() {
                eprintln!(
                    "error: {}: damaged: {} part{} failed {} checks (listed above); the other records are readable",
                    printable(&trace.display().to_string()),
                    info.damage.len(),
                    if info.damage.len() == 1 { "" } else { "s" },
                    if info.damage.len() == 1 {
                        "its"
                    } else {
                        "their"
                    },
                );
                return Ok(ExitStatus::Usage);
            }
            Ok(ExitStatus::Success)
        }
        Command::Ls {
            trace,
            key,
            step,
            json,
        } => {
            let r = TraceReader::open(&trace)?;
            let listing = ls_rows(&r, &LsFilter { key, step });
            emit(&if json {
                json_text(&ls_json(&listing.rows))
            } else {
                render_ls(&listing.rows)
            })?;
            let damaged: Vec<String> = r
                .damage()
                .iter()
                .map(|d| format!("byte offset {}: {}", d.offset, d.what))
                .chain(listing.damaged)
                .collect();
            if !damaged.is_empty() {
                eprintln!(
                    "error: {}: damaged: {} part{} failed {} checks and {} not listed; the {} listed records check:",
                    printable(&trace.display().to_string()),
                    damaged.len(),
                    if damaged.len() == 1 { "" } else { "s" },
                    if damaged.len() == 1 { "its" } else { "their" },
                    if damaged.len() == 1 { "is" } else { "are" },
                    listing.rows.len()
                );
                for d in &damaged {
                    eprintln!("  {}", printable(d));
                }
                return Ok(ExitStatus::Usage);
            }
            Ok(ExitStatus::Success)
        }
        Command::Synth {
            out,
            size,
            seed,
            format,
            dtype,
        } => {
            match format {
                cli::values::SynthFormat::Ldm => {
                    sdtrace::model::synth::write_checkpoint_file(&out, size, seed, dtype)?
                }
                cli::values::SynthFormat::Diffusers => {
                    sdtrace::model::synth::write_model(&out, size, seed)?
                }
            }
            eprintln!("wrote a synthetic {size:?} model to {}", out.display());
            Ok(ExitStatus::Success)
        }
        Command::Export {
            trace,
            key,
            out,
            step,
            eval,
            output,
            index,
        } => {
            let Some(output) = out.or(output) else {
                bail!("export needs an output file: sdtrace export TRACE KEY OUT");
            };
            export(&trace, &key, step, eval, &output, index)?;
            Ok(ExitStatus::Success)
        }
        Command::Report {
            a,
            b,
            format,
            output,
            judge: flags,
            save,
            from,
            matrix,
        } => {
            let format = Format::from(format);
            let tols = flags.tolerances()?;
            let criteria = flags.criteria()?;
            if matrix {
                let (Some(a), Some(b)) = (&a, &b) else {
                    bail!("report --matrix needs two folders: DIR_A DIR_B");
                };
                let m = sdtrace::report::matrix::matrix(
                    a,
                    b,
                    &flags.compare_options()?,
                    &tols,
                    &criteria,
                )?;
                let text = match format {
                    Format::Text => sdtrace::report::matrix::render_matrix_text(&m),
                    Format::Json => sdtrace::report::matrix::render_matrix_json(&m),
                    Format::Markdown => sdtrace::report::matrix::render_matrix_markdown(&m),
                    _ => bail!("report --matrix writes text, json or markdown"),
                };
                match &output {
                    Some(path) => write_atomic(path, text.as_bytes())
                        .with_context(|| format!("-o {}", path.display()))?,
                    None => emit(&text)?,
                }
                return Ok(m.status());
            }
            let comparison = match (&from, &a, &b) {
                (Some(f), _, _) => Comparison::load(f)?,
                (None, Some(a), Some(b)) => compare_paths(
                    a,
                    b,
                    flags.noise_floor.as_deref(),
                    &flags.compare_options()?,
                )?,
                _ => bail!("report needs two traces (A B) or --from FILE"),
            };
            if let Some(path) = &save {
                write_atomic(path, comparison.to_json().as_bytes())
                    .with_context(|| format!("--save {}", path.display()))?;
            }
            let judgement = judge(&comparison, &tols, &criteria);
            let extras = match (format, &from, &a, &b) {
                (Format::Html, None, Some(a), Some(b)) => ReportExtras {
                    images: report_images(a, b),
                    noise: noise_picture_record(&comparison, &judgement)
                        .and_then(|i| report_noise(a, b, &comparison.records[i])),
                },
                _ => ReportExtras::default(),
            };
            let text = render(format, &comparison, &judgement, &extras);
            match &output {
                Some(path) => {
                    write_atomic(path, text.as_bytes())
                        .with_context(|| format!("-o {}", path.display()))?;
                    eprintln!(
                        "{}: {} (exit {}); report written to {}",
                        judgement.verdict.class.name(),
                        if judgement.verdict.passed {
                            "within tolerance"
                        } else {
                            "see the report"
                        },
                        judgement.verdict.exit_code,
                        path.display()
                    );
                }
                None => emit(&text)?,
            }
            Ok(judgement.verdict.status())
        }
    }
}

/// Largest image payload the HTML report reads per trace.
const REPORT_IMAGE_LIMIT: u64 = 64 << 20;

/// The last `image` record of a trace, when it was kept in full.
fn final_image(path: &Path) -> Result<Option<ImageTensor>> {
    let r = TraceReader::open(path)?;
    let Some(entry) = r.entries().iter().rev().find(|e| &*e.key == "image") else {
        return Ok(None);
    };
    let meta = r.read_meta(entry)?;
    match meta.payload {
        None => return Ok(None),
        Some(p) if p.raw_len > REPORT_IMAGE_LIMIT => {
            bail!(
                "{}: the image is {} bytes, over the report's {REPORT_IMAGE_LIMIT}",
                path.display(),
                p.raw_len
            )
        }
        Some(_) => {}
    }
    let Some(data) = r.read_payload(&meta)? else {
        return Ok(None);
    };
    Ok(Some(
        ImageTensor::from_record(meta.dtype, &meta.shape, &data)
            .with_context(|| format!("{}: record 'image'", path.display()))?,
    ))
}

/// Both traces' final images for the HTML report; a problem is a note, not an error.
fn report_images(a: &Path, b: &Path) -> Option<ReportImages> {
    let result = (|| -> Result<Option<ReportImages>> {
        let (Some(ia), Some(ib)) = (final_image(a)?, final_image(b)?) else {
            return Ok(None);
        };
        Ok(Some(
            ReportImages::from_records(&ia, &ib).map_err(anyhow::Error::msg)?,
        ))
    })();
    result.unwrap_or_else(|e| {
        eprintln!("note: the report shows no final images: {e:#}");
        None
    })
}

/// Largest noise payload the HTML report reads per trace (the noise diagnosis' limit).
const REPORT_NOISE_LIMIT: u64 = 16 << 20;

/// Both traces' payloads of the noise record `rec` (found by execution order, so key maps do
/// not matter) for the HTML report's noise picture; a problem is a note, not an error.
fn report_noise(a: &Path, b: &Path, rec: &PairRecord) -> Option<ReportNoise> {
    let read = |path: &Path, order: u64| -> Result<(sdtrace::DType, Vec<u64>, Vec<u8>)> {
        let r = TraceReader::open(path)?;
        let entry = r
            .entries()
            .iter()
            .find(|e| e.order == order)
            .with_context(|| format!("{}: no record {}", path.display(), rec.label()))?;
        let meta = r.read_meta(entry)?;
        match meta.payload {
            None => bail!(
                "{}: {} was recorded without its payload",
                path.display(),
                rec.label()
            ),
            Some(p) if p.raw_len > REPORT_NOISE_LIMIT => bail!(
                "{}: {} is {} bytes, over the report's {REPORT_NOISE_LIMIT}",
                path.display(),
                rec.label(),
                p.raw_len
            ),
            Some(_) => {}
        }
        let data = r
            .read_payload(&meta)?
            .with_context(|| format!("{}: {} has no payload", path.display(), rec.label()))?;
        Ok((meta.dtype, meta.shape.clone(), data))
    };
    let result = (|| -> Result<ReportNoise> {
        let (da, sa, pa) = read(a, rec.order_a)?;
        let (db, sb, pb) = read(b, rec.order_b)?;
        Ok(ReportNoise::from_payloads(
            &rec.label(),
            (da, &sa, &pa),
            (db, &sb, &pb),
        )?)
    })();
    result
        .map_err(|e| eprintln!("note: the report shows no noise picture: {e:#}"))
        .ok()
}

fn export(
    trace: &Path,
    key: &str,
    step: Option<u32>,
    eval: u32,
    output: &Path,
    index: usize,
) -> Result<()> {
    let format = ExportFormat::from_path(output)?;
    if index != 0 && format != ExportFormat::Png {
        bail!(
            "--index {index}: only a .png export picks one batch item; .npy and .safetensors hold the whole tensor"
        );
    }
    let r = TraceReader::open(trace)?;
    let Some(entry) = r.find(key, step, eval) else {
        let steps: Vec<String> = r
            .entries()
            .iter()
            .filter(|e| &*e.key == key)
            .map(|e| match e.step {
                Some(s) => format!("--step {s} --eval {}", e.eval),
                None => "(no --step)".into(),
            })
            .collect();
        let at = step.map_or("outside the sampling loop".into(), |s| {
            format!("at step {s} eval {eval}")
        });
        if steps.is_empty() {
            bail!(
                "{}: no record with key '{key}'; list the keys with `sdtrace ls {}`",
                trace.display(),
                trace.display()
            );
        }
        let shown = steps.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        bail!(
            "{}: '{key}' was not recorded {at}; it was recorded with {shown}{}",
            trace.display(),
            if steps.len() > 8 { ", …" } else { "" }
        );
    };
    let meta = r.read_meta(entry)?;
    let Some(data) = r.read_payload(&meta)? else {
        bail!(
            "{}: '{}' was recorded at fidelity '{}', which keeps no tensor; record it again with a capture rule such as '{}=full' to export it",
            trace.display(),
            meta.id(),
            meta.fidelity,
            key
        );
    };
    let bytes = match format {
        ExportFormat::Npy => to_npy(key, meta.dtype, &meta.shape, &data)?,
        ExportFormat::Safetensors => {
            let mut md = vec![
                ("sdtrace.trace".to_string(), trace.display().to_string()),
                ("sdtrace.eval".to_string(), eval.to_string()),
            ];
            if let Some(s) = step {
                md.push(("sdtrace.step".to_string(), s.to_string()));
            }
            to_safetensors(key, meta.dtype, &meta.shape, &data, &md)?
        }
        ExportFormat::Png => {
            let png = to_png(
                key,
                meta.dtype,
                &meta.shape,
                &data,
                index,
                &r.header().settings,
            )
            .with_context(|| format!("{}: record '{}'", trace.display(), meta.id()))?;
            write_atomic(output, &png.bytes)?;
            for note in &png.notes {
                eprintln!("note: {note}");
            }
            eprintln!(
                "wrote {} ({}×{} RGB, batch item {index}{}, {} bytes)",
                output.display(),
                png.width,
                png.height,
                if png.parameters.is_some() {
                    ", with A1111 parameters"
                } else {
                    ""
                },
                png.bytes.len()
            );
            return Ok(());
        }
    };
    write_atomic(output, &bytes)?;
    eprintln!(
        "wrote {} ({} {:?}, {} bytes)",
        output.display(),
        meta.dtype,
        meta.shape,
        bytes.len()
    );
    Ok(())
}
