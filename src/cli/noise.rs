//! `sdtrace noise`: the initial latent noise of a run without any model — written to a file
//! (`--rng R --seed S --size WxH -o FILE`), or compared between generators over a range of
//! sizes (`--compare gtx1070,t4,p2000,cpu --sizes 384..1024/64`), which reproduces "same seed,
//! different GPU, different image above 512×512" from first principles.
//!
//! The noise of a W×H run is `[B, 4, H/8, W/8]` drawn from the generator seeded with S, as
//! `torch.manual_seed(S); torch.randn(shape)` (one draw for the batch; `--per-image-seeds`
//! draws image i alone with seed S + i, as A1111 does). A compared pair is `identical` (bit for
//! bit), `same values` (every element within the noise diagnosis's agreement tolerance: the same
//! draws with other math) or `differs from flat index K` (the first K elements agree).

use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::DType;
use sdtrace::analysis::noise::square_sizes;
use sdtrace::analysis::noise::{AGREE_ABS, AGREE_REL, NoiseClass, NoiseDiagnosis, diagnose};
use sdtrace::exit::ExitStatus;
use sdtrace::export::{to_npy, to_safetensors, write_atomic};
use sdtrace::pipeline::{DeviceChoice, parse_size, parse_sizes};
use sdtrace::sampling::rng::agree::{Agreement, agreement};
use sdtrace::sampling::{NoiseSource, RngSpec};
use serde_json::json;
use std::path::{Path, PathBuf};

const NOISE_TEXT: &str = "\
Generators (--rng, and the entries of --compare): sdtrace, torch-cpu (or cpu),
torch-cuda:SMS[,THREADS_PER_SM], torch-cuda:CARD or CARD alone, a1111-nv (or nv), file:PATH,
device (needs --device cuda or metal).

--compare prints one row per size and pair, then one line per pair: from the generators'
definitions where they say it (\"gtx1070 vs t4: agree up to 696×696, differ from 704×704\",
\"cpu vs gtx1070: differ at every size (different generators)\"), else from the sizes compared.

Examples:
  sdtrace noise --rng torch-cuda:gtx1070 --seed 1744694513 --size 768x768 -o x_T.npy
  sdtrace noise --compare gtx1070,t4,p2000,cpu --seed 1744694513 --sizes 384..1024/64";

/// The help text after the flags: the generators, the `--sizes` grammar, examples.
pub fn help() -> String {
    let (generators, rest) = NOISE_TEXT.split_once("\n\n").unwrap_or((NOISE_TEXT, ""));
    format!(
        "{generators}\n\n{}\n\n{rest}",
        sdtrace::pipeline::SIZES_HELP
    )
}

/// Most noise elements one file may hold (1 GiB of f32).
const MAX_ELEMENTS: u64 = 1 << 28;

/// Most sizes one `--sizes` may list.
const MAX_SIZES: usize = 1000;

/// Flags of `sdtrace noise`.
#[derive(Args, Debug)]
pub struct NoiseArgs {
    /// Noise generator (as `record --rng`)
    #[arg(long, default_value = "sdtrace", value_name = "RNG", value_parser = super::record::parse_rng)]
    rng: RngSpec,
    /// Seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size WIDTHxHEIGHT, multiples of 8: the noise is [BATCH, 4, HEIGHT/8, WIDTH/8]
    #[arg(long, default_value = "512x512", value_parser = parse_size)]
    size: (u32, u32),
    /// Batch size (one draw of the whole batch, as torch.randn((B, 4, h, w)))
    #[arg(long, default_value_t = 1, value_name = "B")]
    batch: u32,
    /// Draw image i of the batch alone with seed + i, as A1111 does
    #[arg(long)]
    per_image_seeds: bool,
    /// Output file: NAME.npy or NAME.safetensors (tensor 'noise.initial', usable as --rng file:NAME)
    #[arg(short, long, value_name = "FILE", required_unless_present = "compare")]
    output: Option<PathBuf>,
    /// Compare generators instead: comma-separated --rng values or card names, e.g. gtx1070,t4,cpu
    #[arg(long, value_name = "A,B,...", conflicts_with = "output")]
    compare: Option<String>,
    /// Sizes to compare, e.g. 384..1024/64 or 512,576,832x640 (see below)
    #[arg(long, value_name = "SIZES", default_value = "384..1024/64")]
    sizes: String,
    /// Print the comparison as JSON
    #[arg(long, requires = "compare")]
    json: bool,
    /// Device of --rng device: cuda, cuda:N or metal
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// Parse `--compare`: at least two generators.
pub fn parse_sources(s: &str) -> Result<Vec<RngSpec>, String> {
    let list = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| RngSpec::parse_as("--compare", t).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() < 2 {
        return Err(format!(
            "--compare '{s}': name at least two generators, e.g. gtx1070,t4,cpu"
        ));
    }
    Ok(list)
}

/// Drawn noise: its shape, values, and the generator it came from (of image 0).
pub type Drawn = (Vec<usize>, Vec<f32>, Box<dyn NoiseSource>);

/// The noise a run of `width`×`height` with `batch` images would start from.
pub fn draw(
    spec: &RngSpec,
    seed: u64,
    (width, height): (u32, u32),
    batch: u32,
    per_image_seeds: bool,
    device: &candle_core::Device,
) -> Result<Drawn> {
    let (h, w) = (height as usize / 8, width as usize / 8);
    let batch = batch.max(1) as usize;
    let elements = (batch as u64) * 4 * (h as u64) * (w as u64);
    if elements > MAX_ELEMENTS {
        bail!(
            "--batch {batch} at {width}x{height} is {elements} noise elements, more than the {MAX_ELEMENTS} `sdtrace noise` writes; use a smaller batch"
        );
    }
    if per_image_seeds {
        let mut data = Vec::new();
        let mut first = None;
        for i in 0..batch as u64 {
            let s = seed
                .checked_add(i)
                .context("--per-image-seeds: seed + image index overflows")?;
            let mut g = spec.build(s, device)?;
            data.extend(g.randn(&[1, 4, h, w])?);
            first.get_or_insert(g);
        }
        let g = first.context("--batch must be at least 1")?;
        return Ok((vec![batch, 4, h, w], data, g));
    }
    let shape = vec![batch, 4, h, w];
    let mut g = spec.build(seed, device)?;
    let data = g.randn(&shape)?;
    Ok((shape, data, g))
}

/// One compared pair at one size.
#[derive(Clone, Debug)]
pub struct PairRow {
    pub size: (u32, u32),
    pub a: String,
    pub b: String,
    pub diagnosis: NoiseDiagnosis,
}

impl PairRow {
    /// `identical`, `same` or `differs`.
    pub fn result(&self) -> &'static str {
        match self.diagnosis.class {
            NoiseClass::Identical => "identical",
            c if c.is_generator_difference() || c == NoiseClass::ShapeMismatch => "differs",
            _ => "same",
        }
    }

    /// The first flat index that differs beyond tolerance, for pairs that differ.
    pub fn differs_from(&self) -> Option<u64> {
        (self.result() == "differs").then(|| self.diagnosis.agree_prefix.unwrap_or(0))
    }

    fn text(&self) -> String {
        let d = &self.diagnosis;
        match self.result() {
            "identical" => "identical".into(),
            "same" => format!(
                "same values (max |a-b| {:.1e}, not bit-identical)",
                d.max_abs
            ),
            _ => format!(
                "differs from flat index {} ({:.1} % of elements) [{}]",
                self.differs_from().unwrap_or(0),
                100.0 * d.differing as f64 / d.count.max(1) as f64,
                d.class.name()
            ),
        }
    }
}

/// Every pair of `sources` at every size, drawing one image's noise with `seed`.
pub fn compare_table(
    sources: &[RngSpec],
    seed: u64,
    sizes: &[(u32, u32)],
    device: &candle_core::Device,
) -> Result<Vec<PairRow>> {
    let mut rows = Vec::new();
    for &size in sizes {
        let drawn = sources
            .iter()
            .map(|s| {
                let (shape, v, _) = draw(s, seed, size, 1, false, device)
                    .with_context(|| format!("--compare {}", s.label()))?;
                Ok((
                    s.label(),
                    shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                    v,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, (la, sa, va)) in drawn.iter().enumerate() {
            for (lb, sb, vb) in &drawn[i + 1..] {
                rows.push(PairRow {
                    size,
                    a: la.clone(),
                    b: lb.clone(),
                    diagnosis: diagnose(sa, va, sb, vb),
                });
            }
        }
    }
    Ok(rows)
}

/// The one-line conclusion for the pair `a`, `b` of a comparison: from the generators'
/// definitions where they say it (the exact square sizes), else from the sizes compared.
pub fn conclusion(a: &RngSpec, b: &RngSpec, rows: &[PairRow]) -> String {
    let (la, lb) = (a.label(), b.label());
    let sq = |n: u64| format!("{n}×{n}");
    let text = match agreement(a, b) {
        Agreement::Always { exact: true } => match (a.wave(), b.wave()) {
            (Some(w), Some(_)) if a != b => format!(
                "agree at every size (the same wave of {w} elements: the same grid, so the same layout)"
            ),
            _ => "agree at every size (the same generator)".into(),
        },
        Agreement::Always { exact: false } => "the same values at every size".into(),
        Agreement::UpTo { elements, exact } => {
            let (agree, differ) = square_sizes(elements);
            format!(
                "{} up to {}, differ from {} (the first {elements} elements agree{})",
                if exact { "agree" } else { "the same values" },
                sq(agree),
                sq(differ),
                if exact {
                    ""
                } else {
                    "; NV computes them with numpy's math, so not bit for bit"
                }
            )
        }
        Agreement::Never => "differ at every size (different generators)".into(),
        Agreement::Unknown => {
            let pair: Vec<&PairRow> = rows
                .iter()
                .filter(|r| (r.a == la && r.b == lb) || (r.a == lb && r.b == la))
                .collect();
            let size = |r: &PairRow| format!("{}×{}", r.size.0, r.size.1);
            let first_diff = pair.iter().position(|r| r.result() == "differs");
            match first_diff {
                None => "agree at every size compared".into(),
                Some(0) => "differ at every size compared".into(),
                Some(i) if pair[i..].iter().all(|r| r.result() == "differs") => format!(
                    "agree up to {}, differ from {} (of the sizes compared)",
                    size(pair[i - 1]),
                    size(pair[i])
                ),
                Some(i) => format!(
                    "agree at some sizes and differ at others; first differ at {}",
                    size(pair[i])
                ),
            }
        }
    };
    format!("{la} vs {lb}: {text}")
}

fn render(rows: &[PairRow], seed: u64) -> String {
    let mut s = format!(
        "noise of seed {seed}, shape [1, 4, H/8, W/8] per size; a pair agrees where elements are within {AGREE_ABS:.0e} + {AGREE_REL:.0e}·|b|\n{:<11} {:>9}  {:<24} result\n",
        "size", "elements", "pair"
    );
    for r in rows {
        s += &format!(
            "{:<11} {:>9}  {:<24} {}\n",
            format!("{}x{}", r.size.0, r.size.1),
            r.diagnosis.count,
            format!("{} / {}", r.a, r.b),
            r.text()
        );
    }
    s
}

fn rows_json(rows: &[PairRow], seed: u64) -> serde_json::Value {
    json!({
        "seed": seed,
        "agree_abs": AGREE_ABS,
        "agree_rel": AGREE_REL,
        "pairs": rows.iter().map(|r| json!({
            "size": format!("{}x{}", r.size.0, r.size.1),
            "width": r.size.0,
            "height": r.size.1,
            "elements": r.diagnosis.count,
            "a": r.a,
            "b": r.b,
            "result": r.result(),
            "differs_from": r.differs_from(),
            "differing_fraction": r.diagnosis.differing as f64 / r.diagnosis.count.max(1) as f64,
            "diagnosis": r.diagnosis,
        })).collect::<Vec<_>>(),
    })
}

fn write(path: &Path, shape: &[usize], data: &[f32], g: &dyn NoiseSource, seed: u64) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let out = match ext.as_deref() {
        Some("npy") => to_npy("noise.initial", DType::F32, &dims, &bytes)?,
        Some("safetensors") => to_safetensors(
            "noise.initial",
            DType::F32,
            &dims,
            &bytes,
            &[
                ("sdtrace.rng".into(), g.spec()),
                ("sdtrace.seed".into(), seed.to_string()),
                ("sdtrace.rng_params".into(), g.params().to_string()),
            ],
        )?,
        _ => bail!(
            "-o {}: the noise is written to NAME.npy or NAME.safetensors",
            path.display()
        ),
    };
    write_atomic(path, &out).with_context(|| format!("-o {}", path.display()))
}

pub fn run(args: NoiseArgs) -> Result<ExitStatus> {
    let device = args.device.open()?;
    if let Some(list) = &args.compare {
        let sources = parse_sources(list).map_err(anyhow::Error::msg)?;
        let sizes =
            parse_sizes(&args.sizes, MAX_SIZES).map_err(|e| anyhow::anyhow!("--sizes {e}"))?;
        let rows = compare_table(&sources, args.seed, &sizes, &device)?;
        let mut conclusions = Vec::new();
        for (i, a) in sources.iter().enumerate() {
            for b in &sources[i + 1..] {
                conclusions.push(conclusion(a, b, &rows));
            }
        }
        let text = if args.json {
            let mut j = rows_json(&rows, args.seed);
            j["conclusions"] = json!(conclusions);
            serde_json::to_string_pretty(&j)? + "\n"
        } else {
            let mut t = render(&rows, args.seed);
            t += "\nin one line per pair (one image per draw; a square of N×N draws 4·(N/8)² elements):\n";
            for c in &conclusions {
                t += &format!("  {c}\n");
            }
            t
        };
        super::emit(&text)?;
        return Ok(ExitStatus::Success);
    }
    let Some(output) = &args.output else {
        bail!("noise needs -o FILE (or --compare A,B,...)");
    };
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (shape, data, g) = draw(
        &args.rng,
        args.seed,
        args.size,
        args.batch,
        args.per_image_seeds,
        &device,
    )?;
    write(output, &shape, &data, g.as_ref(), args.seed)?;
    eprintln!(
        "wrote {} ({shape:?} f32, --rng {}, seed {}{})",
        output.display(),
        g.spec(),
        args.seed,
        if args.per_image_seeds {
            " + image index"
        } else {
            ""
        }
    );
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [PairRow], n: u32, a: &str, b: &str) -> &'a PairRow {
        rows.iter()
            .find(|r| r.size == (n, n) && ((r.a == a && r.b == b) || (r.a == b && r.b == a)))
            .unwrap()
    }

    /// The observation table of the original report, from first principles.
    #[test]
    fn observation_table() {
        let sources = parse_sources("p2000,gtx1060,gtx1070,t4,cpu,a1111-nv").unwrap();
        let sizes = parse_sizes("384..1024/64", MAX_SIZES).unwrap();
        assert_eq!(sizes.len(), 11);
        let rows =
            compare_table(&sources, 1_744_694_513, &sizes, &candle_core::Device::Cpu).unwrap();
        assert_eq!(rows.len(), 11 * 15);
        let cards = ["p2000", "gtx1060", "gtx1070", "t4"];
        // 384²–512²: all four cards draw identical noise.
        for n in [384, 448, 512] {
            for (i, a) in cards.iter().enumerate() {
                for b in &cards[i + 1..] {
                    assert_eq!(row(&rows, n, a, b).result(), "identical", "{n} {a} {b}");
                }
            }
        }
        // Against the uncapped draw: where each card first differs, and from which index.
        let first_differs = |card: &str| {
            sizes
                .iter()
                .map(|s| s.0)
                .find(|&n| row(&rows, n, card, "a1111-nv").result() == "differs")
        };
        assert_eq!(first_differs("p2000"), Some(576));
        assert_eq!(first_differs("gtx1060"), Some(576));
        assert_eq!(first_differs("gtx1070"), Some(704));
        assert_eq!(first_differs("t4"), Some(832));
        for (card, wave) in [
            ("p2000", 16_384),
            ("gtx1060", 20_480),
            ("gtx1070", 30_720),
            ("t4", 40_960),
        ] {
            for &(n, _) in &sizes {
                let r = row(&rows, n, card, "a1111-nv");
                if r.result() == "differs" {
                    assert_eq!(r.differs_from(), Some(wave), "{card} {n}");
                    assert_eq!(r.diagnosis.class, NoiseClass::GpuWave);
                } else {
                    // Below the wave the emulation and A1111's numpy math agree to rounding.
                    assert_eq!(r.result(), "same", "{card} {n}");
                }
            }
        }
        // The GTX 1070 and the T4 agree with each other up to 696² and differ from 704² on
        // (on this grid of 64: identical up to 640²).
        let (_, differ) = sdtrace::analysis::noise::square_boundary(30_720, 40_960).unwrap();
        assert_eq!(differ, 704);
        for &(n, _) in &sizes {
            let r = row(&rows, n, "gtx1070", "t4");
            assert_eq!(r.result() == "identical", (n as u64) < differ, "{n}");
        }
        assert_eq!(
            row(&rows, 704, "gtx1070", "t4").differs_from(),
            Some(30_720)
        );
        // The CPU differs from all of them at every size, from the first element.
        for &(n, _) in &sizes {
            for other in cards.iter().chain(&["a1111-nv"]) {
                let r = row(&rows, n, "cpu", other);
                assert_eq!(r.differs_from(), Some(0), "{n} {other}");
                assert_eq!(r.diagnosis.class, NoiseClass::Unrelated, "{n} {other}");
            }
        }
        let one = |a: &str, b: &str| {
            conclusion(
                &RngSpec::parse_as("--compare", a).unwrap(),
                &RngSpec::parse_as("--compare", b).unwrap(),
                &rows,
            )
        };
        assert_eq!(
            one("gtx1070", "t4"),
            "gtx1070 vs t4: agree up to 696×696, differ from 704×704 (the first 30720 elements agree)"
        );
        assert_eq!(
            one("cpu", "gtx1070"),
            "cpu vs gtx1070: differ at every size (different generators)"
        );
        assert!(
            one("p2000", "a1111-nv").starts_with(
                "p2000 vs a1111-nv: the same values up to 512×512, differ from 520×520"
            ),
            "{}",
            one("p2000", "a1111-nv")
        );
        assert!(one("gtx1070", "rtx2060").contains("agree at every size (the same wave of 30720"));
        // The measured rows agree with the prediction at every size compared.
        for (a, b) in [("gtx1070", "t4"), ("p2000", "a1111-nv"), ("cpu", "t4")] {
            let (sa, sb) = (
                RngSpec::parse_as("--compare", a).unwrap(),
                RngSpec::parse_as("--compare", b).unwrap(),
            );
            for &(n, _) in &sizes {
                let predicted = agreement(&sa, &sb).at(4 * (n as u64 / 8).pow(2));
                assert_eq!(
                    predicted,
                    Some(row(&rows, n, a, b).result() != "differs"),
                    "{a} {b} {n}"
                );
            }
        }
        let text = render(&rows, 1);
        assert!(
            text.contains("576x576")
                && text.contains("p2000 / a1111-nv")
                && text.contains("differs from flat index 16384"),
            "{text}"
        );
    }

    #[test]
    fn sizes_bound_and_sources_parse_with_clear_errors() {
        // The grammar is tested in pipeline::sizes; here only noise's bound.
        assert!(
            parse_sizes("8..16384/8", MAX_SIZES)
                .unwrap_err()
                .contains("more than 1000")
        );
        assert!(parse_sources("t4").unwrap_err().contains("at least two"));
        let e = parse_sources("t4,gtx9999").unwrap_err();
        assert!(
            e.starts_with("--compare 'gtx9999': unknown generator") && e.contains("valid forms"),
            "{e}"
        );
    }

    #[test]
    fn batches_draw_once_or_per_image() {
        let dev = candle_core::Device::Cpu;
        let (shape, one, _) = draw(&RngSpec::TorchCpu, 5, (64, 64), 2, false, &dev).unwrap();
        assert_eq!(shape, [2, 4, 8, 8]);
        assert_eq!(one, sdtrace::sampling::rng::TorchCpuNoise::new(5).draw(512));
        let (_, per, _) = draw(&RngSpec::TorchCpu, 5, (64, 64), 2, true, &dev).unwrap();
        assert_eq!(per[..256], one[..256]);
        assert_eq!(
            per[256..],
            sdtrace::sampling::rng::TorchCpuNoise::new(6).draw(256)[..]
        );
        let e = draw(&RngSpec::TorchCpu, 5, (16384, 16384), 64, false, &dev)
            .err()
            .unwrap();
        assert!(e.to_string().contains("smaller batch"), "{e}");
    }
}
