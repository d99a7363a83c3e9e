//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network) with
//! the verdict, a step × layer heatmap of log10 relative error (first exceedance, source and
//! amplification onset marked), the latent error curve and the per-step worst error, the final
//! images of both runs side by side with their amplified difference (PNG data URIs, when the
//! caller passes [`ReportImages`]), the key table and the failing records.

use super::{ReportImages, failing, key_rows, sci, xml_escape as esc};
use crate::analysis::{Comparison, Judgement, Status};
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

fn heatmap(c: &Comparison, j: &Judgement) -> String {
    let steps: Vec<u32> = {
        let mut v: Vec<u32> = c.records.iter().filter_map(|r| r.step).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    if steps.is_empty() {
        return "<p>No records inside the sampling loop.</p>".into();
    }
    let mut layers: Vec<String> = Vec::new();
    let mut cells: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (i, r) in c.records.iter().enumerate() {
        let Some(s) = r.step else { continue };
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
        let col = steps.binary_search(&s).unwrap_or(0);
        cells.entry((row, col)).or_insert(i);
    }
    let (cw, ch) = (((900 / steps.len()).clamp(6, 40)) as f64, 14.0);
    let label_w = 8.0 * layers.iter().map(|l| l.len()).max().unwrap_or(8).min(60) as f64;
    let (w, h) = (
        label_w + cw * steps.len() as f64 + 10.0,
        20.0 + ch * layers.len() as f64 + 10.0,
    );
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heat\" width=\"{w}\" height=\"{h}\" font-size=\"11\" font-family=\"monospace\">\n"
    );
    for (k, st) in steps.iter().enumerate() {
        if steps.len() <= 30 || k % 5 == 0 {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"12\">{st}</text>",
                label_w + cw * k as f64
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
        && let Ok(col) = steps.binary_search(&a.onset_step)
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

/// An `<img>` of 8-bit RGB pixels as a PNG data URI; small images are shown enlarged.
fn img_tag(width: u32, height: u32, rgb: &[u8], alt: &str) -> String {
    let Ok(png) = encode_png(width, height, rgb, &[]) else {
        return format!("<p>({} could not be encoded)</p>", esc(alt));
    };
    let scale = (256 / width.max(height).max(1)).max(1);
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

fn images_section(im: &ReportImages) -> String {
    let mut s = String::from("<h2>Final images</h2>\n<p>");
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
            img_tag(im.width, im.height, rgb, &label),
            esc(&label)
        );
    }
    s.push_str("</div>\n");
    s
}

/// The HTML report; `images`, when given, adds the final images section.
pub fn render_html(c: &Comparison, j: &Judgement, images: Option<&ReportImages>) -> String {
    let v = &j.verdict;
    let mut s = String::new();
    let mark = v.outcome();
    let cls = match v.exit_code {
        0 => "ok",
        3 => "warn",
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
        "<p>A: <code>{}</code><br>B: <code>{}</code><br>tolerance: {}; exit code {}</p>",
        esc(&c.a.path),
        esc(&c.b.path),
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
    s.push_str("<h2>Step × layer: log10 relative error</h2>\n<p>Grey: bit-identical; white: unknown; blue → red: 1e-8 → 1. Black frame: source; red frame: first over tolerance; dashed line: amplification onset.</p>\n");
    s.push_str(&heatmap(c, j));
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
    if let Some(i) = j.image {
        let r = &c.records[i];
        let _ = writeln!(
            s,
            "<h2>Final image</h2><p>{}</p>",
            match (&r.image, r.bit_identical) {
                (_, Some(true)) => "bit-identical".to_string(),
                (Some(m), _) => format!(
                    "PSNR {:.2} dB, SSIM {:.4}, relative L2 {}",
                    m.psnr_db,
                    m.ssim,
                    sci(r.rel_l2)
                ),
                _ => format!("relative L2 {}", sci(r.rel_l2)),
            }
        );
    }
    if let Some(im) = images {
        s.push_str(&images_section(im));
    }
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
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn html_is_self_contained_and_marks_the_source() {
        let (c, j) = fixture::judged();
        let h = render_html(&c, &j, None);
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
        // 9 stepped cells (steps 0..=4: sampler.x ×5, unet.mid_block ×4).
        assert_eq!(h.matches("<rect x=").count() - 1, 9);
        assert!(h.contains("stroke=\"#000\" stroke-width=\"2\"><title>step 1 unet.mid_block — FAIL: rel L2 1.00e-3</title>"), "{h}");
        assert!(h.contains("<title>amplification onset: step 2</title>"));
        assert_eq!(h.matches("<polyline").count(), 2);
        assert_eq!(colour(1e-8), "#1e3c8c");
        assert_eq!(colour(1.0), "#ff1e14");
        assert!(!h.contains("Final images"));
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
        let h = render_html(&c, &j, Some(&im));
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
        assert!(render_html(&c, &j, Some(&same)).contains("The images are equal"));
        let other = ImageTensor::from_record(DType::F32, &[3, 1, 2], &bytes(&a[..6])).unwrap();
        assert!(
            ReportImages::from_records(&ta, &other)
                .unwrap_err()
                .contains("differ in size")
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
