//! `sdtrace demo`: the original report's case in miniature, offline, in one command.
//!
//! Builds (or reuses) the tiny synthetic model, then records four runs with the same seed: the
//! same prompt on an emulated GTX 1070 and an emulated Tesla T4 at 704×704 (one step), the first
//! square size at which the two cards' PyTorch CUDA noise differs (their RNG waves are 30 720
//! and 40 960 elements; the latent has 30 976, 696×696's 30 276), and an f32/f16 pair with
//! identical noise at 128×128 (eight steps). It then judges both pairs as `sdtrace report`
//! does, prints the verdicts and how to look further. Progress goes to stderr: one line per
//! recording redrawn in place on a terminal, plain lines otherwise (logs, CI). `--check` makes the exit
//! code say whether the verdicts are the expected ones (noise/RNG for the card pair, numeric
//! drift with a named source layer for the precision pair); CI runs it so.

use anyhow::{Context, Result};
use clap::Args;
use sdtrace::analysis::noise::square_boundary;
use sdtrace::analysis::{CompareOptions, Criteria, TolConfig, VerdictClass, compare_paths, judge};
use sdtrace::exit::ExitStatus;
use sdtrace::model::synth::{SynthSize, write_model};
use sdtrace::pipeline::{DeviceChoice, ModelDType, Monitor, RecordSpec, record};
use sdtrace::probe::Policy;
use sdtrace::sampling::rng::presets;
use sdtrace::sampling::{RngSpec, SamplerKind};
use sdtrace::text::PromptSyntax;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEMO_HELP: &str = "\
Takes about a minute on two cores after the build (the two 704x704 recordings are most of it).
The four traces stay in --dir for `sdtrace diff` and `sdtrace report`.";

/// Flags of `sdtrace demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the model and the four traces (created; reused by later runs)
    #[arg(long, value_name = "DIR", default_value = "sdtrace-demo")]
    dir: PathBuf,
    /// Exit 1 unless both verdicts are the expected ones (for CI)
    #[arg(long)]
    check: bool,
}

/// The prompt and seed of the original report's experiment.
const PROMPT: &str = "a portrait of an old sea captain, (oil painting:1.2), dramatic light";
/// The precision pair's prompt, read with diffusers' plain syntax: with random weights the
/// conditioning's mean is near zero (subnormal in f16), so A1111's emphasis mean restoration
/// would magnify the f16 rounding 18–75× at `text.cond`, a trait of the synthetic model rather
/// than of real ones.
const PLAIN_PROMPT: &str = "a portrait of an old sea captain, oil painting, dramatic light";
const NEGATIVE: &str = "blurry, lowres";
const SEED: u64 = 1_744_694_513;
/// The card pair: `--rng torch-cuda:NAME` presets.
const CARD_A: &str = "gtx1070";
const CARD_B: &str = "t4";
/// The card pair's image side: the first square size at which their noise differs
/// ([`card_boundary`]; a test keeps the two equal).
const CARD_SIDE: u32 = 704;

/// The largest square size at which the card pair's CUDA noise agrees, and the first at which
/// it differs, from the cards' RNG waves.
fn card_boundary() -> Result<(u64, u64)> {
    let wave = |name: &str| {
        presets::find(name)
            .map(|p| p.wave())
            .with_context(|| format!("no GPU preset '{name}'"))
    };
    square_boundary(wave(CARD_A)?, wave(CARD_B)?)
        .with_context(|| format!("{CARD_A} and {CARD_B} have the same RNG wave"))
}

struct Run {
    file: &'static str,
    what: &'static str,
    rng: &'static str,
    side: u32,
    dtype: ModelDType,
    steps: u32,
    prompt: &'static str,
    syntax: PromptSyntax,
}

/// One step at 704×704: the tiny model's full-resolution attention over 7 744 latent pixels
/// makes each UNet evaluation the bulk of the demo's time, and one step already carries the
/// noise difference to the image.
const CARD_STEPS: u32 = 1;
/// Enough steps at 128×128 for the error to be carried and amplified over the sampler.
const PRECISION_STEPS: u32 = 8;

const RUNS: [Run; 4] = [
    Run {
        file: "gtx1070.sdt",
        what: "emulated GTX 1070 (15 SMs x 2048 threads), 704x704, f32",
        rng: "torch-cuda:gtx1070",
        side: CARD_SIDE,
        dtype: ModelDType::F32,
        steps: CARD_STEPS,
        prompt: PROMPT,
        syntax: PromptSyntax::A1111,
    },
    Run {
        file: "t4.sdt",
        what: "emulated Tesla T4 (40 SMs x 1024 threads), 704x704, f32",
        rng: "torch-cuda:t4",
        side: CARD_SIDE,
        dtype: ModelDType::F32,
        steps: CARD_STEPS,
        prompt: PROMPT,
        syntax: PromptSyntax::A1111,
    },
    Run {
        file: "f32.sdt",
        what: "emulated GTX 1070, 128x128, f32",
        rng: "torch-cuda:gtx1070",
        side: 128,
        dtype: ModelDType::F32,
        steps: PRECISION_STEPS,
        prompt: PLAIN_PROMPT,
        syntax: PromptSyntax::Plain,
    },
    Run {
        file: "f16.sdt",
        what: "emulated GTX 1070, 128x128, f16",
        rng: "torch-cuda:gtx1070",
        side: 128,
        dtype: ModelDType::F16,
        steps: PRECISION_STEPS,
        prompt: PLAIN_PROMPT,
        syntax: PromptSyntax::Plain,
    },
];

/// Progress of one recording on stderr: one line redrawn in place (`\r`) on a terminal, a plain
/// line per step otherwise, so logs hold no carriage returns.
struct Progress<W: Write> {
    out: W,
    terminal: bool,
    label: String,
    started: Instant,
}

impl<W: Write> Progress<W> {
    fn new(out: W, terminal: bool, label: String) -> Self {
        Progress {
            out,
            terminal,
            label,
            started: Instant::now(),
        }
    }

    /// The recording is done: finish the line with where it went.
    fn done(&mut self, out: &Path) {
        let _ = if self.terminal {
            writeln!(self.out, " -> {}", out.display())
        } else {
            writeln!(self.out, "  {} -> {}", self.label, out.display())
        };
    }
}

impl<W: Write> Monitor for Progress<W> {
    fn step(&mut self, step: u32, steps: u32, _took: Duration) {
        let (lead, end) = if self.terminal {
            ("\r", "")
        } else {
            ("", "\n")
        };
        let _ = write!(
            self.out,
            "{lead}  {}: step {}/{steps} ({:.1} s){end}",
            self.label,
            step + 1,
            self.started.elapsed().as_secs_f64()
        );
        let _ = self.out.flush();
    }
}

fn spec(model: &Path, run: &Run) -> Result<RecordSpec> {
    Ok(RecordSpec {
        model: model.to_path_buf(),
        prompt: run.prompt.into(),
        negative: NEGATIVE.into(),
        syntax: run.syntax,
        steps: run.steps,
        sampler: SamplerKind::DpmPp2mKarras,
        sampler_impl: Default::default(),
        cfg_scale: 7.0,
        seed: SEED,
        rng: run
            .rng
            .parse::<RngSpec>()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ensd: 0,
        width: run.side,
        height: run.side,
        clip_skip: 1,
        device: DeviceChoice::Cpu,
        dtype: run.dtype,
        gemm_reduced_precision: Default::default(),
        // One batch·head row at a time keeps the 704x704 attention scores at 240 MB.
        attention: sdtrace::model::attention::AttentionImpl::Sliced(1),
        threads: Some(sdtrace::pipeline::compute_threads() as u32),
        policy: Policy::from_spec("light")?,
        capture: "light".into(),
        perturb: Vec::new(),
        stop_on_nan: false,
        max_trace_size: 2 << 30,
        model_options: Default::default(),
        a1111: Default::default(),
        size_conditioning: Default::default(),
    })
}

pub fn run(args: DemoArgs) -> Result<ExitStatus> {
    let t0 = Instant::now();
    let model = args.dir.join("model");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("--dir {}: cannot create it", args.dir.display()))?;
    if model.join("model_index.json").is_file() {
        eprintln!("using the tiny synthetic model in {}", model.display());
    } else {
        eprintln!("writing a tiny synthetic model to {} ...", model.display());
        write_model(&model, SynthSize::Tiny, 0)?;
    }
    let (agree, differ) = card_boundary()?;
    eprintln!("recording the same seed {SEED} four times:");
    let terminal = std::io::stderr().is_terminal();
    for (i, run) in RUNS.iter().enumerate() {
        let out = args.dir.join(run.file);
        let label = format!("[{}/4] {}", i + 1, run.what);
        let mut progress = Progress::new(std::io::stderr(), terminal, label);
        record(&spec(&model, run)?, &out, &mut progress)
            .with_context(|| format!("recording {}", out.display()))?;
        progress.done(&out);
    }

    let pairs = [
        (
            "The card pair (same settings, different GPUs)",
            "gtx1070.sdt",
            "t4.sdt",
            VerdictClass::NoiseRng,
        ),
        (
            "The precision pair (same noise, f32 vs f16)",
            "f32.sdt",
            "f16.sdt",
            VerdictClass::NumericDrift,
        ),
    ];
    let mut as_expected = true;
    for (title, a, b, expect) in pairs {
        let (a, b) = (args.dir.join(a), args.dir.join(b));
        let c = compare_paths(&a, &b, None, &CompareOptions::default())?;
        let j = judge(&c, &TolConfig::default(), &Criteria::default());
        let ok = j.verdict.class == expect
            && (expect != VerdictClass::NumericDrift || j.source.is_some());
        as_expected &= ok;
        println!("\n{title}: {}", j.verdict.class.name());
        println!("{}", wrap(&j.verdict.summary, 96));
        println!(
            "  look closer: sdtrace diff {} {}",
            a.display(),
            b.display()
        );
        println!(
            "               sdtrace report {} {} --format html -o report.html",
            a.display(),
            b.display()
        );
        if !ok {
            println!("  (expected {})", expect.name());
        }
    }
    println!(
        "\ndone in {:.0} s. The card pair is the original report's case: the two cards' CUDA \
         noise agrees up to {agree}x{agree} and differs from {differ}x{differ} on, so above \
         {agree}x{agree} no setting makes their images agree; the precision pair shows how small \
         numeric differences are traced to the layer that creates them.",
        t0.elapsed().as_secs_f64()
    );
    Ok(if args.check && !as_expected {
        ExitStatus::Diverged
    } else {
        ExitStatus::Success
    })
}

/// Wrap `text` at `width` columns, indented by two spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from(" ");
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > width {
            out += &line;
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line += word;
    }
    out + &line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_pair_is_recorded_at_its_boundary() {
        assert_eq!(card_boundary().unwrap(), (696, 704));
        assert_eq!(card_boundary().unwrap().1, CARD_SIDE as u64);
        let cards: Vec<_> = RUNS.iter().filter(|r| r.side == CARD_SIDE).collect();
        assert_eq!(cards.len(), 2);
        assert_eq!(cards[0].rng, format!("torch-cuda:{CARD_A}"));
        assert_eq!(cards[1].rng, format!("torch-cuda:{CARD_B}"));
        for r in cards {
            assert!(
                r.what.contains(&format!("{CARD_SIDE}x{CARD_SIDE}")),
                "{}",
                r.what
            );
        }
    }

    fn progress_text(terminal: bool) -> String {
        let mut p = Progress::new(Vec::new(), terminal, "[1/4] run".into());
        p.step(0, 2, Duration::ZERO);
        p.step(1, 2, Duration::ZERO);
        p.done(Path::new("x.sdt"));
        String::from_utf8(p.out).unwrap()
    }

    #[test]
    fn progress_is_plain_lines_off_a_terminal() {
        let plain = progress_text(false);
        assert!(
            !plain.contains('\r') && !plain.contains('\x1b'),
            "{plain:?}"
        );
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3, "{plain:?}");
        assert!(lines[0].starts_with("  [1/4] run: step 1/2 ("));
        assert!(lines[1].starts_with("  [1/4] run: step 2/2 ("));
        assert_eq!(lines[2], "  [1/4] run -> x.sdt");
        // On a terminal the line is redrawn in place and ends once.
        let tty = progress_text(true);
        assert_eq!(tty.matches('\r').count(), 2);
        assert_eq!(tty.matches('\n').count(), 1);
    }
}
