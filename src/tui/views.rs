//! Renderers of the drill-down views: layer (error and norms vs step), tensor (both records
//! side by side, histograms, spatial difference map, worst channels), noise (flat-index map of
//! `noise.initial`) and image (A, B and |A−B| in half-block colour).
//!
//! The tensor view is drawn in parts, each a function of the loaded detail alone:
//! the statistics table, the value histograms, the |a−b| map and the worst channels (or,
//! without payloads, the thumbnails).
//!
//! Pure like [`super::render`]: `&App` and a rectangle in, buffer cells out. Pictures use the
//! upper-half block `▀` with the foreground for the upper pixel and the background for the
//! lower one, so a W×H area shows W×2H pixels; without colour they fall back to `░▒▓█`
//! shading of the pixels' brightness.

use super::app::{App, Detail, Loadable, Request, View};
use super::detail::{ChannelDiff, DIFF_LO, Map2, PayloadDiff, TensorDetail, group_digits};
use super::palette::{Palette, SHADES};
use super::render::{put, put_wrapped, set_cell, wrapped_rows};
use crate::analysis::{PairRecord, RecordJudgement, Status};
use crate::report::{ReportImages, sci};
use crate::stats::{HIST_OFFSET, Summary};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Widget};

/// The cells a `w`×`h`-pixel picture fills in `area`, keeping its aspect ratio (a cell is one
/// pixel wide and two pixels tall), from the top left; empty when nothing fits.
pub fn fit(area: Rect, w: usize, h: usize) -> Rect {
    if area.is_empty() || w == 0 || h == 0 {
        return Rect::default();
    }
    let (aw, ah) = (area.width as f64, area.height as f64 * 2.0);
    let s = (aw / w as f64).min(ah / h as f64);
    Rect::new(
        area.x,
        area.y,
        ((w as f64 * s).floor() as u16).clamp(1, area.width),
        ((h as f64 * s / 2.0).ceil() as u16).clamp(1, area.height),
    )
}

/// Draw a picture of `w`×`h` pixels into `area` (scaled to fit, nearest pixel), two pixels
/// per cell; returns the cells it fills. `px` gives a pixel's colour, `None` for no data.
pub fn picture(
    p: &Palette,
    buf: &mut Buffer,
    area: Rect,
    w: usize,
    h: usize,
    px: impl Fn(usize, usize) -> Option<(u8, u8, u8)>,
) -> Rect {
    let out = fit(area, w, h);
    if out.is_empty() {
        return out;
    }
    let (cw, ch) = (out.width, out.height);
    let sample = |cx: u16, py: u16| {
        let x = ((cx as f64 + 0.5) / cw as f64 * w as f64) as usize;
        let y = ((py as f64 + 0.5) / (ch as f64 * 2.0) * h as f64) as usize;
        if y < h { px(x.min(w - 1), y) } else { None }
    };
    for cy in 0..ch {
        for cx in 0..cw {
            let top = sample(cx, cy * 2);
            let bot = sample(cx, cy * 2 + 1);
            let (sym, st) = if p.color() {
                match (top, bot) {
                    (Some(t), Some(b)) => ("▀", Style::new().fg(p.rgb(t)).bg(p.rgb(b))),
                    (Some(t), None) => ("▀", Style::new().fg(p.rgb(t))),
                    (None, Some(b)) => ("▄", Style::new().fg(p.rgb(b))),
                    (None, None) => (" ", Style::new()),
                }
            } else {
                let lum = |c: Option<(u8, u8, u8)>| {
                    c.map_or(0.0, |(r, g, b)| {
                        (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64) / 255.0
                    })
                };
                let l = (lum(top) + lum(bot)) / 2.0;
                (SHADES[((l * 4.999) as usize).min(4)], Style::new())
            };
            set_cell(buf, area, area.x + cx, area.y + cy, sym, st);
        }
    }
    out
}

/// A map of non-negative values as a picture: log scale over `decades` below its maximum,
/// 0 dark, NaN red.
fn map_picture(p: &Palette, buf: &mut Buffer, area: Rect, m: &Map2, decades: f64) -> Rect {
    let max = m.max() as f64;
    picture(p, buf, area, m.width, m.height, |x, y| {
        let v = m.get(x, y) as f64;
        Some(if v.is_nan() {
            (200, 30, 30)
        } else if v <= 0.0 || max <= 0.0 {
            (30, 30, 30)
        } else {
            let t = 1.0 + (v / max).log10() / decades;
            super::palette::viridis(t.clamp(0.0, 1.0))
        })
    })
}

fn heading(p: &Palette, buf: &mut Buffer, area: Rect, y: u16, text: &str) -> u16 {
    put(buf, area, area.x, y, text, p.accent())
}

fn loading(app: &App, req: Option<Request>) -> Result<&Detail, String> {
    match req.and_then(|r| app.detail(r)) {
        Some(Loadable::Ready(d)) => Ok(d),
        Some(Loadable::Loading) => Err("loading…".into()),
        Some(Loadable::Failed(e)) => Err(format!("cannot load: {e}")),
        None => Err("nothing selected".into()),
    }
}

/// Error and norms of the selected row vs sampler step.
pub fn layer(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let Some(a) = app.analysis() else { return };
    let Some(n) = app.current_node() else { return };
    let g = &a.grid;
    let node = &g.nodes[n];
    let keys = app.row_keys(n);
    let mut y = area.y;
    let x = heading(&p, buf, area, y, &format!(" Layer · {} ", node.path));
    put(
        buf,
        area,
        x,
        y,
        &format!(
            "{}{} vs step (log10) · Enter: tensor view of the selected step",
            app.metric().name(),
            if keys.len() > 1 {
                format!(", worst of {} keys", keys.len())
            } else {
                String::new()
            }
        ),
        p.dim(),
    );
    y += 1;
    let mut err: Vec<(f64, f64)> = Vec::new();
    let mut tol: Vec<(f64, f64)> = Vec::new();
    let mut na: Vec<(f64, f64)> = Vec::new();
    let mut nb: Vec<(f64, f64)> = Vec::new();
    let mut identical: Vec<u32> = Vec::new();
    for col in 0..g.columns() {
        let Some(step) = g.step_of(col) else { continue };
        let st = app.stat(n, col);
        let Some(i) = st.pick else { continue };
        let x = step as f64;
        match st.value {
            Some(v) if v > 0.0 && v.is_finite() => err.push((x, v.log10())),
            Some(0.0) => identical.push(step),
            _ => {}
        }
        let rj = &a.judgement.records[i];
        let t = match app.metric() {
            super::model::Metric::RelL2 => Some(rj.tol.rel),
            super::model::Metric::AbsErr => Some(rj.tol.abs),
            super::model::Metric::OverTol => Some(1.0),
            super::model::Metric::Gain => Some(crate::analysis::CREATE_GAIN),
        };
        if let Some(t) = t.filter(|t| *t > 0.0) {
            tol.push((x, t.log10()));
        }
        let s = &a.comparison.records[i].summary;
        let (a_l2, b_l2) = (s.l2_b + s.l2, s.l2_b);
        if a_l2 > 0.0 && a_l2.is_finite() {
            na.push((x, a_l2.log10()));
        }
        if b_l2 > 0.0 && b_l2.is_finite() {
            nb.push((x, b_l2.log10()));
        }
    }
    if err.is_empty() && na.is_empty() {
        put(
            buf,
            area,
            area.x + 1,
            y + 1,
            "no records inside the sampling loop for this key",
            p.dim(),
        );
        return;
    }
    let steps = (
        g.steps.first().copied().unwrap_or(0) as f64,
        g.steps.last().copied().unwrap_or(1).max(1) as f64,
    );
    if !identical.is_empty() {
        // On a row of its own: inside the chart it covered the x axis labels.
        let list: Vec<String> = identical.iter().map(u32::to_string).collect();
        put(
            buf,
            area,
            area.x + 1,
            y,
            &format!("identical at steps {}", list.join(", ")),
            p.dim(),
        );
        y += 1;
    }
    let body = Rect::new(area.x, y, area.width, area.bottom().saturating_sub(y));
    let top_h = body.height * 3 / 5;
    let top = Rect::new(body.x, body.y, body.width, top_h);
    let bottom = Rect::new(body.x, body.y + top_h, body.width, body.height - top_h);
    let cursor_x = g.step_of(app.col()).map(|s| s as f64);
    chart(
        &p,
        buf,
        top,
        steps,
        &[(app.metric().name(), &err, 0), ("tolerance", &tol, 2)],
        cursor_x,
    );
    chart(
        &p,
        buf,
        bottom,
        steps,
        &[("‖A‖", &na, 0), ("‖B‖", &nb, 1)],
        cursor_x,
    );
}

/// (name, points, colour index) of a chart line.
type Series<'a> = (&'a str, &'a Vec<(f64, f64)>, usize);

/// A log10-scaled line chart of several series over the step range.
fn chart(
    p: &Palette,
    buf: &mut Buffer,
    area: Rect,
    (x0, x1): (f64, f64),
    series: &[Series<'_>],
    cursor: Option<f64>,
) {
    if area.height < 3 || area.width < 10 {
        return;
    }
    let ys = series.iter().flat_map(|(_, s, _)| s.iter().map(|q| q.1));
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in ys {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        lo = -1.0;
        hi = 0.0;
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let cursor_line: Vec<(f64, f64)> = cursor.map_or(Vec::new(), |c| vec![(c, lo), (c, hi)]);
    let mut sets: Vec<Dataset> = series
        .iter()
        .map(|(name, data, colour)| {
            Dataset::default()
                .name(name.to_string())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(p.series(*colour)))
                .data(data)
        })
        .collect();
    if !cursor_line.is_empty() {
        sets.push(
            Dataset::default()
                .marker(Marker::Dot)
                .graph_type(GraphType::Line)
                .style(p.dim())
                .data(&cursor_line),
        );
    }
    let mid = ((lo + hi) / 2.0).round();
    let ylabels: Vec<String> = if mid > lo && mid < hi {
        vec![format!("1e{lo}"), format!("1e{mid}"), format!("1e{hi}")]
    } else {
        vec![format!("1e{lo}"), format!("1e{hi}")]
    };
    let x1 = x1.max(x0 + 1.0);
    let xlabels = step_labels(x0, x1);
    Chart::new(sets)
        .hidden_legend_constraints((Constraint::Percentage(50), Constraint::Percentage(60)))
        .x_axis(
            Axis::default()
                .title("step")
                .bounds([x0, x1])
                .labels(xlabels)
                .style(p.dim()),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels(ylabels)
                .style(p.dim()),
        )
        .render(area, buf);
}

/// Labels of a step axis from `x0` to `x1`: the ends and, when it is a step of its own, the
/// middle (so two steps read `0 … 1`, never `0 … 1 … 1`). Ratatui spreads them evenly.
fn step_labels(x0: f64, x1: f64) -> Vec<String> {
    let mid = ((x0 + x1) / 2.0).floor();
    let exact = (x1 - x0) % 2.0 == 0.0;
    if exact && mid > x0 && mid < x1 {
        vec![format!("{x0}"), format!("{mid}"), format!("{x1}")]
    } else {
        vec![format!("{x0}"), format!("{x1}")]
    }
}

fn spark(values: &[u64]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    values
        .iter()
        .map(|&v| {
            if v == 0 {
                ' '
            } else {
                BARS[1 + ((v as f64 / max * 7.999) as usize).min(7)]
            }
        })
        .collect()
}

/// The selected record of both traces.
pub fn tensor(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let Some(a) = app.analysis() else { return };
    let rec = app.current_record();
    let mut y = area.y;
    let Some(i) = rec else {
        heading(&p, buf, area, y, " Tensor ");
        put(
            buf,
            area,
            area.x + 1,
            y + 1,
            "no record at the selected cell",
            p.dim(),
        );
        return;
    };
    let (r, rj) = (&a.comparison.records[i], &a.judgement.records[i]);
    let x = heading(&p, buf, area, y, &format!(" Tensor · {} ", r.label()));
    let x = put(buf, area, x, y, rj.status.name(), p.status(Some(rj.status)));
    put(
        buf,
        area,
        x,
        y,
        &format!(" · basis {:?}", r.basis).to_lowercase(),
        p.dim(),
    );
    y += 1;
    let d = match loading(app, Some(Request::Tensor(i))) {
        Ok(Detail::Tensor(d)) => d,
        Ok(_) => return,
        Err(e) => {
            put(buf, area, area.x + 1, y, &e, p.dim());
            return;
        }
    };
    // Left: statistics side by side.
    let left_w = 44.min(area.width);
    let left = Rect::new(area.x, y, left_w, area.bottom().saturating_sub(y));
    let right = Rect::new(
        area.x + left_w + 1,
        y,
        area.width.saturating_sub(left_w + 1),
        left.height,
    );
    stats_table(&p, buf, left, d, r, rj);
    // Right: histograms, the map, worst channels.
    if right.width < 16 {
        return;
    }
    let ry = histograms(&p, buf, right, right.y, &d.a.summary, &d.b.summary);
    match (&d.diff, &d.thumb_diff) {
        (Some(diff), _) => {
            let ry = diff_map(&p, buf, right, ry, diff);
            worst_channels(&p, buf, right, ry, &diff.channels);
        }
        (None, Some(td)) => thumbnails(&p, buf, right, ry, d, td),
        (None, None) => {
            put(
                buf,
                right,
                right.x,
                ry,
                "no payloads and no thumbnails: record this key at full fidelity to see where it differs",
                p.dim(),
            );
        }
    }
}

/// The statistics of both sides and the pair's metrics, as a table.
fn stats_table(
    p: &Palette,
    buf: &mut Buffer,
    left: Rect,
    d: &TensorDetail,
    r: &PairRecord,
    rj: &RecordJudgement,
) {
    let (sa, sb) = (&d.a.summary, &d.b.summary);
    let f = |v: f64| {
        if v == 0.0 {
            "0".to_string()
        } else if v.abs() >= 1e-3 && v.abs() < 1e5 {
            format!("{v:.5}")
        } else {
            format!("{v:.3e}")
        }
    };
    let mut rows: Vec<(String, String, String, String)> = vec![
        ("".into(), "A".into(), "B".into(), "A−B".into()),
        (
            "dtype".into(),
            d.a.dtype.name().into(),
            d.b.dtype.name().into(),
            String::new(),
        ),
        (
            "stored".into(),
            d.a.fidelity.clone(),
            d.b.fidelity.clone(),
            String::new(),
        ),
        ("min".into(), f(sa.min), f(sb.min), f(sa.min - sb.min)),
        ("max".into(), f(sa.max), f(sb.max), f(sa.max - sb.max)),
        ("mean".into(), f(sa.mean), f(sb.mean), f(sa.mean - sb.mean)),
        ("std".into(), f(sa.std), f(sb.std), f(sa.std - sb.std)),
        ("L2".into(), f(sa.l2), f(sb.l2), f(sa.l2 - sb.l2)),
        (
            "abs max".into(),
            f(sa.abs_max),
            f(sb.abs_max),
            String::new(),
        ),
        (
            "NaN/±Inf".into(),
            format!("{}/{}/{}", sa.nan, sa.pos_inf, sa.neg_inf),
            format!("{}/{}/{}", sb.nan, sb.pos_inf, sb.neg_inf),
            String::new(),
        ),
        (
            "zeros".into(),
            sa.zeros.to_string(),
            sb.zeros.to_string(),
            String::new(),
        ),
    ];
    rows.push((
        "shape".into(),
        format!("{:?}", d.a.shape),
        String::new(),
        String::new(),
    ));
    for (k, (name, va, vb, vd)) in rows.iter().enumerate() {
        let yy = left.y + k as u16;
        let st = if k == 0 { p.accent() } else { Style::new() };
        let line = format!("{name:<9}{va:>11} {vb:>11} {vd:>10}");
        put(buf, left, left.x, yy, &line, st);
    }
    let mut yy = left.y + rows.len() as u16 + 1;
    let mut metric = |name: &str, v: String| {
        put(
            buf,
            left,
            left.x,
            yy,
            &format!("{name:<14}{v}"),
            Style::new(),
        );
        yy += 1;
    };
    metric("rel L2", sci(r.rel_l2));
    metric("max |a−b|", sci(r.abs_error));
    if let Some(m) = &r.payload {
        metric("mean |a−b|", sci(Some(m.mean_abs)));
        metric("cosine", format!("{:.9}", m.cosine));
        if let (Some(u), Some(q)) = (m.ulp_max, m.ulp_p99) {
            metric("ULP max / p99", format!("{u} / {q}"));
        }
        metric(
            "first diff at",
            m.first_diff_index
                .map_or("-".into(), |k| format!("flat index {}", group_digits(k))),
        );
    }
    metric(
        "tolerance",
        format!(
            "rel {} abs {}",
            sci(Some(rj.tol.rel)),
            sci(Some(rj.tol.abs))
        ),
    );
    if let Some(note) = &d.note {
        put(buf, left, left.x, yy, note, p.dim());
    }
}

/// The log2|x| histograms of both sides over the bins either uses; returns the next free row.
fn histograms(
    p: &Palette,
    buf: &mut Buffer,
    right: Rect,
    y: u16,
    sa: &Summary,
    sb: &Summary,
) -> u16 {
    let mut ry = y;
    // log2|x| histograms over the bins either side uses.
    let used: Vec<usize> = (0..sa.log2_hist.len().max(sb.log2_hist.len()))
        .filter(|&k| {
            sa.log2_hist.get(k).copied().unwrap_or(0) + sb.log2_hist.get(k).copied().unwrap_or(0)
                > 0
        })
        .collect();
    if let (Some(&k0), Some(&k1)) = (used.first(), used.last()) {
        let span = k1 - k0 + 1;
        let take = span.min(right.width.saturating_sub(4) as usize);
        let pick = |h: &Vec<u64>| -> Vec<u64> {
            (k0..k0 + take)
                .map(|k| h.get(k).copied().unwrap_or(0))
                .collect()
        };
        heading(
            p,
            buf,
            right,
            ry,
            &format!(
                "values: log2|x| from 2^{} to 2^{}",
                k0 as i64 - HIST_OFFSET,
                (k0 + take - 1) as i64 - HIST_OFFSET
            ),
        );
        ry += 1;
        let x = put(buf, right, right.x, ry, "A ", Style::new());
        put(
            buf,
            right,
            x,
            ry,
            &spark(&pick(&sa.log2_hist)),
            Style::new().fg(p.series(0)),
        );
        ry += 1;
        let x = put(buf, right, right.x, ry, "B ", Style::new());
        put(
            buf,
            right,
            x,
            ry,
            &spark(&pick(&sb.log2_hist)),
            Style::new().fg(p.series(1)),
        );
        ry += 2;
    }
    ry
}

/// The |a−b| histogram and where the differences are; returns the next free row.
fn diff_map(p: &Palette, buf: &mut Buffer, right: Rect, y: u16, diff: &PayloadDiff) -> u16 {
    let mut ry = y;
    let used: Vec<usize> = (0..diff.hist.len()).filter(|&k| diff.hist[k] > 0).collect();
    heading(
        p,
        buf,
        right,
        ry,
        &format!(
            "|a−b|: {} of {} differ · {} equal",
            group_digits(diff.differing),
            group_digits(diff.count),
            group_digits(diff.zero)
        ),
    );
    ry += 1;
    if let (Some(&k0), Some(&k1)) = (used.first(), used.last()) {
        let x = put(
            buf,
            right,
            right.x,
            ry,
            &format!("1e{} ", k0 as i32 + DIFF_LO),
            p.dim(),
        );
        let x = put(
            buf,
            right,
            x,
            ry,
            &spark(&diff.hist[k0..=k1]),
            Style::new().fg(p.series(2)),
        );
        put(
            buf,
            right,
            x,
            ry,
            &format!(" 1e{}", k1 as i32 + DIFF_LO + 1),
            p.dim(),
        );
        ry += 1;
    }
    ry += 1;
    let ch_lines = diff.channels.len().min(super::detail::WORST) as u16;
    let map_h = right.bottom().saturating_sub(ry + 2 + ch_lines + 1);
    heading(
        p,
        buf,
        right,
        ry,
        &format!(
            "where: max |a−b| over {}×{} (bright = max {}; 4 decades)",
            diff.map.width,
            diff.map.height,
            sci(Some(diff.max_abs))
        ),
    );
    ry += 1;
    let pic = map_picture(
        p,
        buf,
        Rect::new(right.x, ry, right.width, map_h),
        &diff.map,
        4.0,
    );
    ry += pic.height + 1;
    ry
}

/// The channels that differ most.
fn worst_channels(p: &Palette, buf: &mut Buffer, right: Rect, y: u16, channels: &[ChannelDiff]) {
    let mut ry = y;
    if !channels.is_empty() {
        heading(
            p,
            buf,
            right,
            ry,
            "worst channels: channel · rel L2 · max |a−b|",
        );
        ry += 1;
        for c in channels {
            put(
                buf,
                right,
                right.x,
                ry,
                &format!(
                    "  {:>5} · {} · {}",
                    c.channel,
                    sci(Some(c.rel_l2)),
                    sci(Some(c.max_abs))
                ),
                Style::new(),
            );
            ry += 1;
        }
    }
}

/// Without payloads: the thumbnails of both sides and their difference.
fn thumbnails(p: &Palette, buf: &mut Buffer, right: Rect, y: u16, d: &TensorDetail, td: &Map2) {
    let mut ry = y;
    heading(
        p,
        buf,
        right,
        ry,
        "no payloads: thumbnails (channel mean |x|) A · B · |A−B|",
    );
    ry += 1;
    let h = right.bottom().saturating_sub(ry);
    let w3 = right.width / 3;
    for (k, m) in [
        d.a.thumbnail.as_ref().and_then(|t| {
            t.item(0).map(|v| Map2 {
                width: t.width as usize,
                height: t.height as usize,
                values: v.to_vec(),
            })
        }),
        d.b.thumbnail.as_ref().and_then(|t| {
            t.item(0).map(|v| Map2 {
                width: t.width as usize,
                height: t.height as usize,
                values: v.to_vec(),
            })
        }),
        Some(td.clone()),
    ]
    .iter()
    .enumerate()
    {
        if let Some(m) = m {
            map_picture(
                p,
                buf,
                Rect::new(right.x + k as u16 * w3, ry, w3.saturating_sub(1), h),
                m,
                3.0,
            );
        }
    }
}

/// Where `noise.initial` differs, by flat index.
pub fn noise(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let y = area.y;
    let x = heading(&p, buf, area, y, " Noise · noise.initial ");
    let Some(i) = app.noise_record() else {
        put(
            buf,
            area,
            x,
            y,
            "no noise.initial record pairs up in the two traces",
            p.dim(),
        );
        return;
    };
    let d = match loading(app, Some(Request::Noise(i))) {
        Ok(Detail::Noise(d)) => d,
        Ok(_) => return,
        Err(e) => {
            put(buf, area, x, y, &e, p.dim());
            return;
        }
    };
    put(
        buf,
        area,
        x,
        y,
        &format!("{:?} · {} elements", d.shape, group_digits(d.count)),
        p.dim(),
    );
    let st = if d.differing == 0 {
        p.status(Some(Status::Identical))
    } else {
        p.status(Some(Status::Fail))
    };
    let verdict = format!("{}: {}", d.diagnosis.class.name(), d.diagnosis.summary);
    let per_elem_text = |per_px: usize| {
        let per_elem = (d.count as f64 / d.buckets.len().max(1) as f64).ceil() as usize * per_px;
        format!(
            "each pixel: {} consecutive elements, row-major from the top left · dark: identical · bright: all differ",
            group_digits(per_elem as u64)
        )
    };
    // The diagnosis and its fix come first: they get every row but the caption's and three
    // of the map's; the map takes what is left.
    let caption_rows = wrapped_rows(area, &per_elem_text(1));
    let room = area.height.saturating_sub(1 + 1 + caption_rows + 3).max(1);
    let y2 = put_wrapped(buf, area, y + 1, room, &verdict, st) + 1;
    // Buckets laid out row-major over the picture: each pixel is a flat-index range.
    let pic_area = Rect::new(
        area.x + 1,
        y2,
        area.width.saturating_sub(2),
        area.bottom().saturating_sub(y2 + caption_rows),
    );
    let npx_w = pic_area.width as usize;
    let npx_h = pic_area.height as usize * 2;
    let buckets = &d.buckets;
    let total = (npx_w * npx_h).max(1);
    let per_px = buckets.len().div_ceil(total).max(1);
    let used = buckets.len().div_ceil(per_px);
    let w = npx_w.min(used).max(1);
    let h = used.div_ceil(w).max(1);
    let pic = picture(&p, buf, pic_area, w, h, |x, y| {
        let k = (y * w + x) * per_px;
        if k >= buckets.len() {
            return None;
        }
        let f = buckets[k..(k + per_px).min(buckets.len())]
            .iter()
            .fold(0.0f32, |m, &v| m.max(v));
        Some(if f <= 0.0 {
            (30, 30, 30)
        } else {
            super::palette::viridis(0.25 + 0.75 * f as f64)
        })
    });
    let cy = pic
        .bottom()
        .max(y2)
        .min(area.bottom().saturating_sub(caption_rows));
    put_wrapped(
        buf,
        Rect::new(area.x, area.y, area.width, area.height),
        cy,
        caption_rows,
        &per_elem_text(per_px),
        p.dim(),
    );
}

/// The final images and their difference.
pub fn image(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let y = area.y;
    let x = heading(&p, buf, area, y, " Image ");
    let Some(a) = app.analysis() else { return };
    let Some(i) = a.judgement.image else {
        put(
            buf,
            area,
            x,
            y,
            "no image record pairs up in the two traces",
            p.dim(),
        );
        return;
    };
    let r = &a.comparison.records[i];
    let metrics = match (&r.image, r.bit_identical) {
        (_, Some(true)) => "bit-identical".to_string(),
        (Some(m), _) => format!("PSNR {:.1} dB · SSIM {:.4}", m.psnr_db, m.ssim),
        _ => format!("rel L2 {}", sci(r.rel_l2)),
    };
    let x = put(
        buf,
        area,
        x,
        y,
        &metrics,
        Style::new().add_modifier(Modifier::BOLD),
    );
    let d = match loading(app, Some(Request::Image(i))) {
        Ok(Detail::Image(d)) => d,
        Ok(_) => return,
        Err(e) => {
            put(buf, area, x + 1, y, &e, p.dim());
            return;
        }
    };
    let im = &d.images;
    put(
        buf,
        area,
        x,
        y,
        &format!(
            " · {}×{} · batch item {} of {} · |A−B| ×{:.1} (max {:.3})",
            im.width, im.height, im.index, im.batch, im.gain, im.max_abs
        ),
        p.dim(),
    );
    let (w, hh) = (im.width as usize, im.height as usize);
    for ((name, data), r) in image_panels(&d.images).into_iter().zip(image_areas(area)) {
        put(buf, area, r.x, r.y.saturating_sub(1), name, p.accent());
        picture(&p, buf, r, w, hh, |x, y| {
            let o = (y * w + x) * 3;
            data.get(o..o + 3).map(|c| (c[0], c[1], c[2]))
        });
    }
}

/// The image view's three pictures: A, B and the amplified |A−B| (RGB8 rows).
pub fn image_panels(im: &ReportImages) -> [(&'static str, &[u8]); 3] {
    [("A", &im.a), ("B", &im.b), ("|A−B|", &im.diff)]
}

/// Where the image view draws its three pictures in `area` (the view's body), side by side
/// below the two heading rows.
pub fn image_areas(area: Rect) -> [Rect; 3] {
    let w3 = area.width / 3;
    let body_y = area.y + 2;
    let h = area.bottom().saturating_sub(body_y);
    [0u16, 1, 2].map(|k| Rect::new(area.x + k * w3, body_y, w3.saturating_sub(1), h))
}

/// The image view's loaded images, when the image view is showing them.
pub fn shown_images(app: &App) -> Option<&ReportImages> {
    if app.view() != View::Image || app.help() || app.prompt().is_some() {
        return None;
    }
    let i = app.analysis()?.judgement.image?;
    match loading(app, Some(Request::Image(i))) {
        Ok(Detail::Image(d)) => Some(&d.images),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::report::fixture::comparison as fixture;
    use crate::tui::app::Phase;
    use crate::tui::detail::{NoiseDetail, Side, TensorDetail, payload_diff};
    use crate::tui::palette::ColorMode;
    use ratatui::style::Color;

    fn app() -> App {
        crate::tui::testing::app(ColorMode::TrueColor)
    }

    fn text(buf: &Buffer) -> String {
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    fn draw(app: &mut App) -> Buffer {
        let area = Rect::new(0, 0, 100, 30);
        app.resize(area);
        let mut buf = Buffer::empty(area);
        super::super::render::render(app, area, &mut buf);
        buf
    }

    #[test]
    fn picture_uses_half_blocks() {
        let p = Palette::new(ColorMode::TrueColor);
        let mut buf = Buffer::empty(Rect::new(0, 0, 4, 2));
        // 4×4 pixels: top row red, second row blue, rest green.
        let r = picture(&p, &mut buf, Rect::new(0, 0, 4, 2), 4, 4, |_, y| {
            Some(match y {
                0 => (255, 0, 0),
                1 => (0, 0, 255),
                _ => (0, 255, 0),
            })
        });
        assert_eq!(r, Rect::new(0, 0, 4, 2));
        let c = &buf[(1, 0)];
        assert_eq!(c.symbol(), "▀");
        assert_eq!((c.fg, c.bg), (Color::Rgb(255, 0, 0), Color::Rgb(0, 0, 255)));
        assert_eq!(buf[(1, 1)].fg, Color::Rgb(0, 255, 0));
        let n = Palette::new(ColorMode::NoColor);
        let mut buf = Buffer::empty(Rect::new(0, 0, 4, 2));
        picture(&n, &mut buf, Rect::new(0, 0, 4, 2), 2, 2, |_, _| {
            Some((255, 255, 255))
        });
        assert_eq!(buf[(0, 0)].symbol(), "█");
        assert_eq!(buf[(0, 0)].bg, Color::Reset);
    }

    #[test]
    fn layer_view_charts() {
        let mut app = app();
        crate::tui::testing::press(&mut app, '2');
        let buf = draw(&mut app);
        let t = text(&buf);
        assert!(t.contains("Layer · unet.mid_block"), "{t}");
        assert!(t.contains("identical at steps 0"), "{t}");
        assert!(t.contains("‖A‖"), "{t}");
        // The braille error line is drawn in the first series colour.
        let drawn = (0..100)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .any(|q| {
                let c = &buf[q];
                c.symbol()
                    .chars()
                    .all(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch))
                    && c.fg == Color::Rgb(110, 190, 255)
            });
        assert!(drawn);
    }

    fn meta(values: &[f32]) -> crate::trace::RecordMeta {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        crate::trace::RecordMeta {
            key: "unet.mid_block".into(),
            step: Some(1),
            eval: 0,
            order: 4,
            dtype: DType::F32,
            shape: vec![1, 2, 2, 2],
            fidelity: crate::trace::Fidelity::Full,
            summary: crate::stats::summarize(DType::F32, &bytes),
            sketch: None,
            thumbnail: None,
            payload: None,
        }
    }

    #[test]
    fn tensor_view_shows_both_sides_and_the_map() {
        let mut app = app();
        let a = [0.0f32, 1.0, 2.0, 3.0, 1.0, 1.5, 1.0, 1.0];
        let mut b = a;
        b[5] = 1.0;
        let (ma, mb) = (meta(&a), meta(&b));
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let detail = TensorDetail {
            record: 4,
            label: "step 1 unet.mid_block".into(),
            a: Side::of(&ma),
            b: Side::of(&mb),
            diff: Some(
                payload_diff(
                    &[1, 2, 2, 2],
                    DType::F32,
                    &bytes(&a),
                    DType::F32,
                    &bytes(&b),
                )
                .unwrap(),
            ),
            thumb_diff: None,
            note: None,
        };
        crate::tui::testing::press(&mut app, '3');
        app.set_detail(Request::Tensor(4), Ok(Detail::Tensor(Box::new(detail))));
        let buf = draw(&mut app);
        let t = text(&buf);
        assert!(t.contains("Tensor · step 1 unet.mid_block FAIL"), "{t}");
        assert!(t.contains("mean"), "{t}");
        assert!(t.contains("|a−b|: 1 of 8 differ"), "{t}");
        assert!(t.contains("worst channels"), "{t}");
        assert!(t.contains("where: max |a−b| over 2×2"), "{t}");
        // Loading state: what the tensor view shows before the detail arrives.
        let mut app = self::app();
        crate::tui::testing::press(&mut app, '3');
        let t = text(&draw(&mut app));
        assert!(t.contains("loading…"), "{t}");
    }

    #[test]
    fn noise_view_shows_the_prefix() {
        let mut app = app();
        crate::tui::testing::press(&mut app, '4');
        let mut buckets = vec![0.0f32; 100];
        for b in buckets.iter_mut().skip(30) {
            *b = 1.0;
        }
        let d = NoiseDetail {
            record: 0,
            count: 100,
            shape: vec![1, 4, 5, 5],
            first_diff: Some(30),
            differing: 70,
            buckets,
            diagnosis: crate::analysis::noise::diagnose(
                &[100],
                &(0..100).map(|i| i as f64).collect::<Vec<_>>(),
                &[100],
                &(0..100)
                    .map(|i| i as f64 + f64::from(i >= 30))
                    .collect::<Vec<_>>(),
            ),
        };
        app.set_detail(Request::Noise(0), Ok(Detail::Noise(Box::new(d))));
        let buf = draw(&mut app);
        let t = text(&buf);
        assert!(
            t.contains("different: The noise differs from flat index 30"),
            "{t}"
        );
        // The map starts below the wrapped verdict; its first pixel is dark (identical).
        let row = (0..buf.area.height)
            .find(|&y| buf[(1, y)].symbol() == "▀")
            .expect("a map row");
        assert!(row > 4, "the map overlaps the verdict:\n{t}");
        let dark = &buf[(1, row)];
        assert_eq!(dark.symbol(), "▀");
        assert_eq!(dark.fg, Color::Rgb(30, 30, 30));
    }

    fn noise_detail(app: &mut App) -> String {
        let mut buckets = vec![0.0f32; 100];
        for b in buckets.iter_mut().skip(30) {
            *b = 1.0;
        }
        let diagnosis = crate::analysis::noise::diagnose(
            &[100],
            &(0..100).map(|i| i as f64).collect::<Vec<_>>(),
            &[100],
            &(0..100)
                .map(|i| i as f64 + f64::from(i >= 30))
                .collect::<Vec<_>>(),
        );
        let text = format!("{}: {}", diagnosis.class.name(), diagnosis.summary);
        let d = NoiseDetail {
            record: 0,
            count: 100,
            shape: vec![1, 4, 5, 5],
            first_diff: Some(30),
            differing: 70,
            buckets,
            diagnosis,
        };
        app.set_detail(Request::Noise(0), Ok(Detail::Noise(Box::new(d))));
        text
    }

    /// #24: at 80×24 the noise view cut its diagnosis, fix advice included.
    #[test]
    fn noise_view_shows_the_whole_advice() {
        use crate::tui::testing::{SIZES, draw, screen_text, snapshot, words};
        for (w, h) in SIZES {
            let mut app = app();
            crate::tui::testing::press(&mut app, '4');
            let text = noise_detail(&mut app);
            let buf = draw(&mut app, w, h);
            let shown = words(&buf);
            let want = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(shown.contains(&want), "{w}×{h}:\n{}", screen_text(&buf));
            assert!(
                shown.contains("bright: all differ"),
                "{w}×{h}: the caption is cut:\n{}",
                screen_text(&buf)
            );
            // The map is still there.
            assert!(
                (0..h).any(|y| buf[(1, y)].symbol() == "▀"),
                "{}",
                screen_text(&buf)
            );
            snapshot(&format!("noise-{w}x{h}"), &screen_text(&buf));
        }
    }

    /// #24: with two steps the layer chart's x axis read `0 … 1 … 1`.
    #[test]
    fn layer_chart_axis_labels_are_steps() {
        assert_eq!(step_labels(0.0, 1.0), ["0", "1"]);
        assert_eq!(step_labels(0.0, 4.0), ["0", "2", "4"]);
        assert_eq!(step_labels(0.0, 3.0), ["0", "3"]);
        assert_eq!(step_labels(5.0, 25.0), ["5", "15", "25"]);
    }

    /// #24: the layer chart's x axis and its tolerance line, at both sizes.
    #[test]
    fn layer_chart_stays_in_its_plot() {
        use crate::tui::testing::{SIZES, draw, screen_text, snapshot};
        for (w, h) in SIZES {
            // Two steps: the axis reads 0 and 1, once each.
            let mut c = fixture();
            c.records.retain(|r| r.step.is_none_or(|s| s <= 1));
            let mut two = app();
            two.set_comparison(c, Phase::Done);
            crate::tui::testing::press(&mut two, '2');
            let buf = draw(&mut two, w, h);
            let t = screen_text(&buf);
            let axis: Vec<&str> = t
                .lines()
                .filter(|l| l.trim_start().starts_with('0'))
                .collect();
            assert!(
                axis.iter()
                    .all(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "1"]),
                "{w}×{h}: {axis:?}\n{t}"
            );
            // Five steps: every braille cell of the tolerance line lies inside the plot, right
            // of the y axis and above the x axis.
            let mut app = app();
            crate::tui::testing::press(&mut app, '2');
            let buf = draw(&mut app, w, h);
            let t = screen_text(&buf);
            let tol_colour = app.palette().series(2);
            let axis_x = (0..w)
                .find(|&x| (1..h).any(|y| buf[(x, y)].symbol() == "│"))
                .expect("a y axis");
            let axis_y = (0..h)
                .find(|&y| buf[(axis_x, y)].symbol() == "└")
                .expect("an x axis");
            let mut drawn = 0;
            for y in 0..h {
                for x in 0..w {
                    let c = &buf[(x, y)];
                    let braille = c
                        .symbol()
                        .chars()
                        .all(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch));
                    if braille && c.fg == tol_colour {
                        drawn += 1;
                        assert!(
                            x > axis_x && y < axis_y,
                            "{w}×{h}: tolerance at ({x}, {y}) outside the plot:\n{t}"
                        );
                    }
                }
            }
            assert!(drawn > 0, "{w}×{h}: no tolerance line:\n{t}");
            // The axis labels are not covered: the first chart's label row starts with 0.
            let labels = t
                .lines()
                .skip_while(|l| !l.trim_start().starts_with('└'))
                .nth(1)
                .unwrap_or_default();
            assert_eq!(
                labels.split_whitespace().collect::<Vec<_>>(),
                ["0", "2", "4"],
                "{w}×{h}:\n{t}"
            );
            assert!(t.contains("identical at steps 0"), "{t}");
            snapshot(&format!("layer-{w}x{h}"), &t);
        }
    }
}
