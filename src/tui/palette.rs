//! Colours: a perceptual ramp for log-scaled errors, status colours, and how both degrade.
//!
//! The ramp is viridis (perceptually uniform, colour-blind safe), interpolated between eleven
//! stops. A [`Palette`] is chosen once from the environment: 24-bit colour when `COLORTERM`
//! says `truecolor`/`24bit`, the nearest of the 256 indexed colours otherwise, and no colour at
//! all when `NO_COLOR` is set to anything non-empty (then the heatmap shades with glyphs
//! `░▒▓█` and every state keeps a distinct character). Pure: no function here reads the
//! environment except [`Palette::from_env`].

use crate::analysis::Status;
use ratatui::style::{Color, Modifier, Style};

/// How colours reach the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    TrueColor,
    Indexed,
    NoColor,
}

/// Viridis at t = 0, 0.1, …, 1.
const VIRIDIS: [(u8, u8, u8); 11] = [
    (0x44, 0x01, 0x54),
    (0x48, 0x24, 0x75),
    (0x41, 0x44, 0x87),
    (0x35, 0x5f, 0x8d),
    (0x2a, 0x78, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x22, 0xa8, 0x84),
    (0x44, 0xbf, 0x70),
    (0x7a, 0xd1, 0x51),
    (0xbd, 0xdf, 0x26),
    (0xfd, 0xe7, 0x25),
];

/// Glyphs for shading without colour, darkest to brightest.
pub const SHADES: [&str; 5] = [" ", "░", "▒", "▓", "█"];

/// The viridis colour at `t` in [0, 1] (clamped; NaN gives the top).
pub fn viridis(t: f64) -> (u8, u8, u8) {
    let t = if t.is_nan() { 1.0 } else { t.clamp(0.0, 1.0) };
    let x = t * 10.0;
    let i = (x.floor() as usize).min(9);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The nearest xterm-256 colour (6×6×6 cube or grey ramp) to an RGB colour.
pub fn nearest_indexed(r: u8, g: u8, b: u8) -> u8 {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    let near = |v: u8| {
        (0..6)
            .min_by_key(|&i| (LEVELS[i] as i32 - v as i32).abs())
            .unwrap_or(0)
    };
    let (ri, gi, bi) = (near(r), near(g), near(b));
    let cube = (LEVELS[ri], LEVELS[gi], LEVELS[bi]);
    let dist = |c: (u8, u8, u8)| {
        let d = |p: u8, q: u8| (p as i32 - q as i32).pow(2);
        d(c.0, r) + d(c.1, g) + d(c.2, b)
    };
    let avg = (r as u32 + g as u32 + b as u32) / 3;
    let gi_idx = ((avg.saturating_sub(8)) / 10).min(23) as u8;
    let gv = 8 + 10 * gi_idx;
    if dist((gv, gv, gv)) < dist(cube) {
        232 + gi_idx
    } else {
        16 + 36 * ri as u8 + 6 * gi as u8 + bi as u8
    }
}

/// The colours of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Palette {
    pub mode: ColorMode,
}

impl Palette {
    pub fn new(mode: ColorMode) -> Self {
        Palette { mode }
    }

    /// From `NO_COLOR` and `COLORTERM` (see the module docs).
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let truecolor = std::env::var("COLORTERM")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "truecolor" | "24bit"));
        Palette::new(if no_color {
            ColorMode::NoColor
        } else if truecolor {
            ColorMode::TrueColor
        } else {
            ColorMode::Indexed
        })
    }

    pub fn color(&self) -> bool {
        self.mode != ColorMode::NoColor
    }

    /// An RGB colour in this mode (`Color::Reset` without colour).
    pub fn rgb(&self, (r, g, b): (u8, u8, u8)) -> Color {
        match self.mode {
            ColorMode::TrueColor => Color::Rgb(r, g, b),
            ColorMode::Indexed => Color::Indexed(nearest_indexed(r, g, b)),
            ColorMode::NoColor => Color::Reset,
        }
    }

    /// The ramp colour at `t` in [0, 1].
    pub fn ramp(&self, t: f64) -> Color {
        self.rgb(viridis(t))
    }

    /// A readable text colour on the ramp colour at `t`.
    pub fn on_ramp(&self, t: f64) -> Color {
        let (r, g, b) = viridis(t);
        let lum = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
        self.rgb(if lum > 140.0 {
            (0, 0, 0)
        } else {
            (255, 255, 255)
        })
    }

    /// Style of a status word or tree label.
    pub fn status(&self, s: Option<Status>) -> Style {
        if !self.color() {
            return match s {
                Some(Status::Fail) => Style::new().add_modifier(Modifier::BOLD),
                _ => Style::new(),
            };
        }
        let c = match s {
            None => (128, 128, 128),
            Some(Status::Identical) => (150, 150, 150),
            Some(Status::Pass) => (80, 200, 120),
            Some(Status::Unknown) => (220, 190, 60),
            Some(Status::NotCompared) => (200, 110, 220),
            Some(Status::Fail) => (240, 80, 70),
        };
        let st = Style::new().fg(self.rgb(c));
        if s == Some(Status::Fail) {
            st.add_modifier(Modifier::BOLD)
        } else {
            st
        }
    }

    /// Background of a cell whose records are bit-identical.
    pub fn identical_bg(&self) -> Color {
        self.rgb((38, 38, 38))
    }

    /// Background of a cell with records that did not pair up.
    pub fn unmatched_bg(&self) -> Color {
        self.rgb((150, 40, 130))
    }

    /// Foreground for dim text (labels, placeholders).
    pub fn dim(&self) -> Style {
        if self.color() {
            Style::new().fg(self.rgb((130, 130, 130)))
        } else {
            Style::new()
        }
    }

    /// Highlight for headings and the selected pane's title.
    pub fn accent(&self) -> Style {
        if self.color() {
            Style::new()
                .fg(self.rgb((110, 190, 255)))
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        }
    }

    /// A colour for series `i` of a chart (A, B, tolerance, …).
    pub fn series(&self, i: usize) -> Color {
        const S: [(u8, u8, u8); 4] = [
            (110, 190, 255),
            (255, 170, 60),
            (240, 80, 70),
            (180, 180, 180),
        ];
        self.rgb(S[i % S.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_ends_and_middle() {
        assert_eq!(viridis(0.0), (0x44, 0x01, 0x54));
        assert_eq!(viridis(1.0), (0xfd, 0xe7, 0x25));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(0.5), (0x21, 0x91, 0x8c));
        // Luminance grows along the ramp.
        let lum = |(r, g, b): (u8, u8, u8)| 0.3 * r as f64 + 0.59 * g as f64 + 0.11 * b as f64;
        for i in 0..10 {
            assert!(lum(viridis(i as f64 / 10.0)) < lum(viridis((i + 1) as f64 / 10.0)));
        }
    }

    #[test]
    fn indexed_colours() {
        assert_eq!(nearest_indexed(0, 0, 0), 16);
        assert_eq!(nearest_indexed(255, 255, 255), 231);
        assert_eq!(nearest_indexed(255, 0, 0), 196);
        assert_eq!(nearest_indexed(128, 128, 128), 244);
        let p = Palette::new(ColorMode::Indexed);
        assert!(matches!(p.ramp(0.3), Color::Indexed(_)));
        let n = Palette::new(ColorMode::NoColor);
        assert_eq!(n.ramp(0.3), Color::Reset);
        assert_eq!(n.status(Some(Status::Pass)), Style::new());
    }
}
