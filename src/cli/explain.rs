//! `sdtrace explain A.png B.png`: the generation parameters of two images, every setting that
//! differs, and whether their noise can agree ([`sdtrace::explain`]); reading the files and the
//! exit code here.

use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::exit::ExitStatus;
use sdtrace::explain::{explain, generation_of_png, render};
use sdtrace::pipeline::human;
use sdtrace::sampling::RngSpec;
use std::path::{Path, PathBuf};

pub const EXPLAIN_HELP: &str = "\
Reads the webui's and Forge's 'parameters' text (and sdtrace's own PNGs), or ComfyUI's 'prompt'
(else 'workflow') text. An image without an RNG field was made with the webui's default source,
the GPU, whose noise depends on the card: name the cards with --cards (A's, then B's) to get
the exact sizes; without them a table of common cards is shown. ComfyUI draws noise on the CPU.

Examples:
  sdtrace explain gtx1070.png t4.png --cards gtx1070,t4
  sdtrace explain webui.png comfy.png";

/// Flags of `sdtrace explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The first image (PNG)
    a: PathBuf,
    /// The second image (PNG)
    b: PathBuf,
    /// The GPUs that made A and B, for images made with the webui's GPU source: two card names
    /// (A,B), e.g. gtx1070,t4; a card given as SMS,THREADS needs ';' between the two
    /// (15,2048;40,1024)
    #[arg(long, value_name = "A,B")]
    cards: Option<String>,
}

/// Largest image read.
const MAX_PNG: u64 = 256 << 20;

/// `--cards A,B` (or `A;B` when a card is SMS,THREADS).
pub fn parse_cards(s: &str) -> Result<(RngSpec, RngSpec)> {
    let parts: Vec<&str> = if s.contains(';') {
        s.split(';').collect()
    } else {
        s.split(',').collect()
    };
    let [a, b] = parts.as_slice() else {
        bail!(
            "--cards '{s}': give two cards, A's then B's: --cards gtx1070,t4 (names), or --cards '15,2048;40,1024' (SMS,THREADS)"
        );
    };
    Ok((
        RngSpec::parse_card("--cards", a)?,
        RngSpec::parse_card("--cards", b)?,
    ))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    if len > MAX_PNG {
        bail!(
            "{}: {} is larger than the {} explain reads; is it the right file?",
            path.display(),
            human(len),
            human(MAX_PNG)
        );
    }
    sdtrace::files::require_regular(path)
        .and_then(|_| std::fs::read(path))
        .with_context(|| path.display().to_string())
}

pub fn run(args: ExplainArgs) -> Result<ExitStatus> {
    let cards = args.cards.as_deref().map(parse_cards).transpose()?;
    let gen_of = |p: &Path| -> Result<_> {
        generation_of_png(&read(p)?).with_context(|| p.display().to_string())
    };
    let (a, b) = (gen_of(&args.a)?, gen_of(&args.b)?);
    let e = explain(&a, &b, cards.as_ref());
    super::emit(&render(
        &e,
        &args.a.display().to_string(),
        &args.b.display().to_string(),
    ))?;
    Ok(e.status())
}
