//! Test helpers shared by the TUI's unit tests: the fixture [`App`], drawing it at a given
//! terminal size, the screen as text, and text snapshots under `src/tui/snapshots/`.
//!
//! Snapshots are compared byte for byte; `SDTRACE_REGENERATE=1` rewrites them (review the diff
//! before committing). Only compiled for tests.

use super::app::{App, AppOptions, Phase};
use super::palette::{ColorMode, Palette};
use super::render::render;
use crate::analysis::{Criteria, TolConfig};
use crate::report::fixture::comparison as fixture;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

/// The report fixture's comparison in an app, with its one-sided `vae.decoder` record allowed
/// (as in the report tests).
pub fn app(mode: ColorMode) -> App {
    app_with_mouse(mode, true)
}

/// [`app`] with mouse input on or off (`--no-mouse`).
pub fn app_with_mouse(mode: ColorMode, mouse: bool) -> App {
    let mut app = App::new(AppOptions {
        a: "a.sdt".into(),
        b: "b.sdt".into(),
        tol: TolConfig::default(),
        criteria: Criteria {
            allow_missing: "vae.*".parse().unwrap(),
            ..Criteria::default()
        },
        palette: Palette::new(mode),
        mouse,
    });
    app.set_comparison(fixture(), Phase::Done);
    app
}

/// Press the key `c` (no modifiers); views are entered this way (`2` layer, `3` tensor, `4`
/// noise, `5` image, `?` help), as a user would.
pub fn press(app: &mut App, c: char) -> super::app::Effect {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

/// One frame of `app` on a `w`×`h` terminal, as the event loop draws it.
pub fn draw(app: &mut App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    app.resize(Rect::new(0, 0, w, h));
    app.prepare();
    t.draw(|f| render(app, f.area(), f.buffer_mut())).unwrap();
    t.backend().buffer().clone()
}

/// Row `y` of the buffer as text.
pub fn row_text(buf: &Buffer, y: u16) -> String {
    (0..buf.area.width)
        .map(|x| buf[(x, y)].symbol().to_string())
        .collect()
}

/// The first (column, row) where `needle` starts.
pub fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
    (0..buf.area.height).find_map(|y| {
        let t = row_text(buf, y);
        t.find(needle).map(|b| (t[..b].chars().count() as u16, y))
    })
}

/// The screen as text, trailing spaces trimmed.
pub fn screen_text(buf: &Buffer) -> String {
    (0..buf.area.height)
        .map(|y| row_text(buf, y).trim_end().to_string() + "\n")
        .collect()
}

/// The screen as one line of words, for checking that a text wrapped over several rows is
/// all there.
pub fn words(buf: &Buffer) -> String {
    screen_text(buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text inside `area` as one line of words.
pub fn words_in(buf: &Buffer, area: Rect) -> String {
    let area = area.intersection(buf.area);
    let rows: Vec<String> = (area.top()..area.bottom())
        .map(|y| {
            (area.left()..area.right())
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect()
        })
        .collect();
    rows.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compare with `src/tui/snapshots/NAME.txt`; `SDTRACE_REGENERATE=1` rewrites it.
pub fn snapshot(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/tui/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("SDTRACE_REGENERATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SDTRACE_REGENERATE=1 writes it)", path.display()));
    assert_eq!(text, want, "snapshot {name} differs:\n{text}");
}

/// The two sizes every TUI bug is checked at: the smallest supported terminal and a large one.
pub const SIZES: [(u16, u16); 2] = [(80, 24), (200, 60)];

/// Cross-attention keys of the SD 1.x UNet (sixteen `…attn2` modules, eleven of them with the
/// same last 26 characters), each recorded at steps 0 to 3, the down block's growing.
pub fn attn2_comparison() -> crate::analysis::Comparison {
    use crate::report::fixture::rec;
    let mut keys = Vec::new();
    for (block, n) in [("down_blocks", 0..3), ("up_blocks", 1..4)] {
        for b in n {
            let per = if block == "down_blocks" { 2 } else { 3 };
            for a in 0..per {
                keys.push(format!(
                    "unet.{block}.{b}.attentions.{a}.transformer_blocks.0.attn2"
                ));
            }
        }
    }
    keys.insert(
        6,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2".into(),
    );
    let mut c = fixture();
    c.only_b.clear();
    c.header_diffs.clear();
    c.records.clear();
    let mut order = 0;
    for step in 0..4u32 {
        for (k, key) in keys.iter().enumerate() {
            let rel = if k == 1 && step > 0 {
                1e-3 * f64::from(step)
            } else {
                0.0
            };
            c.records.push(rec(Some(step), key, order, rel));
            order += 1;
        }
    }
    c
}
