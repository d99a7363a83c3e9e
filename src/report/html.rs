//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network) with
//! the verdict, a step × layer heatmap of log10 relative error (first exceedance, source and
//! amplification onset marked), the latent error curve and the per-step worst error, the key
//! table and the failing records.

use super::{failing, key_rows, sci, xml_escape as esc};
use crate::analysis::{Comparison, Judgement, Status};
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

pub fn render_html(c: &Comparison, j: &Judgement) -> String {
    let v = &j.verdict;
    let mut s = String::new();
    let (mark, cls) = match v.exit_code {
        0 => ("within tolerance", "ok"),
        1 => ("diverges", "bad"),
        _ => ("not comparable", "warn"),
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
        let h = render_html(&c, &j);
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
    }
}
