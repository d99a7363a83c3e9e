//! Renderers of the overview and the chrome: title bar, summary pane, heatmap, legend, cell
//! detail, footer, prompts and the help overlay.
//!
//! Every function here is pure: it reads an [`App`] and writes a ratatui [`Buffer`], nothing
//! else (the caller owns the terminal). All writes go through [`put`], which clips to the given
//! rectangle and the buffer, so no terminal size, however small, makes a renderer panic.

use super::app::{App, Pane, Phase, Prompt, View};
use super::keys::{footer_items, help_lines};
use super::layout::Layout;
use super::model::{CellStat, MARK_FIRST, MARK_ONSET, MARK_SOURCE, Metric};
use super::palette::{Palette, SHADES};
use super::views;
use crate::analysis::Status;
use crate::inspect::human_bytes;
use crate::report::sci;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};

/// Draw the whole screen.
pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let area = area.intersection(buf.area);
    if area.is_empty() {
        return;
    }
    let l = Layout::new(area, app);
    title(app, l.title, buf);
    match app.view() {
        View::Overview => {
            super::summary::draw(
                &super::summary::lines(app, l.summary.width, l.explain, l.compact),
                l.summary,
                buf,
            );
            heatmap(app, &l, buf);
            legend(app, l.legend, buf);
            cell_detail(app, l.detail, buf);
        }
        View::Layer => views::layer(app, l.body, buf),
        View::Tensor => views::tensor(app, l.body, buf),
        View::Noise => views::noise(app, l.body, buf),
        View::Image => views::image(app, l.body, buf),
    }
    footer(app, l.footer, buf);
    if app.help() {
        help(app, area, buf);
    }
}

/// Write `text` at (x, y), clipped to `area` and the buffer; returns the x after it. Control
/// characters (from keys, paths or header strings of the traces) are shown escaped, `\x1b`,
/// rather than dropped: every string of the TUI goes through here.
pub fn put(buf: &mut Buffer, area: Rect, x: u16, y: u16, text: &str, style: Style) -> u16 {
    let area = area.intersection(buf.area);
    if y < area.y || y >= area.bottom() || x >= area.right() || x < area.x {
        return x;
    }
    let max = (area.right() - x) as usize;
    buf.set_stringn(x, y, crate::escape::printable(text), max, style)
        .0
}

/// Write `text` word-wrapped to the area's width less one column each side, from row `y`, at
/// most `rows` rows; when it needs more, the last row ends in `…`. Returns the row after the
/// last one written.
pub fn put_wrapped(
    buf: &mut Buffer,
    area: Rect,
    y: u16,
    rows: u16,
    text: &str,
    style: Style,
) -> u16 {
    let width = area.width.saturating_sub(2).max(1) as usize;
    let wrapped = super::summary::wrap(&[(text.to_string(), style)], width, 0);
    let shown = wrapped.len().min(rows as usize);
    for (k, line) in wrapped.iter().take(shown).enumerate() {
        let mut t: String = line.iter().map(|(s, _)| s.as_str()).collect();
        if k + 1 == shown && shown < wrapped.len() {
            if t.chars().count() >= width {
                t.pop();
            }
            t.push('…');
        }
        put(buf, area, area.x + 1, y + k as u16, &t, style);
    }
    y + shown as u16
}

/// Rows `text` needs when word-wrapped by [`put_wrapped`] in `area`.
pub fn wrapped_rows(area: Rect, text: &str) -> u16 {
    let width = area.width.saturating_sub(2).max(1) as usize;
    super::summary::wrap(&[(text.to_string(), Style::new())], width, 0).len() as u16
}

/// Fill a rectangle's cells with `style` and a blank symbol.
pub fn clear(buf: &mut Buffer, area: Rect, style: Style) {
    let area = area.intersection(buf.area);
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            if let Some(c) = buf.cell_mut((x, y)) {
                c.reset();
                c.set_symbol(" ").set_style(style);
            }
        }
    }
}

/// Set one cell, if inside `area` and the buffer.
pub fn set_cell(buf: &mut Buffer, area: Rect, x: u16, y: u16, sym: &str, style: Style) {
    if !(x >= area.x && x < area.right() && y >= area.y && y < area.bottom()) {
        return;
    }
    if let Some(c) = buf.cell_mut((x, y)) {
        c.set_symbol(sym).set_style(style);
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn put_shows_control_characters_escaped() {
        let area = Rect::new(0, 0, 40, 1);
        let mut buf = Buffer::empty(area);
        put(&mut buf, area, 0, 0, "k\u{1b}[2J\nx", Style::default());
        let row: String = (0..40).map(|x| buf[(x, 0)].symbol().to_string()).collect();
        assert!(row.starts_with("k\\x1b[2J\\nx"), "{row:?}");
    }
}

/// `text` in at most `width` columns, cut on the left (`…` marks the cut): tree labels, whose
/// indentation and own name are at the end.
pub fn fit_left(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width || width <= 1 {
        return text.to_string();
    }
    let tail: String = text.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// A dotted key path in at most `width` columns, shortened in the middle so that rows which
/// differ only in their block (`down_blocks.1.attentions.0` …) stay apart: first the inner
/// names are cut to their first word's first four characters (`transformer_blocks` → `tran`),
/// from the right, keeping the first and last segment and every index; only when that is not
/// enough are characters cut from the middle (`…`), keeping both ends.
pub fn fit_path(path: &str, width: usize) -> String {
    let len = |v: &[String]| v.iter().map(|s| s.chars().count()).sum::<usize>() + v.len() - 1;
    let mut segs: Vec<String> = path.split('.').map(str::to_string).collect();
    if len(&segs) <= width {
        return path.to_string();
    }
    let inner: Vec<usize> = (1..segs.len().saturating_sub(1))
        .filter(|&i| !segs[i].chars().all(|c| c.is_ascii_digit()))
        .collect();
    // From the right: the deeper names are the generic ones (`transformer_blocks`), the
    // first ones say where in the model (`down_blocks`), and every row shortens alike.
    for i in inner.into_iter().rev() {
        let word = segs[i].split('_').next().unwrap_or_default();
        segs[i] = word.chars().take(4).collect();
        if len(&segs) <= width {
            return segs.join(".");
        }
    }
    let short = segs.join(".");
    let n = short.chars().count();
    if width <= 1 {
        return short;
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let h: String = short.chars().take(head).collect();
    let t: String = short.chars().skip(n - tail).collect();
    format!("{h}…{t}")
}

/// Progress and state of the background work, for the title bar.
pub fn status_text(app: &App) -> String {
    let k = app.counts();
    match app.phase() {
        Phase::Summaries => "reading summaries…".into(),
        Phase::Payloads => {
            let pct = if k.bytes_total > 0 {
                100.0 * k.bytes_done as f64 / k.bytes_total as f64
            } else if k.pairs_total > 0 {
                100.0 * k.pairs_done as f64 / k.pairs_total as f64
            } else {
                0.0
            };
            format!(
                "payload metrics {}/{} pairs · {} of {} · {pct:.0}%",
                k.pairs_done,
                k.pairs_total,
                human_bytes(k.bytes_done),
                human_bytes(k.bytes_total)
            )
        }
        Phase::Done => "all metrics computed".into(),
        Phase::Following => "live: the traces are still being recorded".into(),
        Phase::Failed(e) => format!("error: {e}"),
    }
}

fn title(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let bar = if p.color() {
        Style::new()
            .bg(p.rgb((30, 40, 60)))
            .fg(p.rgb((230, 230, 230)))
    } else {
        Style::new().add_modifier(Modifier::REVERSED)
    };
    clear(buf, area, bar);
    let x = put(
        buf,
        area,
        area.x,
        area.y,
        " sdtrace diff ",
        bar.add_modifier(Modifier::BOLD),
    );
    let names = format!("A {} ⇄ B {}", app.opts().a, app.opts().b);
    let status = status_text(app);
    let sw = status.chars().count() as u16 + 1;
    let room = area.right().saturating_sub(x + sw + 1);
    put(buf, Rect::new(x, area.y, room, 1), x, area.y, &names, bar);
    let st = match app.phase() {
        Phase::Failed(_) if p.color() => bar.fg(p.rgb((255, 120, 100))),
        Phase::Payloads | Phase::Summaries if p.color() => bar.fg(p.rgb((255, 210, 120))),
        _ => bar,
    };
    let sx = area.right().saturating_sub(sw);
    if sx > x {
        put(buf, area, sx, area.y, &status, st);
    }
}

/// Glyph and style of a heatmap cell.
pub fn cell_look(p: &Palette, st: &CellStat, scale: Option<(i32, i32)>) -> (&'static str, Style) {
    let dark_fg = |s: Style| s.fg(p.rgb((235, 235, 235)));
    if st.is_empty() {
        return (" ", Style::new());
    }
    if st.records == 0 {
        return if p.color() {
            ("×", dark_fg(Style::new().bg(p.unmatched_bg())))
        } else {
            ("×", Style::new())
        };
    }
    let (sym, style) = match (st.status, st.value) {
        (Some(Status::NotCompared), _) => (
            "≠",
            if p.color() {
                dark_fg(Style::new().bg(p.unmatched_bg()))
            } else {
                Style::new()
            },
        ),
        (Some(Status::Identical), _) | (_, Some(0.0)) => (
            "·",
            if p.color() {
                Style::new().bg(p.identical_bg()).fg(p.rgb((110, 110, 110)))
            } else {
                Style::new()
            },
        ),
        (_, None) => (
            "?",
            if p.color() {
                Style::new().bg(p.identical_bg()).fg(p.rgb((220, 190, 60)))
            } else {
                Style::new()
            },
        ),
        (_, Some(v)) if v.is_nan() => (
            "N",
            if p.color() {
                Style::new()
                    .bg(p.rgb((200, 30, 30)))
                    .fg(p.rgb((255, 255, 255)))
            } else {
                Style::new()
            },
        ),
        (_, Some(v)) => {
            let t = match scale {
                Some((lo, hi)) if v.is_finite() => {
                    ((v.log10() - lo as f64) / (hi - lo).max(1) as f64).clamp(0.0, 1.0)
                }
                _ => 1.0,
            };
            if p.color() {
                (" ", Style::new().bg(p.ramp(t)).fg(p.on_ramp(t)))
            } else {
                let i = 1 + ((t * 3.999) as usize).min(3);
                (SHADES[i], Style::new())
            }
        }
    };
    let marked = if st.marks & MARK_SOURCE != 0 {
        Some("S")
    } else if st.marks & MARK_FIRST != 0 {
        Some("!")
    } else if st.marks & MARK_ONSET != 0 {
        Some("▲")
    } else if st.unmatched > 0 {
        Some("×")
    } else {
        None
    };
    match marked {
        Some(m) => (m, style.add_modifier(Modifier::BOLD)),
        None => (sym, style),
    }
}

fn heatmap(app: &App, l: &Layout, buf: &mut Buffer) {
    let p = app.palette();
    let focused = app.pane() == Pane::Heatmap;
    let title_area = Rect::new(
        l.labels.x,
        l.header.y.saturating_sub(1),
        l.labels.width + l.grid.width,
        1,
    );
    let head = if focused {
        p.accent().add_modifier(Modifier::REVERSED)
    } else {
        p.accent()
    };
    let x = put(
        buf,
        title_area,
        title_area.x,
        title_area.y,
        " Heatmap ",
        head,
    );
    let Some(a) = app.analysis() else {
        put(
            buf,
            l.grid,
            l.grid.x,
            l.grid.y,
            "waiting for the first comparison…",
            p.dim(),
        );
        return;
    };
    let g = &a.grid;
    let rows = app.rows();
    put(
        buf,
        title_area,
        x,
        title_area.y,
        &format!(
            "{} · {} keys × {} steps{}{}",
            app.metric().name(),
            g.keys.len(),
            g.steps.len(),
            if g.outside {
                " (· = outside the loop)"
            } else {
                ""
            },
            if app.filter().is_empty() {
                String::new()
            } else {
                format!(" · filter '{}': {} keys", app.filter(), rows.len())
            }
        ),
        p.dim(),
    );
    let cw = l.cw.max(1);
    let ncols = g.columns();
    let vis_cols = l.heat_cols().min(ncols.saturating_sub(app.scroll_col()));
    let h = Heat {
        app,
        l,
        p,
        g,
        rows: &rows,
        cw,
        ncols,
        vis_cols,
        focused,
    };
    step_header(&h, buf);
    heat_rows(&h, buf);
    scroll_hints(&h, buf);
    let filtered = !app.filter().is_empty();
    if rows.is_empty() {
        put(
            buf,
            l.grid,
            l.grid.x,
            l.grid.y,
            if filtered {
                "no key matches the filter (Esc clears it)"
            } else {
                "no records"
            },
            p.dim(),
        );
    }
}

/// What the parts of the heatmap share: the app, the frame's layout and the visible window.
#[derive(Clone, Copy)]
struct Heat<'a> {
    app: &'a App,
    l: &'a Layout,
    p: Palette,
    g: &'a super::model::Grid,
    /// The visible rows' nodes.
    rows: &'a [usize],
    /// Columns per cell.
    cw: u16,
    ncols: usize,
    /// Grid columns that fit from the scroll offset.
    vis_cols: usize,
    focused: bool,
}

/// The step numbers above the cells.
fn step_header(h: &Heat<'_>, buf: &mut Buffer) {
    let Heat {
        app,
        l,
        p,
        g,
        cw,
        vis_cols,
        ..
    } = *h;
    // Step header: a label where it fits.
    let mut next_free = l.header.x;
    for vc in 0..vis_cols {
        let col = app.scroll_col() + vc;
        let x = l.header.x + vc as u16 * cw;
        let text = match g.step_of(col) {
            Some(s) => s.to_string(),
            None => "·".to_string(),
        };
        let sel = col == app.col();
        if x >= next_free && (sel || col.is_multiple_of(5) || cw as usize > text.len() || vc == 0) {
            let st = if sel { p.accent() } else { p.dim() };
            next_free = put(buf, l.header, x, l.header.y, &text, st) + 1;
        }
    }
}

/// The rows: status mark, fold mark and label, then the cells.
fn heat_rows(h: &Heat<'_>, buf: &mut Buffer) {
    let Heat {
        app,
        l,
        p,
        g,
        rows,
        cw,
        ncols,
        vis_cols,
        focused,
        ..
    } = *h;
    // Rows.
    let scale = app.scale();
    let filtered = !app.filter().is_empty();
    for (vr, &n) in rows
        .iter()
        .enumerate()
        .skip(app.scroll_row())
        .take(l.heat_rows())
    {
        let y = l.grid.y + (vr - app.scroll_row()) as u16;
        let node = &g.nodes[n];
        let selected_row = vr == app.row();
        // Worst status of the row over all columns.
        let worst = (0..ncols)
            .filter_map(|col| app.stat(n, col).status)
            .max_by_key(|&st| super::model::severity(st));
        let mark = match worst {
            Some(Status::Fail) => "✗",
            Some(Status::Unknown) => "?",
            Some(Status::NotCompared) => "≠",
            Some(Status::Pass) => "✓",
            Some(Status::Identical) => "=",
            None => "×",
        };
        let row_style = if selected_row && focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else if selected_row {
            Style::new().add_modifier(Modifier::UNDERLINED)
        } else {
            Style::new()
        };
        clear(buf, Rect::new(l.labels.x, y, l.labels.width, 1), row_style);
        let mut x = put(
            buf,
            l.labels,
            l.labels.x,
            y,
            mark,
            row_style.patch(p.status(worst)),
        );
        let fold = if node.children.is_empty() || filtered {
            "  "
        } else if app.is_expanded(n) {
            "▾ "
        } else {
            "▸ "
        };
        x = put(buf, l.labels, x + 1, y, fold, row_style.patch(p.dim()));
        let text = if filtered {
            node.path.clone()
        } else {
            format!("{}{}", "  ".repeat(node.depth), node.label)
        };
        let lw = (l.labels.right().saturating_sub(x + 1)) as usize;
        let shown = if filtered {
            fit_path(&text, lw)
        } else {
            fit_left(&text, lw)
        };
        put(buf, l.labels, x, y, &shown, row_style);
        for vc in 0..vis_cols {
            let col = app.scroll_col() + vc;
            let st = app.stat(n, col);
            let (sym, mut style) = cell_look(&p, &st, scale);
            let cursor = selected_row && col == app.col();
            if cursor {
                style = style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
            }
            let x0 = l.grid.x + vc as u16 * cw;
            for dx in 0..cw {
                let s = if dx == 0 {
                    sym
                } else if cursor && dx + 1 == cw && cw >= 3 {
                    "◂"
                } else {
                    " "
                };
                let s = if cursor && cw == 1 && sym == " " {
                    "◆"
                } else {
                    s
                };
                set_cell(buf, l.grid, x0 + dx, y, s, style);
            }
        }
    }
}

/// Arrows where rows or columns are scrolled out of view.
fn scroll_hints(h: &Heat<'_>, buf: &mut Buffer) {
    let Heat {
        app,
        l,
        p,
        rows,
        ncols,
        vis_cols,
        ..
    } = *h;
    // Scroll hints.
    if app.scroll_row() > 0 {
        put(
            buf,
            l.labels,
            l.labels.right().saturating_sub(1),
            l.grid.y,
            "↑",
            p.accent(),
        );
    }
    if app.scroll_row() + l.heat_rows() < rows.len() && l.grid.height > 0 {
        put(
            buf,
            l.labels,
            l.labels.right().saturating_sub(1),
            l.grid.bottom() - 1,
            "↓",
            p.accent(),
        );
    }
    if app.scroll_col() > 0 {
        put(buf, l.header, l.header.x, l.header.y, "←", p.accent());
    }
    if app.scroll_col() + vis_cols < ncols && l.header.width > 0 {
        put(
            buf,
            l.header,
            l.header.right() - 1,
            l.header.y,
            "→",
            p.accent(),
        );
    }
}

fn legend(app: &App, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let p = app.palette();
    let mut x = area.x;
    match app.scale() {
        Some((lo, hi)) => {
            let lab = |d: i32| match app.metric() {
                Metric::OverTol | Metric::Gain if (0..=3).contains(&d) => {
                    format!("{}", 10f64.powi(d))
                }
                _ => format!("1e{d}"),
            };
            x = put(buf, area, x, area.y, &format!("{} ", lab(lo)), p.dim());
            let n = 12u16;
            for i in 0..n {
                let t = i as f64 / (n - 1) as f64;
                let (sym, st) = if p.color() {
                    (" ", Style::new().bg(p.ramp(t)))
                } else {
                    (SHADES[1 + ((t * 3.999) as usize).min(3)], Style::new())
                };
                set_cell(buf, area, x, area.y, sym, st);
                x += 1;
            }
            x = put(buf, area, x, area.y, &format!(" {}", lab(hi)), p.dim());
        }
        None => {
            x = put(buf, area, x, area.y, "no differences to scale", p.dim());
        }
    }
    let items: [(&str, Style, &str); 6] = [
        (
            "·",
            if p.color() {
                Style::new().bg(p.identical_bg())
            } else {
                Style::new()
            },
            "identical",
        ),
        (
            "×",
            if p.color() {
                Style::new().bg(p.unmatched_bg())
            } else {
                Style::new()
            },
            "unmatched",
        ),
        ("?", Style::new(), "unknown"),
        ("!", Style::new().add_modifier(Modifier::BOLD), "first>tol"),
        ("S", Style::new().add_modifier(Modifier::BOLD), "source"),
        ("▲", Style::new().add_modifier(Modifier::BOLD), "onset"),
    ];
    for (sym, st, name) in items {
        x = put(buf, area, x + 1, area.y, sym, st);
        x = put(buf, area, x + 1, area.y, name, p.dim());
    }
}

fn cell_detail(app: &App, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let p = app.palette();
    let Some(a) = app.analysis() else { return };
    let Some(n) = app.current_node() else { return };
    let (c, j, g) = (&a.comparison, &a.judgement, &a.grid);
    let st = app.stat(n, app.col());
    let node = &g.nodes[n];
    let step = match g.step_of(app.col()) {
        Some(s) => format!("step {s}"),
        None => "outside the loop".into(),
    };
    let keys = app.row_keys(n).len();
    let what = if keys > 1 {
        format!("{} ({keys} keys, worst shown)", node.path)
    } else {
        node.path.clone()
    };
    let mut y = area.y;
    let x = put(
        buf,
        area,
        area.x,
        y,
        &format!("{step} · {what}"),
        p.accent(),
    );
    let Some(i) = st.pick else {
        let text = if st.unmatched > 0 {
            format!(" · {} record(s) recorded in one trace only", st.unmatched)
        } else {
            " · not recorded here".into()
        };
        put(buf, area, x, y, &text, p.dim());
        return;
    };
    let (r, rj) = (&c.records[i], &j.records[i]);
    let x = put(buf, area, x, y, " · ", p.dim());
    let x = put(buf, area, x, y, rj.status.name(), p.status(Some(rj.status)));
    if r.eval > 0 || keys > 1 {
        put(buf, area, x, y, &format!(" · {}", r.label()), p.dim());
    }
    y += 1;
    let rel = match (r.rel_l2, r.rel_l2_error) {
        (Some(v), Some(e)) => format!("{} ±{:.0}%", sci(Some(v)), e * 100.0),
        (v, _) => sci(v),
    };
    let mut parts = vec![
        format!("rel L2 {rel}"),
        format!("max|a−b| {}", sci(r.abs_error)),
        format!(
            "gain {}",
            match rj.gain {
                Some(g) if g.is_infinite() => "∞".to_string(),
                Some(g) => format!("{g:.1}"),
                None => "-".into(),
            }
        ),
        format!(
            "tol rel {} abs {}",
            sci(Some(rj.tol.rel)),
            sci(Some(rj.tol.abs))
        ),
        format!("basis {:?}", r.basis).to_lowercase(),
    ];
    if rj.creates {
        parts.push("creates error".into());
    }
    if let Some(q) = rj.required {
        parts.push(format!("passes at rel ≥ {}", sci(Some(q.rel))));
    }
    if let Some(reason) = rj.reason.as_ref().or(r.note.as_ref()) {
        parts.push(reason.clone());
    }
    // Wrap the parts over the rows of the area.
    let mut line = String::new();
    for part in parts {
        let add = if line.is_empty() {
            part
        } else {
            format!(" · {part}")
        };
        if line.chars().count() + add.chars().count() > area.width as usize
            && !line.is_empty()
            && y + 1 < area.bottom()
        {
            put(buf, area, area.x, y, &line, Style::new());
            y += 1;
            line = add.trim_start_matches(" · ").to_string();
        } else {
            line.push_str(&add);
        }
    }
    put(buf, area, area.x, y, &line, Style::new());
    // Tall side column: also the shapes and dtypes.
    if y + 2 < area.bottom() {
        put(
            buf,
            area,
            area.x,
            y + 1,
            &format!(
                "A {} {:?} · B {} {:?}",
                r.dtype_a, r.shape_a, r.dtype_b, r.shape_b
            ),
            p.dim(),
        );
    }
}

fn footer(app: &App, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let p = app.palette();
    clear(buf, area, Style::new());
    if let Some(prompt) = app.prompt() {
        let (label, hint) = match prompt {
            Prompt::Filter { .. } => ("filter keys: ", ""),
            Prompt::Tolerance { .. } => (
                "tolerance: ",
                "  (rel=R,abs=A; empty: per-dtype defaults; re-judged as you type)",
            ),
        };
        let mut x = put(buf, area, area.x, area.y, label, p.accent());
        x = put(buf, area, x, area.y, prompt.text(), Style::new());
        x = put(
            buf,
            area,
            x,
            area.y,
            "▏",
            Style::new().add_modifier(Modifier::SLOW_BLINK),
        );
        match app.prompt_error() {
            Some(e) if !prompt.text().is_empty() => {
                let st = if p.color() {
                    Style::new().fg(p.rgb((255, 120, 100)))
                } else {
                    Style::new()
                };
                put(buf, area, x + 1, area.y, &e, st);
            }
            _ => {
                put(buf, area, x, area.y, hint, p.dim());
            }
        }
        return;
    }
    if let Some(m) = app.message() {
        let st = if m.error && p.color() {
            Style::new()
                .fg(p.rgb((255, 120, 100)))
                .add_modifier(Modifier::BOLD)
        } else if m.error {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            p.accent()
        };
        put(buf, area, area.x, area.y, &m.text, st);
        return;
    }
    let mut x = area.x;
    for (k, label) in footer_items(app.scope()) {
        let need = (k.chars().count() + label.chars().count() + 2) as u16;
        if x + need > area.right() {
            break;
        }
        x = put(buf, area, x, area.y, &k, p.accent());
        x = put(buf, area, x + 1, area.y, label, p.dim());
        x += 2;
    }
}

fn help(app: &App, area: Rect, buf: &mut Buffer) {
    let p = app.palette();
    let w = area.width.saturating_sub(4).min(86);
    let h = area.height.saturating_sub(2);
    if w < 20 || h < 4 {
        return;
    }
    let r = Rect::new(area.x + (area.width - w) / 2, area.y + 1, w, h);
    let bg = if p.color() {
        Style::new()
            .bg(p.rgb((20, 24, 32)))
            .fg(p.rgb((230, 230, 230)))
    } else {
        Style::new()
    };
    clear(buf, r, bg);
    let border = bg.patch(p.accent());
    put(
        buf,
        r,
        r.x,
        r.y,
        &format!(
            "{:─<width$}",
            "─ Keys (? or Esc closes, ↑↓ scroll) ",
            width = w as usize
        ),
        border,
    );
    put(buf, r, r.x, r.bottom() - 1, &"─".repeat(w as usize), border);
    let inner = Rect::new(r.x + 1, r.y + 1, w.saturating_sub(2), h.saturating_sub(2));
    let mut lines: Vec<(String, String, bool)> = Vec::new();
    for (title, rows) in help_lines() {
        if rows.is_empty() {
            continue;
        }
        lines.push((title.to_string(), String::new(), true));
        for (keys, desc) in rows {
            lines.push((keys, desc.to_string(), false));
        }
    }
    lines.push(("Mouse".into(), String::new(), true));
    lines.push((
        "click".into(),
        if app.opts().mouse {
            "select a cell or key (again: open it); wheel scrolls; --no-mouse turns this off".into()
        } else {
            "off (--no-mouse)".into()
        },
        false,
    ));
    let max_scroll = lines.len().saturating_sub(inner.height as usize);
    let scroll = app.help_scroll().min(max_scroll);
    for (i, (k, d, head)) in lines
        .iter()
        .skip(scroll)
        .take(inner.height as usize)
        .enumerate()
    {
        let y = inner.y + i as u16;
        if *head {
            put(buf, inner, inner.x, y, k, bg.patch(p.accent()));
        } else {
            let x = put(
                buf,
                inner,
                inner.x + 1,
                y,
                &format!("{k:<16}"),
                bg.add_modifier(Modifier::BOLD),
            );
            put(buf, inner, x + 1, y, d, bg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::palette::ColorMode;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::style::Color;

    use crate::tui::testing::{
        SIZES, app, attn2_comparison, draw, find, row_text, screen_text, snapshot, words, words_in,
    };

    #[test]
    fn overview_fits_80x24() {
        let mut app = app(ColorMode::TrueColor);
        let buf = draw(&mut app, 80, 24);
        assert!(row_text(&buf, 0).starts_with(" sdtrace diff A a.sdt ⇄ B b.sdt"));
        assert!(row_text(&buf, 0).contains("all metrics computed"));
        let verdict = find(&buf, "verdict: numeric drift — DIVERGES").unwrap();
        assert_eq!(verdict.1, 2);
        assert!(find(&buf, "first >tol step 1 unet.mid_block").is_some());
        assert!(find(&buf, "source     step 1 unet.mid_block").is_some());
        assert!(find(&buf, "onset      step 2 → 4").is_some());
        assert!(find(&buf, "headers: device.device cpu ≠ cuda:0").is_some());
        assert!(find(&buf, "Heatmap rel L2 · 4 keys × 5 steps").is_some());
        // The footer is generated from the key table.
        assert!(row_text(&buf, 23).starts_with("Enter open"));
        assert!(row_text(&buf, 23).contains("q quit"));
        // The legend names the markers.
        assert!(find(&buf, "S source").is_some());
    }

    #[test]
    fn heatmap_cells_colour_and_markers() {
        let mut app = app(ColorMode::TrueColor);
        let buf = draw(&mut app, 80, 24);
        let l = Layout::new(Rect::new(0, 0, 80, 24), &app);
        let rows = app.rows();
        let row_of = |key: &str| {
            rows.iter()
                .position(|&n| app.analysis().unwrap().grid.nodes[n].path == key)
                .unwrap() as u16
                + l.grid.y
        };
        let cw = l.cw;
        assert_eq!(cw, 6, "6 columns get the widest cells");
        let cell = |key: &str, col: u16| &buf[(l.grid.x + col * cw, row_of(key))];
        // Source and first exceedance: step 1 (column 2) of unet.mid_block, marked S.
        assert_eq!(cell("unet.mid_block", 2).symbol(), "S");
        // It is the cursor: reversed.
        assert!(
            cell("unet.mid_block", 2)
                .modifier
                .contains(Modifier::REVERSED)
        );
        // Onset: sampler.x at step 2 (column 3).
        assert_eq!(cell("sampler.x", 3).symbol(), "▲");
        // Identical cells are dark with a dot; bigger errors are brighter on viridis.
        let ident = cell("sampler.x", 1);
        assert_eq!(ident.symbol(), "·");
        assert_eq!(ident.bg, Color::Rgb(38, 38, 38));
        let lum = |c: Color| match c {
            Color::Rgb(r, g, b) => r as u32 * 3 + g as u32 * 6 + b as u32,
            other => panic!("{other:?}"),
        };
        let low = cell("unet.mid_block", 3).bg; // 4e-3
        let high = cell("unet.mid_block", 4).bg; // 1.6e-2
        assert!(lum(low) < lum(high), "{low:?} {high:?}");
        // The record only in B (vae.decoder, outside the loop) looks different: ×, magenta.
        let un = cell("vae.decoder", 0);
        assert_eq!(un.symbol(), "×");
        assert_eq!(un.bg, Color::Rgb(150, 40, 130));
        // The failing row's tree mark is a red ✗.
        let mark = &buf[(l.labels.x, row_of("unet.mid_block"))];
        assert_eq!(mark.symbol(), "✗");
        assert_eq!(mark.fg, Color::Rgb(240, 80, 70));
    }

    #[test]
    fn no_color_uses_glyphs_only() {
        let mut app = app(ColorMode::NoColor);
        let buf = draw(&mut app, 80, 24);
        for y in 0..24 {
            for x in 0..80 {
                let c = &buf[(x, y)];
                assert!(
                    matches!(c.fg, Color::Reset) && matches!(c.bg, Color::Reset),
                    "colour at ({x}, {y}): {c:?}"
                );
            }
        }
        let l = Layout::new(Rect::new(0, 0, 80, 24), &app);
        let shaded = (l.grid.x..l.grid.right())
            .flat_map(|x| (l.grid.y..l.grid.bottom()).map(move |y| (x, y)))
            .filter(|&p| SHADES[1..].contains(&buf[p].symbol()))
            .count();
        assert!(shaded > 0);
    }

    #[test]
    fn wide_layout_and_help_overlay() {
        let mut app = app(ColorMode::Indexed);
        let buf = draw(&mut app, 160, 40);
        // Summary in the side column: the columns the heatmap's cells do not use, up to half
        // the screen.
        let (x, _) = find(&buf, " Summary ").unwrap();
        assert_eq!(x, 80);
        app.handle_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
        let buf = draw(&mut app, 80, 24);
        assert!(find(&buf, "─ Keys (? or Esc closes").is_some());
        assert!(find(&buf, "q Ctrl-c").is_some());
        // Tiny terminals do not panic.
        for (w, h) in [(1, 1), (10, 3), (20, 5), (0, 0)] {
            let _ = draw(&mut app, w.max(1), h.max(1));
        }
    }

    #[test]
    fn snapshots() {
        let mut app = app(ColorMode::TrueColor);
        snapshot("overview-80x24", &screen_text(&draw(&mut app, 80, 24)));
        snapshot("overview-140x30", &screen_text(&draw(&mut app, 140, 30)));
        snapshot("overview-200x60", &screen_text(&draw(&mut app, 200, 60)));
        let mut plain = crate::tui::testing::app(ColorMode::NoColor);
        snapshot(
            "overview-nocolor-80x24",
            &screen_text(&draw(&mut plain, 80, 24)),
        );
        plain.handle_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
        snapshot("help-80x24", &screen_text(&draw(&mut plain, 80, 24)));
    }

    #[test]
    fn mouse_selects_cells_and_findings() {
        use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
        let click = |x: u16, y: u16| MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: x,
            row: y,
            modifiers: KeyModifiers::NONE,
        };
        let mut app = app(ColorMode::TrueColor);
        let _ = draw(&mut app, 80, 24);
        let l = Layout::new(Rect::new(0, 0, 80, 24), &app);
        // Row 1 is sampler.x; column 4 is step 3: record 7.
        app.handle_mouse(click(l.grid.x + 4 * l.cw + 1, l.grid.y + 1));
        assert_eq!(app.current_record(), Some(7));
        // A click on the summary's "source" line jumps there.
        let (_, y) = find(&draw(&mut app, 80, 24), "source     step").unwrap();
        app.handle_mouse(click(3, y));
        assert_eq!(app.current_record(), Some(4));
        assert_eq!(app.pane(), Pane::Heatmap);
        // With --no-mouse, clicks do nothing.
        let mut app = crate::tui::testing::app_with_mouse(ColorMode::TrueColor, false);
        let _ = draw(&mut app, 80, 24);
        app.handle_mouse(click(l.grid.x + 4 * l.cw, l.grid.y + 1));
        assert_eq!(app.current_record(), Some(4));
    }

    #[test]
    fn prompt_and_message_in_footer() {
        let mut app = app(ColorMode::TrueColor);
        app.handle_key(KeyEvent::new(KeyCode::Char('t'), KeyModifiers::NONE));
        app.handle_key(KeyEvent::new(KeyCode::Char('r'), KeyModifiers::NONE));
        let buf = draw(&mut app, 80, 24);
        assert!(row_text(&buf, 23).starts_with("tolerance: r▏"));
        assert!(row_text(&buf, 23).contains("not NAME=VALUE"));
        app.handle_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        app.handle_key(KeyEvent::new(KeyCode::Char('m'), KeyModifiers::NONE));
        let buf = draw(&mut app, 80, 24);
        assert!(row_text(&buf, 23).starts_with("metric: max |a−b|"));
    }

    fn press(app: &mut App, c: KeyCode) {
        app.handle_key(KeyEvent::new(c, KeyModifiers::NONE));
    }

    /// #24: the summary was 46 columns at every size and clipped the verdict line, and never
    /// showed the verdict's explanation.
    #[test]
    fn summary_shows_the_whole_verdict_and_its_explanation() {
        for (w, h) in SIZES {
            let mut app = app(ColorMode::TrueColor);
            let buf = draw(&mut app, w, h);
            let l = Layout::new(Rect::new(0, 0, w, h), &app);
            let text = words_in(&buf, l.summary);
            let v = app.analysis().unwrap().judgement.verdict.clone();
            assert!(
                text.contains("verdict: numeric drift — DIVERGES · 10 pairs: 4 identical, 0 pass, 6 fail, 0 unknown · 0 only A, 1 only B"),
                "{w}×{h}:\n{}",
                screen_text(&buf)
            );
            let lead: String = v
                .summary
                .split_whitespace()
                .take(6)
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                text.contains(&lead),
                "{w}×{h}: no explanation:\n{}",
                screen_text(&buf)
            );
            assert!(
                text.contains(
                    "first >tol step 1 unet.mid_block (passes at rel ≥ 1.00e-3 or abs ≥ 2.00e-3)"
                ),
                "{w}×{h}:\n{}",
                screen_text(&buf)
            );
            // No row of the summary is cut at its right edge.
            for y in l.summary.y..l.summary.bottom() {
                let edge = buf[(l.summary.right() - 1, y)].symbol();
                assert_eq!(
                    edge,
                    " ",
                    "{w}×{h}: row {y} runs to the edge:\n{}",
                    screen_text(&buf)
                );
            }
            if w >= 120 {
                // The summary takes the columns the heatmap does not use, and shows the whole
                // explanation.
                assert!(l.summary.width > 46, "{l:?}");
                assert!(text.contains(&v.summary), "{}", screen_text(&buf));
            }
            // With Tab the summary shows the whole explanation at every size.
            press(&mut app, KeyCode::Tab);
            let buf = draw(&mut app, w, h);
            let l = Layout::new(Rect::new(0, 0, w, h), &app);
            assert!(
                words_in(&buf, l.summary).contains(&v.summary),
                "{}",
                screen_text(&buf)
            );
            snapshot(&format!("summary-tab-{w}x{h}"), &screen_text(&buf));
        }
    }

    /// #24: a filter such as `/attn2` showed eleven identical left-truncated rows.
    #[test]
    fn filtered_rows_are_shortened_in_the_middle_and_stay_apart() {
        for (w, h) in SIZES {
            let mut app = app(ColorMode::TrueColor);
            app.set_comparison(attn2_comparison(), Phase::Done);
            app.handle_key(KeyEvent::new(KeyCode::Char('/'), KeyModifiers::NONE));
            for c in "attn2".chars() {
                app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
            }
            press(&mut app, KeyCode::Enter);
            assert_eq!(app.rows().len(), 16);
            let buf = draw(&mut app, w, h);
            let l = Layout::new(Rect::new(0, 0, w, h), &app);
            let shown = l.heat_rows().min(16);
            let labels: Vec<String> = (0..shown as u16)
                .map(|k| {
                    (l.labels.x + 4..l.labels.right())
                        .map(|x| buf[(x, l.grid.y + k)].symbol())
                        .collect::<String>()
                        .trim_end_matches(['↑', '↓', ' '])
                        .to_string()
                })
                .collect();
            let distinct: std::collections::HashSet<&String> = labels.iter().collect();
            assert_eq!(distinct.len(), labels.len(), "{w}×{h}: {labels:#?}");
            for t in &labels {
                assert!(t.starts_with("unet."), "{w}×{h}: {t}");
                assert!(t.ends_with(".attn2"), "{w}×{h}: {t}");
            }
            snapshot(&format!("filter-attn2-{w}x{h}"), &screen_text(&buf));
        }
    }

    #[test]
    fn fit_path_keeps_the_block_and_the_end() {
        let p = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2";
        assert_eq!(fit_path(p, 80), p);
        assert_eq!(
            fit_path(p, 50),
            "unet.down_blocks.1.attentions.0.tran.0.attn2"
        );
        assert_eq!(fit_path(p, 39), "unet.down_blocks.1.atte.0.tran.0.attn2");
        assert_eq!(fit_path(p, 31), "unet.down.1.atte.0.tran.0.attn2");
        assert_eq!(
            fit_path(
                "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2",
                31
            ),
            "unet.up.1.atte.2.tran.0.attn2"
        );
        let tight = fit_path(p, 20);
        assert_eq!(tight.chars().count(), 20);
        assert!(
            tight.starts_with("unet.down") && tight.ends_with(".attn2"),
            "{tight}"
        );
        assert_eq!(fit_left("  sampler.x", 6), "…ler.x");
    }

    /// #24: `?` says a click on the selected cell opens it; it did nothing.
    #[test]
    fn clicking_the_selected_cell_opens_it() {
        use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
        let click = |x: u16, y: u16| MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: x,
            row: y,
            modifiers: KeyModifiers::NONE,
        };
        for (w, h) in SIZES {
            let mut app = app(ColorMode::TrueColor);
            let buf = draw(&mut app, w, h);
            let l = Layout::new(Rect::new(0, 0, w, h), &app);
            // Row 1 is sampler.x; column 4 is step 3: the first click selects it.
            let (x, y) = (l.grid.x + 4 * l.cw, l.grid.y + 1);
            app.handle_mouse(click(x, y));
            assert_eq!(app.view(), View::Overview);
            assert_eq!(app.current_record(), Some(7));
            let buf2 = draw(&mut app, w, h);
            assert!(buf2[(x, y)].modifier.contains(Modifier::REVERSED));
            assert_ne!(buf, buf2);
            // The second opens it, as the help promises.
            app.handle_mouse(click(x, y));
            assert_eq!(app.view(), View::Layer);
            let buf = draw(&mut app, w, h);
            assert!(
                find(&buf, "Layer · sampler.x").is_some(),
                "{}",
                screen_text(&buf)
            );
            if h >= 60 {
                press(&mut app, KeyCode::Char('?'));
                let text = words(&draw(&mut app, w, h));
                assert!(
                    text.contains("select a cell or key (again: open it)"),
                    "{text}"
                );
            }
        }
    }
}
