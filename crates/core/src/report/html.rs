//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network) with
//! the verdict; for a noise verdict or differing noise, a picture of which noise elements differ
//! (when the caller passes [`ReportNoise`]); a step × layer heatmap of log10 relative error
//! that also holds the records before and after the sampling loop (first exceedance, source
//! and amplification onset marked); the latent error curve and the per-step worst error over
//! step ticks; one "Final images" section (the pair's metrics, and both images side by side
//! with their amplified difference as PNG data URIs when the caller passes [`ReportImages`]);
//! the key table and the failing records.

use super::{
    ElementMatch, ReportExtras, ReportImages, ReportNoise, failing, key_rows, noise_picture_record,
    sci, xml_escape as esc,
};
use crate::analysis::noise::{AGREE_ABS, AGREE_REL};
use crate::analysis::{Comparison, Judgement, Status};
use crate::exit::ExitStatus;
use crate::image::encode_png;
use std::collections::BTreeMap;
use std::fmt::Write;

/// log10 error range of the colour scale.
const LOG_LO: f64 = -8.0;
const LOG_HI: f64 = 0.0;

/// Colour of a log10 error: dark blue (tiny) → yellow → red (large).
fn colour(e: f64) -> String {
    let t = ((e.log10() - LOG_LO) / (LOG_HI - LOG_LO)).clamp(0.0, 1.0);
    let (r, g, b) = if t < 0.5 {
        let u = t * 2.0;
        (30.0 + u * 225.0, 60.0 + u * 170.0, 140.0 - u * 100.0)
    } else {
        let u = (t - 0.5) * 2.0;
        (255.0, 230.0 - u * 200.0, 40.0 - u * 20.0)
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// A heatmap column: records before the sampling loop, one sampler step, or records after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Before,
    Step(u32),
    After,
}

/// The step × layer heatmap. Every record has a cell: records outside the sampling loop (noise,
/// text encoder, conditioning before it; VAE and image after it) sit in a `pre` column left of
/// step 0 and a `post` column right of the last step, on rows of their own, so a source or first
/// exceedance there is marked where it is.
fn heatmap(c: &Comparison, j: &Judgement) -> String {
    // Outside records go before or after the loop by A's execution order.
    let loop_start = c
        .records
        .iter()
        .filter(|r| r.step.is_some())
        .map(|r| r.order_a)
        .min();
    let column = |r: &crate::analysis::PairRecord| match r.step {
        Some(st) => Column::Step(st),
        None if loop_start.is_none_or(|o| r.order_a < o) => Column::Before,
        None => Column::After,
    };
    let columns: Vec<Column> = {
        let mut v: Vec<Column> = c.records.iter().map(column).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    if columns.is_empty() {
        return "<p>No records.</p>".into();
    }
    let steps = columns
        .iter()
        .filter(|c| matches!(c, Column::Step(_)))
        .count();
    let mut layers: Vec<String> = Vec::new();
    let mut cells: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (i, r) in c.records.iter().enumerate() {
        let name = if r.eval == 0 {
            r.key.clone()
        } else {
            format!("{} (eval {})", r.key, r.eval)
        };
        let row = match layers.iter().position(|l| *l == name) {
            Some(p) => p,
            None => {
                layers.push(name);
                layers.len() - 1
            }
        };
        let col = columns.binary_search(&column(r)).unwrap_or(0);
        cells.entry((row, col)).or_insert(i);
    }
    let (cw, ch) = (((900 / columns.len()).clamp(6, 40)) as f64, 14.0);
    let label_w = 8.0 * layers.iter().map(|l| l.len()).max().unwrap_or(8).min(60) as f64;
    let (w, h) = (
        label_w + cw * columns.len() as f64 + 10.0,
        20.0 + ch * layers.len() as f64 + 10.0,
    );
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heat\" width=\"{w}\" height=\"{h}\" font-size=\"11\" font-family=\"monospace\">\n"
    );
    let mut k = 0;
    for (col, c) in columns.iter().enumerate() {
        let x = label_w + cw * col as f64;
        let text = match c {
            Column::Before if cw >= 24.0 => "pre".to_string(),
            Column::After if cw >= 32.0 => "post".to_string(),
            Column::Before | Column::After => "·".to_string(),
            Column::Step(st) => {
                k += 1;
                if steps <= 30 || (k - 1) % 5 == 0 {
                    st.to_string()
                } else {
                    continue;
                }
            }
        };
        let _ = writeln!(s, "<text x=\"{x}\" y=\"12\">{text}</text>");
    }
    // Thin rules between the loop and the columns outside it.
    for (col, pair) in columns.windows(2).enumerate() {
        if matches!(pair, [Column::Before, _] | [_, Column::After]) {
            let x = label_w + cw * (col + 1) as f64;
            let _ = writeln!(
                s,
                "<line x1=\"{x}\" y1=\"16\" x2=\"{x}\" y2=\"{}\" stroke=\"#888\" stroke-width=\"1\"/>",
                h - 10.0
            );
        }
    }
    for (row, l) in layers.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{}\">{}</text>",
            20.0 + ch * row as f64 + 11.0,
            esc(l)
        );
    }
    for (&(row, col), &i) in &cells {
        let rj = &j.records[i];
        let (x, y) = (label_w + cw * col as f64, 20.0 + ch * row as f64);
        let fill = match (rj.status, rj.error) {
            (Status::Identical, _) => "#e8e8e8".to_string(),
            (_, Some(e)) if e > 0.0 => colour(e),
            _ => "#ffffff".to_string(),
        };
        let mut stroke = String::new();
        if j.source.as_ref().is_some_and(|src| src.index == i) {
            stroke = " stroke=\"#000\" stroke-width=\"2\"".into();
        } else if j.first_over_tolerance == Some(i) {
            stroke = " stroke=\"#c00\" stroke-width=\"2\"".into();
        } else if rj.status == Status::Fail {
            stroke = " stroke=\"#800\" stroke-width=\"0.5\"".into();
        }
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{fill}\"{stroke}><title>{} — {}: rel L2 {}</title></rect>",
            esc(&c.records[i].label()),
            rj.status.name(),
            sci(rj.error)
        );
    }
    if let Some(a) = &j.amplification
        && let Ok(col) = columns.binary_search(&Column::Step(a.onset_step))
    {
        let x = label_w + cw * col as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"16\" x2=\"{x}\" y2=\"{}\" stroke=\"#06c\" stroke-width=\"2\" stroke-dasharray=\"4 2\"><title>amplification onset: step {}</title></line>",
            h - 10.0,
            a.onset_step
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One error curve: label, colour, (step, value) points.
type Curve<'a> = (&'a str, &'a str, Vec<(u32, f64)>);

/// Log-scale line chart of one or more series of (step, error).
fn curves(series: &[Curve]) -> String {
    let pts: Vec<(u32, f64)> = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .filter(|(_, e)| *e > 0.0 && e.is_finite())
        .collect();
    if pts.is_empty() {
        return "<p>No non-zero error inside the sampling loop.</p>".into();
    }
    let (w, h, m) = (640.0, 240.0, 50.0);
    let smax = pts.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let lo = pts
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::INFINITY, f64::min)
        .floor();
    let hi = pts
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .max(lo + 1.0);
    let x = |st: f64| m + (w - 2.0 * m) * st / smax;
    let y = |e: f64| h - m + -(h - 2.0 * m) * (e.log10() - lo) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\" font-family=\"sans-serif\">\n<rect x=\"{m}\" y=\"{m}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
        w - 2.0 * m,
        h - 2.0 * m
    );
    let mut d = lo;
    while d <= hi {
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"{}\">1e{d}</text>",
            h - m - (h - 2.0 * m) * (d - lo) / (hi - lo) + 4.0
        );
        d += 1.0;
    }
    // Step ticks: every step, or every 2, 5, 10, 20, 50, … so that at most 10 are labelled.
    let every = step_tick_interval(smax as u32);
    for st in (0..=smax as u32).step_by(every as usize) {
        let xt = x(st as f64);
        let _ = writeln!(
            s,
            "<line class=\"step-tick\" x1=\"{xt:.1}\" y1=\"{}\" x2=\"{xt:.1}\" y2=\"{}\" stroke=\"#999\"/><text x=\"{xt:.1}\" y=\"{}\" text-anchor=\"middle\">{st}</text>",
            h - m,
            h - m + 4.0,
            h - m + 15.0
        );
    }
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">step</text>", w / 2.0, h - 10.0);
    for (k, (name, col, v)) in series.iter().enumerate() {
        let p: Vec<String> = v
            .iter()
            .filter(|(_, e)| *e > 0.0 && e.is_finite())
            .map(|&(st, e)| format!("{:.1},{:.1}", x(st as f64), y(e)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"2\" points=\"{}\"/>",
            p.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{col}\">{}</text>",
            m + 10.0,
            m + 14.0 * (k as f64 + 1.0),
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Steps between labelled ticks on an axis from 0 to `last`: 1, 2, 5, 10, 20, 50, … — the
/// smallest that labels at most 11 ticks.
fn step_tick_interval(last: u32) -> u32 {
    let mut base = 1u32;
    loop {
        for m in [1, 2, 5] {
            let every = base.saturating_mul(m);
            if last / every <= 10 {
                return every;
            }
        }
        base = base.saturating_mul(10);
    }
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An `<img>` of 8-bit RGB pixels as a PNG data URI; images smaller than `target` pixels on
/// their longer side are shown enlarged by a whole factor.
fn img_tag(width: u32, height: u32, rgb: &[u8], alt: &str, target: u32) -> String {
    let Ok(png) = encode_png(width, height, rgb, &[]) else {
        return format!("<p>({} could not be encoded)</p>", esc(alt));
    };
    let scale = (target / width.max(height).max(1)).max(1);
    format!(
        "<img src=\"data:image/png;base64,{}\" width=\"{}\" height=\"{}\" alt=\"{}\" style=\"image-rendering:pixelated\">",
        base64(&png),
        width * scale,
        height * scale,
        esc(alt)
    )
}

/// A gain with three or four significant digits.
fn gain_text(g: f64) -> String {
    if g >= 1000.0 {
        format!("{g:.0}")
    } else if g >= 10.0 {
        format!("{g:.1}")
    } else {
        format!("{g:.2}")
    }
}

/// The one "Final images" section: the image pair's metrics (when the traces pair an `image`
/// record) and the pictures (when the caller read them).
fn final_images(c: &Comparison, j: &Judgement, images: Option<&ReportImages>) -> String {
    if j.image.is_none() && images.is_none() {
        return String::new();
    }
    let mut s = String::from("<h2>Final images</h2>\n");
    if let Some(i) = j.image {
        let r = &c.records[i];
        let _ = writeln!(
            s,
            "<p>{}</p>",
            match (&r.image, r.bit_identical) {
                (_, Some(true)) => "Bit-identical.".to_string(),
                (Some(m), _) => format!(
                    "PSNR {:.2} dB, SSIM {:.4}, relative L2 {}.",
                    m.psnr_db,
                    m.ssim,
                    sci(r.rel_l2)
                ),
                _ => format!("Relative L2 {}.", sci(r.rel_l2)),
            }
        );
    }
    if let Some(im) = images {
        s.push_str(&image_pictures(im));
    }
    s
}

fn image_pictures(im: &ReportImages) -> String {
    let mut s = String::from("<p>");
    if im.batch > 1 {
        let _ = write!(s, "Batch item {} of {}. ", im.index, im.batch);
    }
    if im.max_abs == 0.0 {
        s.push_str("The images are equal (8-bit and unquantised values alike); the difference is black.</p>\n");
    } else {
        let _ = writeln!(
            s,
            "Difference: |A − B| × {} per channel, so that the largest difference ({} on the [0, 1] scale, {:.2} of 255 levels) is white.</p>",
            gain_text(im.gain),
            sci(Some(im.max_abs)),
            im.max_abs * 255.0
        );
    }
    s.push_str("<div style=\"display:flex;gap:1em;flex-wrap:wrap\">\n");
    for (rgb, label) in [
        (&im.a, "A".to_string()),
        (&im.b, "B".to_string()),
        (&im.diff, format!("|A − B| × {}", gain_text(im.gain))),
    ] {
        let _ = writeln!(
            s,
            "<figure style=\"margin:0\">{}<figcaption>{}</figcaption></figure>",
            img_tag(im.width, im.height, rgb, &label, 256),
            esc(&label)
        );
    }
    s.push_str("</div>\n");
    s
}

const NOISE_IDENTICAL: [u8; 3] = [32, 32, 32];
const NOISE_CLOSE: [u8; 3] = [40, 90, 200];
const NOISE_DIFFERS: [u8; 3] = [230, 64, 28];

/// The noise section, for a noise/RNG verdict or a differing noise record
/// ([`noise_picture_record`]): the diagnosis, a picture of which elements of batch item 0 differ
/// (channels side by side) and a strip of the whole tensor along the flat index, where a GPU
/// RNG wave shows as an agreeing prefix and a differing tail.
fn noise_section(c: &Comparison, j: &Judgement, noise: Option<&ReportNoise>) -> String {
    let Some(i) = noise_picture_record(c, j) else {
        return String::new();
    };
    let r = &c.records[i];
    let mut s = format!(
        "<h2>Noise: which elements differ ({})</h2>\n",
        esc(&r.label())
    );
    if let Some(d) = &r.noise {
        let _ = writeln!(s, "<p>{}</p>", esc(&d.summary));
    }
    let Some(n) = noise.filter(|n| n.label == r.label()) else {
        s.push_str("<p>No picture: it needs both traces' payloads of this record (kept in full by the default capture, and read up to a size limit).</p>\n");
        return s;
    };
    let pct = |k: u64| 100.0 * k as f64 / n.count.max(1) as f64;
    let _ = write!(
        s,
        "<p>{} of {} elements differ ({:.1} %), {} are bit-identical",
        n.differing,
        n.count,
        pct(n.differing),
        n.identical
    );
    match n.first_differing {
        Some(0) => s.push_str("; they differ from the first element on"),
        Some(k) => {
            let _ = write!(s, "; the first {k} elements (flat index 0–{}) agree", k - 1);
        }
        None => {}
    }
    let _ = writeln!(
        s,
        ". Agreement as in the noise diagnosis: within {:.0e} + {:.0e}·|B|.</p>",
        AGREE_ABS, AGREE_REL
    );
    // Batch item 0, channels side by side with a one-pixel white gap.
    let (ch, hgt, wid) = (n.channels, n.height, n.width);
    let pic_w = ch * wid + ch.saturating_sub(1);
    if pic_w > 0 && hgt > 0 && n.map.len() == ch * hgt * wid {
        let mut rgb = vec![255u8; pic_w * hgt * 3];
        for (e, m) in n.map.iter().enumerate() {
            let (c_, rest) = (e / (hgt * wid), e % (hgt * wid));
            let (y, x) = (rest / wid, c_ * (wid + 1) + rest % wid);
            let colour = match m {
                ElementMatch::Identical => NOISE_IDENTICAL,
                ElementMatch::Close => NOISE_CLOSE,
                ElementMatch::Differs => NOISE_DIFFERS,
            };
            let at = (y * pic_w + x) * 3;
            rgb[at..at + 3].copy_from_slice(&colour);
        }
        let caption = format!(
            "{}batch item 0: {ch} channel{} of {hgt}×{wid} side by side, left to right; dark: bit-identical, blue: agrees, red: differs",
            if n.shape.len() >= 4 && n.shape[0] > 1 {
                format!("{} items, ", n.shape[0])
            } else {
                String::new()
            },
            if ch == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "<figure style=\"margin:0\">{}<figcaption>{}</figcaption></figure>",
            img_tag(pic_w as u32, hgt as u32, &rgb, "noise difference", 720),
            esc(&caption)
        );
    }
    s.push_str(&noise_strip(n));
    s
}

/// The whole noise tensor along the flat index: one bar, red where elements differ.
fn noise_strip(n: &ReportNoise) -> String {
    let (w, h, top) = (720.0, 18.0, 4.0);
    let runs = n.strip.len().max(1) as f64;
    let mix = |f: f32| {
        let f = f.clamp(0.0, 1.0);
        let c: Vec<u8> = (0..3)
            .map(|k| {
                (NOISE_IDENTICAL[k] as f32 * (1.0 - f) + NOISE_DIFFERS[k] as f32 * f).round() as u8
            })
            .collect();
        format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"noise-strip\" width=\"{}\" height=\"{}\" font-size=\"11\" font-family=\"sans-serif\">\n",
        w + 20.0,
        top + h + 16.0
    );
    // Adjacent runs of one colour are drawn as one rectangle.
    let mut start = 0usize;
    for r in 1..=n.strip.len() {
        if r < n.strip.len() && mix(n.strip[r]) == mix(n.strip[start]) {
            continue;
        }
        let x0 = w * start as f64 / runs;
        let x1 = w * r as f64 / runs;
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{h}\" fill=\"{}\"/>",
            x1 - x0,
            mix(n.strip[start])
        );
        start = r;
    }
    let _ = writeln!(
        s,
        "<text x=\"0\" y=\"{}\">0</text><text x=\"{w}\" y=\"{}\" text-anchor=\"end\">{} (flat index)</text>",
        top + h + 13.0,
        top + h + 13.0,
        n.count
    );
    if let Some(k) = n.first_differing.filter(|&k| k > 0) {
        let x = w * k as f64 / n.count.max(1) as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#000\" stroke-width=\"2\"><title>first difference: flat index {k}</title></line>",
            top + h + 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The HTML report; `extras` adds the final images' pictures and the noise picture.
pub fn render_html(c: &Comparison, j: &Judgement, extras: &ReportExtras) -> String {
    let mut s = String::new();
    verdict_section(&mut s, c, j);
    s.push_str(&noise_section(c, j, extras.noise.as_ref()));
    s.push_str("<h2>Step × layer: log10 relative error</h2>\n<p>Columns: pre (before the sampling loop: noise, text encoder, conditioning), the sampler steps, post (after it: VAE, image). Grey: bit-identical; white: unknown; blue → red: 1e-8 → 1. Black frame: source; red frame: first over tolerance; dashed line: amplification onset.</p>\n");
    s.push_str(&heatmap(c, j));
    s.push_str(&error_curves(c, j));
    s.push_str(&final_images(c, j, extras.images.as_ref()));
    key_tables(&mut s, c, j);
    s.push_str("</body></html>\n");
    s
}

/// The page head, the verdict, the traces and the header differences.
fn verdict_section(s: &mut String, c: &Comparison, j: &Judgement) {
    let v = &j.verdict;
    let mark = v.outcome();
    let cls = match v.status() {
        ExitStatus::Success => "ok",
        ExitStatus::NotComparable => "warn",
        _ => "bad",
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sdtrace report</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}.ok{{color:#070}}.bad{{color:#b00}}.warn{{color:#a60}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}td.n{{text-align:right;font-family:monospace}}.heat{{overflow:visible}}</style></head><body>\n"
    );
    let _ = writeln!(
        s,
        "<h1>sdtrace report: <span class=\"{cls}\">{mark}</span> ({})</h1>",
        esc(v.class.name())
    );
    let _ = writeln!(s, "<p>{}</p>", esc(&v.summary));
    let _ = writeln!(
        s,
        "<p>A: <code>{}</code> ({})<br>B: <code>{}</code> ({})<br>tolerance: {}; exit code {}</p>",
        esc(&c.a.path),
        esc(&c.a.host()),
        esc(&c.b.path),
        esc(&c.b.host()),
        esc(&j.tolerance),
        v.exit_code
    );
    if !c.header_diffs.is_empty() {
        s.push_str(
            "<h2>Header differences</h2><table><tr><th>field</th><th>A</th><th>B</th></tr>\n",
        );
        for d in &c.header_diffs {
            let _ = writeln!(
                s,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.field),
                if d.structural { " (structural)" } else { "" },
                esc(d.a.as_deref().unwrap_or("-")),
                esc(d.b.as_deref().unwrap_or("-"))
            );
        }
        s.push_str("</table>\n");
    }
}

/// The latent error and the worst record's error per step.
fn error_curves(c: &Comparison, j: &Judgement) -> String {
    let mut s = String::new();
    let latent: Vec<(u32, f64)> = j.latent.iter().map(|p| (p.step, p.error)).collect();
    let mut worst: BTreeMap<u32, f64> = BTreeMap::new();
    for (r, rj) in c.records.iter().zip(&j.records) {
        if let (Some(st), Some(e)) = (r.step, rj.error) {
            let w = worst.entry(st).or_insert(0.0);
            *w = w.max(e);
        }
    }
    s.push_str("<h2>Error by step</h2>\n");
    s.push_str(&curves(&[
        (j.latent_key.as_deref().unwrap_or("latent"), "#06c", latent),
        ("worst record", "#c60", worst.into_iter().collect()),
    ]));
    s
}

/// The key groups and the failing records (at most 500).
fn key_tables(s: &mut String, c: &Comparison, j: &Judgement) {
    s.push_str("<h2>Keys</h2><table><tr><th>key</th><th>records</th><th>fail</th><th>worst rel L2</th><th>at</th><th>status</th></tr>\n");
    for r in key_rows(c, j) {
        let (w, at) = r.worst.map_or(("-".into(), "-".into()), |(e, i)| {
            (sci(Some(e)), c.records[i].label())
        });
        let _ = writeln!(
            s,
            "<tr><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{w}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.key),
            if r.source { " <b>(source)</b>" } else { "" },
            r.records,
            r.fail,
            esc(&at),
            r.status()
        );
    }
    s.push_str("</table>\n");
    let fails = failing(j);
    if !fails.is_empty() {
        s.push_str("<h2>Failing records</h2><table><tr><th>record</th><th>rel L2</th><th>abs</th><th>gain</th><th>needs</th></tr>\n");
        for &i in fails.iter().take(500) {
            let (r, rj) = (&c.records[i], &j.records[i]);
            let need = rj.required.map_or("-".into(), |q| {
                format!("rel ≥ {} or abs ≥ {}", sci(Some(q.rel)), sci(Some(q.abs)))
            });
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&r.label()),
                sci(r.rel_l2),
                sci(r.abs_error),
                sci(rj.gain),
                esc(&need)
            );
        }
        s.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{NOISE_STRIP, NoisePictureError, fixture};

    fn none() -> ReportExtras {
        ReportExtras::default()
    }

    #[test]
    fn html_is_self_contained_and_marks_the_source() {
        let (c, j) = fixture::judged();
        let h = render_html(&c, &j, &none());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.ends_with("</body></html>\n"));
        assert!(
            !h.contains("http://")
                || h.matches("http://").count()
                    == h.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
            "no links other than the SVG namespace"
        );
        assert!(!h.contains("<script"));
        assert!(h.contains("b&lt;&amp;&gt;.sdt"));
        // 9 stepped cells (steps 0..=4: sampler.x ×5, unet.mid_block ×4) and noise.initial
        // before the loop; one more rectangle frames the error chart.
        assert_eq!(h.matches("<rect x=").count() - 1, 10);
        assert!(h.contains("stroke=\"#000\" stroke-width=\"2\"><title>step 1 unet.mid_block — FAIL: rel L2 1.00e-3</title>"), "{h}");
        assert!(h.contains("<title>amplification onset: step 2</title>"));
        assert_eq!(h.matches("<polyline").count(), 2);
        assert_eq!(colour(1e-8), "#1e3c8c");
        assert_eq!(colour(1.0), "#ff1e14");
        assert!(!h.contains("Final images"));
        // Identical noise and a numeric-drift verdict: no noise section.
        assert!(!h.contains("<h2>Noise") && !h.contains("noise difference"));
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn final_images_side_by_side_with_the_amplified_difference() {
        use crate::DType;
        use crate::image::{ImageTensor, png_text};
        let (c, j) = fixture::judged();
        // 2 items of 3×1×2 floats; B differs from A by 0.01 in one value of item 0.
        let a: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let mut b = a.clone();
        b[3] += 0.01;
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let ta = ImageTensor::from_record(DType::F32, &[2, 3, 1, 2], &bytes(&a)).unwrap();
        let tb = ImageTensor::from_record(DType::F32, &[2, 3, 1, 2], &bytes(&b)).unwrap();
        let im = ReportImages::from_records(&ta, &tb).unwrap();
        assert!((im.max_abs - 0.01).abs() < 1e-6 && (im.gain - 100.0).abs() < 1e-2);
        // Value 3 is channel 1 (G) of pixel 1: white there, black elsewhere.
        assert_eq!(im.diff, vec![0, 0, 0, 0, 255, 0]);
        let extras = |im: &ReportImages| ReportExtras {
            images: Some(im.clone()),
            ..none()
        };
        let h = render_html(&c, &j, &extras(&im));
        assert!(h.contains("<h2>Final images</h2>"));
        assert!(h.contains("Batch item 0 of 2."));
        assert!(
            h.contains("<figcaption>|A − B| × 100.0</figcaption>"),
            "{h}"
        );
        assert_eq!(h.matches("src=\"data:image/png;base64,").count(), 3);
        assert!(!h.contains("<script"));
        // The data URIs hold PNGs of the right size (enlarged on display).
        let start = h.find("base64,").unwrap() + 7;
        let end = start + h[start..].find('"').unwrap();
        let png = decode_base64(&h[start..end]);
        assert!(png_text(&png).unwrap().is_empty());
        assert_eq!(&png[16..24], &[0, 0, 0, 2, 0, 0, 0, 1]);
        assert!(h.contains("width=\"256\" height=\"128\""));
        let same = ReportImages::from_records(&ta, &ta).unwrap();
        assert_eq!((same.max_abs, same.gain), (0.0, 1.0));
        assert!(render_html(&c, &j, &extras(&same)).contains("The images are equal"));
        let other = ImageTensor::from_record(DType::F32, &[3, 1, 2], &bytes(&a[..6])).unwrap();
        assert!(
            ReportImages::from_records(&ta, &other)
                .unwrap_err()
                .contains("differ in size")
        );
    }

    use crate::analysis::{Comparison, FailOn, TolConfig, VerdictClass, judge};

    /// A run with records outside the loop: noise, text encoder, conditioning, two steps, VAE
    /// and image, with the given relative errors (0: identical), in this execution order.
    fn whole_run(errors: [f64; 10]) -> (Comparison, Judgement) {
        let mut c = fixture::comparison();
        c.only_b.clear();
        let keys = [
            (None, "noise.initial"),
            (None, "text_encoder.final_layer_norm"),
            (None, "text.cond"),
            (Some(0), "sampler.x"),
            (Some(0), "unet.mid_block"),
            (Some(1), "sampler.x"),
            (Some(1), "unet.mid_block"),
            (Some(2), "sampler.x"),
            (None, "vae.decoder"),
            (None, "image"),
        ];
        c.records = keys
            .iter()
            .zip(errors)
            .enumerate()
            .map(|(o, (&(st, k), e))| fixture::rec(st, k, o as u64, e))
            .collect();
        let j = judge(&c, &TolConfig::default(), &FailOn::FirstExceed.into());
        (c, j)
    }

    /// The heatmap's row of `key` (by its label's y) and the column of a framed cell.
    fn framed(h: &str, colour: &str) -> Option<(String, f64, f64)> {
        let at = h.find(&format!("stroke=\"{colour}\" stroke-width=\"2\"><title>"))?;
        let rect = &h[h[..at].rfind("<rect ")?..];
        let num = |attr: &str| -> f64 {
            let v = &rect[rect.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3..];
            v[..v.find('"').unwrap()].parse().unwrap()
        };
        let title = &rect[rect.find("<title>").unwrap() + 7..rect.find("</title>").unwrap()];
        Some((title.to_string(), num("x"), num("y")))
    }

    fn row_y(h: &str, label: &str) -> f64 {
        let end = h
            .find(&format!("\">{label}</text>"))
            .unwrap_or_else(|| panic!("no row {label}"));
        let start = h[..end].rfind("y=\"").unwrap() + 3;
        h[start..end].parse::<f64>().unwrap() - 11.0
    }

    #[test]
    fn heatmap_rows_hold_the_records_outside_the_loop() {
        let grow = |from: usize| {
            let mut e = [0.0; 10];
            for (k, v) in e.iter_mut().enumerate().skip(from) {
                *v = 1e-2 * 2f64.powi((k - from) as i32);
            }
            e
        };
        // The conditioning differs: the source is text.cond, in the column before step 0.
        let (c, j) = whole_run(grow(2));
        let h = render_html(&c, &j, &none());
        for key in [
            "noise.initial",
            "text_encoder.final_layer_norm",
            "text.cond",
            "sampler.x",
            "vae.decoder",
            "image",
        ] {
            row_y(&h, key);
        }
        assert!(
            h.contains(">pre</text>") && h.contains(">post</text>"),
            "{h}"
        );
        // Ten records, ten cells (plus the error chart's frame).
        assert_eq!(h.matches("<rect x=").count() - 1, 10);
        let (title, x, y) = framed(&h, "#000").unwrap();
        assert!(title.starts_with("text.cond — FAIL"), "{title}");
        assert_eq!(y, row_y(&h, "text.cond"));
        let label_w = 8.0 * "text_encoder.final_layer_norm".len() as f64;
        let cw = (900 / 5) as f64;
        let cw = cw.clamp(6.0, 40.0);
        assert_eq!(x, label_w, "pre is the first column");
        // The source in the text encoder (within tolerance), first over tolerance at
        // text.cond (carried: gain 8): both marks before the loop, on their rows.
        let mut e = [0.0; 10];
        (e[1], e[2]) = (1e-6, 8e-6);
        let (c, j) = whole_run(e);
        let h = render_html(&c, &j, &none());
        let (title, x, y) = framed(&h, "#000").unwrap();
        assert!(
            title.starts_with("text_encoder.final_layer_norm — pass"),
            "{title}"
        );
        assert_eq!(
            (x, y),
            (label_w, row_y(&h, "text_encoder.final_layer_norm"))
        );
        let (title, x, y) = framed(&h, "#c00").unwrap();
        assert!(title.starts_with("text.cond — FAIL"), "{title}");
        assert_eq!((x, y), (label_w, row_y(&h, "text.cond")));
        // Only the decoder differs: the source is in the column after the last step.
        let (c, j) = whole_run(grow(8));
        let h = render_html(&c, &j, &none());
        let (title, x, y) = framed(&h, "#000").unwrap();
        assert!(title.starts_with("vae.decoder — FAIL"), "{title}");
        assert_eq!((x, y), (label_w + 4.0 * cw, row_y(&h, "vae.decoder")));
        // The noise differs: its row holds the source.
        let (c, j) = whole_run(grow(0));
        assert_eq!(j.verdict.class, VerdictClass::NoiseRng);
        let h = render_html(&c, &j, &none());
        let (title, _, y) = framed(&h, "#000").unwrap();
        assert!(title.starts_with("noise.initial — FAIL"), "{title}");
        assert_eq!(y, row_y(&h, "noise.initial"));
    }

    #[test]
    fn error_chart_has_step_ticks() {
        let (c, j) = fixture::judged();
        let h = render_html(&c, &j, &none());
        // Steps 0..=4: a tick and a label at each.
        assert_eq!(h.matches("<line class=\"step-tick\"").count(), 5, "{h}");
        assert!(h.contains("text-anchor=\"middle\">4</text>"));
        for (last, every) in [
            (0, 1),
            (4, 1),
            (10, 1),
            (11, 2),
            (21, 2),
            (22, 5),
            (54, 5),
            (55, 10),
        ] {
            assert_eq!(step_tick_interval(last), every, "{last}");
        }
        assert_eq!(step_tick_interval(149), 20);
        assert_eq!(step_tick_interval(999), 100);
        assert!(step_tick_interval(u32::MAX) >= u32::MAX / 10);
    }

    #[test]
    fn one_final_images_section() {
        use crate::DType;
        use crate::image::ImageTensor;
        let (c, j) = whole_run([0.0, 0.0, 0.0, 0.0, 1e-3, 2e-3, 4e-3, 8e-3, 1e-2, 1e-2]);
        assert!(j.image.is_some());
        let px: Vec<u8> = (0..12).collect();
        let t = ImageTensor::from_record(DType::U8, &[1, 3, 2, 2], &px).unwrap();
        let images = ReportImages::from_records(&t, &t).unwrap();
        for extras in [
            none(),
            ReportExtras {
                images: Some(images),
                ..none()
            },
        ] {
            let h = render_html(&c, &j, &extras);
            assert_eq!(h.matches("<h2>Final image").count(), 1, "{h}");
            assert_eq!(h.matches("<h2>Final images</h2>").count(), 1);
            assert!(h.contains("Relative L2 1.00e-2."), "{h}");
            let pictures = h.matches("data:image/png").count();
            assert_eq!(pictures, if extras.images.is_some() { 3 } else { 0 });
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// 1×4×8×8 noise: B agrees with A up to flat index 200 (one element only to rounding) and
    /// differs from there on, like two cards' CUDA noise.
    fn wave_noise() -> ReportNoise {
        use crate::DType;
        let a: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut b = a.clone();
        b[5] += 1e-6;
        for v in &mut b[200..] {
            *v = -*v + 0.5;
        }
        let shape = [1u64, 4, 8, 8];
        ReportNoise::from_payloads(
            "noise.initial",
            (DType::F32, &shape, &f32_bytes(&a)),
            (DType::F32, &shape, &f32_bytes(&b)),
        )
        .unwrap()
    }

    #[test]
    fn noise_elements_by_agreement() {
        use crate::DType;
        let n = wave_noise();
        assert_eq!((n.channels, n.height, n.width), (4, 8, 8));
        assert_eq!((n.count, n.identical, n.differing), (256, 199, 56));
        assert_eq!(n.first_differing, Some(200));
        assert_eq!(n.map[5], ElementMatch::Close);
        assert_eq!(n.map[199], ElementMatch::Identical);
        // Index 200: channel 3, row 1, column 0.
        assert_eq!(n.map[3 * 64 + 8], ElementMatch::Differs);
        assert_eq!(n.strip.len(), 256);
        assert_eq!((n.strip[199], n.strip[200]), (0.0, 1.0));
        // An f16 copy agrees to rounding; more elements than strip runs share runs.
        let big: Vec<f32> = (0..2000).map(|i| (i as f32).sin()).collect();
        let half: Vec<u8> = big
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let mut other = big.clone();
        other[1500..].iter_mut().for_each(|v| *v += 1.0);
        let m = ReportNoise::from_payloads(
            "x",
            (DType::F32, &[2000], &f32_bytes(&big)),
            (DType::F32, &[2000], &f32_bytes(&other)),
        )
        .unwrap();
        assert_eq!((m.channels, m.height, m.width), (1, 1, 2000));
        assert_eq!(m.strip.len(), NOISE_STRIP);
        assert_eq!(m.strip[539], 0.0);
        assert_eq!(m.strip[540], 1.0);
        assert_eq!(m.strip[NOISE_STRIP - 1], 1.0);
        assert_eq!(m.first_differing, Some(1500));
        // Mixed dtypes compare by value (f16 rounding is beyond the element tolerance).
        let e = ReportNoise::from_payloads(
            "x",
            (DType::F32, &[2000], &f32_bytes(&big)),
            (DType::F16, &[2000], &half),
        )
        .unwrap();
        assert_eq!(e.count, 2000);
        assert!(
            e.identical > 0 && e.differing > 1000,
            "{} {}",
            e.identical,
            e.differing
        );
        // Refusals, never panics.
        assert!(matches!(
            ReportNoise::from_payloads(
                "x",
                (DType::F32, &[4], &f32_bytes(&[0.0; 4])),
                (DType::F32, &[2, 2], &f32_bytes(&[0.0; 4])),
            ),
            Err(NoisePictureError::Shapes { .. })
        ));
        assert!(matches!(
            ReportNoise::from_payloads(
                "x",
                (DType::F32, &[5], &f32_bytes(&[0.0; 4])),
                (DType::F32, &[5], &f32_bytes(&[0.0; 5])),
            ),
            Err(NoisePictureError::Length { side: 'A', .. })
        ));
        let empty =
            ReportNoise::from_payloads("x", (DType::F32, &[0], &[]), (DType::F32, &[0], &[]))
                .unwrap();
        assert_eq!((empty.count, empty.strip.len()), (0, 1));
    }

    #[test]
    fn noise_picture_for_noise_verdicts_only() {
        let grow = |from: usize| {
            let mut e = [0.0; 10];
            for (k, v) in e.iter_mut().enumerate().skip(from) {
                *v = 1e-2 * 2f64.powi((k - from) as i32);
            }
            e
        };
        let (c, j) = whole_run(grow(0));
        assert_eq!(noise_picture_record(&c, &j), Some(0));
        let noise = ReportExtras {
            noise: Some(wave_noise()),
            ..none()
        };
        let h = render_html(&c, &j, &noise);
        assert_eq!(
            h.matches("<h2>Noise: which elements differ (noise.initial)</h2>")
                .count(),
            1
        );
        assert!(h.contains("alt=\"noise difference\""), "{h}");
        assert!(h.contains("56 of 256 elements differ (21.9 %), 199 are bit-identical"));
        assert!(h.contains("the first 200 elements (flat index 0–199) agree"));
        assert!(h.contains("<title>first difference: flat index 200</title>"));
        // The strip: an agreeing run, then a differing one.
        let strip = &h[h.find("class=\"noise-strip\"").unwrap()..];
        let strip = &strip[..strip.find("</svg>").unwrap()];
        assert_eq!(strip.matches("<rect ").count(), 2, "{strip}");
        assert!(strip.contains("fill=\"#202020\"") && strip.contains("fill=\"#e6401c\""));
        // The picture: 4 channels of 8×8 with 3 gaps, enlarged to 35·20 = 700 pixels wide.
        assert!(
            h.contains("width=\"700\" height=\"160\" alt=\"noise difference\""),
            "{h}"
        );
        // Noise section before the heatmap, so the cause comes first.
        assert!(h.find("<h2>Noise").unwrap() < h.find("<h2>Step × layer").unwrap());
        // A noise verdict without the payloads: the section says why there is no picture.
        let h = render_html(&c, &j, &none());
        assert!(h.contains("<h2>Noise") && h.contains("No picture"));
        assert!(!h.contains("noise difference"));
        // Not a noise verdict and the noise identical: no section, even when data is passed.
        let (c, j) = whole_run(grow(2));
        assert_eq!(noise_picture_record(&c, &j), None);
        let h = render_html(&c, &j, &noise);
        assert!(!h.contains("<h2>Noise") && !h.contains("noise difference"));
        // Ancestral noise that differs is pictured too (its own label).
        let mut c2 = c.clone();
        c2.records[5] = fixture::rec(Some(1), "sampler.noise", 5, 1e-2);
        let j2 = judge(&c2, &TolConfig::default(), &FailOn::FirstExceed.into());
        assert_eq!(noise_picture_record(&c2, &j2), Some(5));
        let h = render_html(&c2, &j2, &noise);
        assert!(h.contains("<h2>Noise: which elements differ (step 1 sampler.noise)</h2>"));
        assert!(
            h.contains("No picture"),
            "the data is noise.initial's, not this record's"
        );
    }

    fn decode_base64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for q in s.as_bytes().chunks(4) {
            let n = q.iter().enumerate().fold(0u32, |n, (i, &c)| {
                n | ((if c == b'=' { 0 } else { val(c) } as u32) << (18 - 6 * i))
            });
            let keep = q.iter().filter(|&&c| c != b'=').count() - 1;
            out.extend_from_slice(&n.to_be_bytes()[1..1 + keep]);
        }
        out
    }
}
