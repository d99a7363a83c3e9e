//! Terminal graphics for the image view: the final images drawn at full resolution over the
//! half-block pictures, where the terminal has a graphics protocol.
//!
//! Two protocols are spoken, both carrying a PNG: kitty's graphics protocol (kitty, Ghostty,
//! WezTerm, Konsole) and iTerm2's inline images (iTerm2). [`Protocol::detect`] picks one from
//! the environment (`TERM`, `TERM_PROGRAM`, `KITTY_WINDOW_ID`; none inside tmux or screen,
//! which do not pass the escapes through, and none under `NO_COLOR`); `sdtrace diff
//! --graphics` overrides it. [`overlay`] is pure: it turns what the image view shows into the
//! escape sequences that place the three pictures on the cells the half-block pictures
//! occupy, so the half-block rendering stays underneath as the fallback and the buffer
//! renderers stay unaware of it. The caller writes the sequences after a frame and, with
//! [`Protocol::clear`], removes them when the view changes.

use super::app::App;
use super::views::{fit, image_areas, image_panels, shown_images};
use crate::image::encode_png;
use crate::report::html::base64;
use ratatui::layout::Rect;
use std::fmt::Write as _;

/// A terminal graphics protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Half-block pictures only.
    Off,
    /// kitty's graphics protocol (`ESC _ G … ESC \`), PNG payload.
    Kitty,
    /// iTerm2's inline images (`ESC ] 1337 ; File= … BEL`).
    Iterm,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "none" => Ok(Protocol::Off),
            "kitty" => Ok(Protocol::Kitty),
            "iterm" | "iterm2" => Ok(Protocol::Iterm),
            _ => Err(format!(
                "unknown graphics protocol '{s}' (expected auto, kitty, iterm or off)"
            )),
        }
    }
}

impl Protocol {
    /// The protocol the terminal described by `var` (an environment lookup) understands.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Protocol {
        let set = |k: &str| var(k).is_some_and(|v| !v.is_empty());
        let term = var("TERM").unwrap_or_default();
        let program = var("TERM_PROGRAM").unwrap_or_default();
        if set("NO_COLOR") || set("TMUX") || term.starts_with("screen") || term.starts_with("tmux")
        {
            return Protocol::Off;
        }
        if set("KITTY_WINDOW_ID")
            || term.contains("kitty")
            || term.contains("ghostty")
            || matches!(program.as_str(), "ghostty" | "WezTerm")
            || set("KONSOLE_VERSION")
        {
            Protocol::Kitty
        } else if program == "iTerm.app" {
            Protocol::Iterm
        } else {
            Protocol::Off
        }
    }

    /// What removes the pictures placed before (kitty keeps them above the text until told;
    /// iTerm2's are overwritten by the redraw that follows).
    pub fn clear(self) -> &'static str {
        match self {
            Protocol::Kitty => "\x1b_Ga=d,d=A,q=2\x1b\\",
            Protocol::Off | Protocol::Iterm => "",
        }
    }
}

/// The pictures to place over a frame, and what identifies them (the same placement is not
/// sent twice).
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    pub key: (usize, [Rect; 3]),
    pub escapes: String,
}

/// The escape sequences that draw the image view's three pictures at full resolution over
/// their half-block cells (`body` is the view's body area); `None` when the image view is not
/// showing loaded images or the protocol is off.
pub fn overlay(app: &App, body: Rect, protocol: Protocol) -> Option<Overlay> {
    if protocol == Protocol::Off {
        return None;
    }
    let im = shown_images(app)?;
    let (w, h) = (im.width as usize, im.height as usize);
    let mut rects = [Rect::default(); 3];
    let mut escapes = String::new();
    for (k, ((_, rgb), area)) in image_panels(im)
        .into_iter()
        .zip(image_areas(body))
        .enumerate()
    {
        let r = fit(area, w, h);
        if r.is_empty() {
            continue;
        }
        let png = encode_png(im.width, im.height, rgb, &[]).ok()?;
        rects[k] = r;
        // Cursor to the picture's top-left cell (1-based row;column).
        let _ = write!(escapes, "\x1b[{};{}H", r.y + 1, r.x + 1);
        escapes += &match protocol {
            Protocol::Kitty => kitty(&png, r.width, r.height),
            Protocol::Iterm => iterm(&png, r.width, r.height),
            Protocol::Off => String::new(),
        };
    }
    let record = app.analysis()?.judgement.image?;
    (!escapes.is_empty()).then_some(Overlay {
        key: (record, rects),
        escapes,
    })
}

/// kitty: transmit and display a PNG over `cols`×`rows` cells without moving the cursor and
/// without replies; the base64 payload goes in chunks of 4096 bytes.
pub fn kitty(png: &[u8], cols: u16, rows: u16) -> String {
    let data = base64(png);
    let chunks: Vec<&[u8]> = data.as_bytes().chunks(4096).collect();
    let mut out = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let more = u8::from(i + 1 < chunks.len());
        let chunk = std::str::from_utf8(chunk).unwrap_or_default();
        if i == 0 {
            let _ = write!(
                out,
                "\x1b_Ga=T,f=100,q=2,C=1,c={cols},r={rows},m={more};{chunk}\x1b\\"
            );
        } else {
            let _ = write!(out, "\x1b_Gm={more};{chunk}\x1b\\");
        }
    }
    out
}

/// iTerm2: an inline PNG scaled to `cols`×`rows` cells.
pub fn iterm(png: &[u8], cols: u16, rows: u16) -> String {
    format!(
        "\x1b]1337;File=inline=1;size={};width={cols};height={rows};preserveAspectRatio=1:{}\x07",
        png.len(),
        base64(png)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportImages;
    use crate::tui::app::{Detail, Phase, Request};
    use crate::tui::detail::ImageDetail;
    use crate::tui::palette::ColorMode;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn protocols_are_detected_from_the_environment() {
        let d = |pairs: &[(&str, &str)]| Protocol::detect(env(pairs));
        assert_eq!(d(&[("TERM", "xterm-kitty")]), Protocol::Kitty);
        assert_eq!(
            d(&[("TERM", "xterm-256color"), ("KITTY_WINDOW_ID", "1")]),
            Protocol::Kitty
        );
        assert_eq!(d(&[("TERM", "xterm-ghostty")]), Protocol::Kitty);
        assert_eq!(d(&[("TERM_PROGRAM", "WezTerm")]), Protocol::Kitty);
        assert_eq!(d(&[("TERM_PROGRAM", "iTerm.app")]), Protocol::Iterm);
        assert_eq!(d(&[("TERM", "xterm-256color")]), Protocol::Off);
        // Multiplexers swallow the escapes; NO_COLOR means no colour pictures either.
        assert_eq!(
            d(&[("TERM", "xterm-kitty"), ("TMUX", "/tmp/x")]),
            Protocol::Off
        );
        assert_eq!(
            d(&[("TERM", "screen-256color"), ("TERM_PROGRAM", "iTerm.app")]),
            Protocol::Off
        );
        assert_eq!(
            d(&[("TERM", "xterm-kitty"), ("NO_COLOR", "1")]),
            Protocol::Off
        );
        assert_eq!("iterm2".parse(), Ok(Protocol::Iterm));
        assert!(
            "sixel"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("auto, kitty")
        );
    }

    #[test]
    fn kitty_chunks_the_payload_and_iterm_sizes_it() {
        let png = vec![7u8; 7000]; // 9336 base64 bytes: three chunks
        let k = kitty(&png, 20, 10);
        let parts: Vec<&str> = k.split("\x1b\\").filter(|p| !p.is_empty()).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("\x1b_Ga=T,f=100,q=2,C=1,c=20,r=10,m=1;"));
        assert!(parts[1].starts_with("\x1b_Gm=1;"));
        assert!(parts[2].starts_with("\x1b_Gm=0;"));
        let payload: String = parts.iter().map(|p| p.split_once(';').unwrap().1).collect();
        assert_eq!(payload, base64(&png));
        let i = iterm(&png, 20, 10);
        assert!(i.starts_with("\x1b]1337;File=inline=1;size=7000;width=20;height=10;"));
        assert!(i.ends_with('\x07'));
    }

    #[test]
    fn overlay_places_the_three_pictures_only_in_the_image_view() {
        let mut app = crate::tui::testing::app(ColorMode::TrueColor);
        let mut c = crate::report::fixture::comparison();
        let mut image = c.records[0].clone();
        image.key = "image".into();
        image.step = None;
        c.records.push(image);
        app.set_comparison(c, Phase::Done);
        let body = Rect::new(0, 1, 90, 20);
        assert_eq!(overlay(&app, body, Protocol::Kitty), None);
        let Some(i) = app.analysis().and_then(|a| a.judgement.image) else {
            panic!("the fixture has an image pair");
        };
        let (w, h) = (8u32, 4u32);
        let px = |v: u8| vec![v; (w * h * 3) as usize];
        let images = ReportImages {
            width: w,
            height: h,
            index: 0,
            batch: 1,
            a: px(10),
            b: px(20),
            diff: px(0),
            max_abs: 0.04,
            gain: 25.0,
        };
        crate::tui::testing::press(&mut app, '5');
        app.set_detail(
            Request::Image(i),
            Ok(Detail::Image(Box::new(ImageDetail { record: i, images }))),
        );
        assert_eq!(overlay(&app, body, Protocol::Off), None);
        let o = overlay(&app, body, Protocol::Kitty).unwrap();
        // Three 29-column panels below two heading rows; an 8×4 picture in 29×18 cells fits
        // as 29 columns × 8 rows (cells are twice as tall as wide).
        assert_eq!(o.key.0, i);
        assert_eq!(o.key.1[0], Rect::new(0, 3, 29, 8));
        assert_eq!(o.key.1[2], Rect::new(60, 3, 29, 8));
        assert_eq!(o.escapes.matches("\x1b_Ga=T").count(), 3);
        assert!(
            o.escapes
                .starts_with("\x1b[4;1H\x1b_Ga=T,f=100,q=2,C=1,c=29,r=8,")
        );
        assert!(o.escapes.contains("\x1b[4;31H"), "B at column 31");
        // The help overlay hides the pictures.
        crate::tui::testing::press(&mut app, '?');
        assert_eq!(overlay(&app, body, Protocol::Kitty), None);
    }
}
