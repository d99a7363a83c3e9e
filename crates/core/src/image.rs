//! Images as AUTOMATIC1111's webui writes them: 8-bit RGB from a decoded tensor, PNG files with
//! text chunks, and the "infotext" (generation parameters) stored in the `parameters` chunk.
//!
//! What is mirrored, and from where:
//! - Pixels ([`rgb8_from_chw`]): `modules/processing.py` turns the clamped decoder output
//!   `x ∈ [0, 1]` (float32) into `(255. * x).astype(np.uint8)`: a float32 product, truncated
//!   toward zero. Values outside [0, 1] (never produced by the VAE path) are clamped first and
//!   NaN becomes 0, where numpy's cast is undefined.
//! - Text chunks ([`encode_png`]): Pillow's `PngInfo.add_text`, as A1111's `images.py` uses it:
//!   Latin-1 text goes into `tEXt`; text with any character above U+00FF into an uncompressed
//!   `iTXt` with empty language tag and translated keyword. Chunks precede the image data.
//! - Infotext ([`infotext`], [`parse_infotext`]): `create_infotext` in `modules/processing.py`
//!   and `parse_generation_parameters`/`quote`/`unquote` in `modules/infotext_utils.py` (webui
//!   ≥ 1.9). The parameter line is `Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model
//!   hash, Model, Clip skip`, then the extras; a value containing `,`, `:` or a newline is
//!   written as a JSON string; an extra whose value equals its key is written as the bare key.
//!   The sampler is written in the 1.9+ form, sampler and schedule apart:
//!
//!   | sdtrace           | Sampler    | Schedule type |
//!   |-------------------|------------|---------------|
//!   | `dpmpp-2m-karras` | `DPM++ 2M` | `Karras`      |
//!   | `dpmpp-2m`        | `DPM++ 2M` | `Uniform`     |
//!   | `euler`           | `Euler`    | `Automatic`   |
//!   | `euler-a`         | `Euler a`  | `Automatic`   |
//!   | `ddim`            | `DDIM`     | `Automatic`   |
//!
//!   (`Automatic` for DPM++ 2M means Karras since 1.9, so plain `dpmpp-2m` names `Uniform`,
//!   k-diffusion's `get_sigmas`, which is our "normal" schedule.) The parser also reads the
//!   pre-1.9 combined names (`DPM++ 2M Karras`; `DPM++ 2M` without a schedule type is the
//!   uniform schedule). As in A1111, each prompt line is trimmed, the whole text is trimmed, a
//!   missing `Clip skip` means 1, and a CFG scale of 7.0 is written `7`.
//!
//! Invariants: nothing here touches a tensor library; no input makes these functions panic; the
//! PNG reader checks every chunk length against the input and bounds decompressed text.

use crate::dtype::DType;
use crate::trace::Settings;
use std::fmt::Write as _;

/// Largest decompressed text chunk [`png_text`] accepts.
pub const MAX_TEXT_CHUNK: usize = 16 << 20;

/// The PNG text key A1111 stores the infotext under.
pub const PARAMETERS_KEY: &str = "parameters";

/// The infotext field sdtrace writes for the generator when the webui's `RNG` field cannot say
/// it: `torch-cuda:CARD (…)` (the webui's GPU source, emulated for that card), `sdtrace (…)`,
/// `file:PATH (…)`, `device (…)`. The value is the `--rng` spec, then a space and a
/// parenthesised note for people.
pub const SDTRACE_RNG_KEY: &str = "sdtrace RNG";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Errors of image conversion, PNG encoding/decoding and infotext parsing.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "an image tensor has shape [3, H, W] or [B, 3, H, W] (RGB, channels first); got {shape:?}"
    )]
    Shape { shape: Vec<usize> },
    #[error("image tensor of shape {shape:?} needs {expected} values, got {got}")]
    Length {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("image of {width}×{height} is too large for a PNG")]
    TooLarge { width: usize, height: usize },
    #[error("cannot encode PNG: {0}")]
    Encode(String),
    #[error("not a PNG file (it does not start with the PNG signature)")]
    NotPng,
    #[error("damaged PNG at byte offset {offset}: {what}")]
    Damaged { offset: usize, what: String },
    #[error("not an image: {what}")]
    NotImage { what: String },
    #[error("infotext field '{field}': {what}")]
    Infotext { field: String, what: String },
    #[error("the trace header lacks {missing}, needed for A1111's generation parameters")]
    MissingSettings { missing: String },
}

type Result<T, E = ImageError> = std::result::Result<T, E>;

/// (width, height, batch) of a `[3, H, W]` or `[B, 3, H, W]` shape, checked against `len`.
fn chw_layout(shape: &[usize], len: usize) -> Result<(usize, usize, usize)> {
    let (b, h, w) = match *shape {
        [3, h, w] => (1, h, w),
        [b, 3, h, w] => (b, h, w),
        _ => {
            return Err(ImageError::Shape {
                shape: shape.to_vec(),
            });
        }
    };
    let expected = b
        .checked_mul(3)
        .and_then(|n| n.checked_mul(h))
        .and_then(|n| n.checked_mul(w))
        .ok_or(ImageError::TooLarge {
            width: w,
            height: h,
        })?;
    if expected != len {
        return Err(ImageError::Length {
            shape: shape.to_vec(),
            expected,
            got: len,
        });
    }
    if w == 0 || h == 0 || u32::try_from(w).is_err() || u32::try_from(h).is_err() {
        return Err(ImageError::TooLarge {
            width: w,
            height: h,
        });
    }
    Ok((w, h, b))
}

/// Planar channels-first data to interleaved RGB, one image per batch item.
fn interleave<T: Copy>(
    shape: &[usize],
    data: &[T],
    px: impl Fn(T) -> u8,
) -> Result<Vec<(u32, u32, Vec<u8>)>> {
    let (w, h, b) = chw_layout(shape, data.len())?;
    let plane = w * h;
    Ok(data
        .chunks_exact(3 * plane)
        .take(b)
        .map(|item| {
            let (r, rest) = item.split_at(plane);
            let (g, bl) = rest.split_at(plane);
            let rgb = r
                .iter()
                .zip(g)
                .zip(bl)
                .flat_map(|((&r, &g), &b)| [px(r), px(g), px(b)])
                .collect();
            (w as u32, h as u32, rgb)
        })
        .collect())
}

/// A1111's pixel conversion: `(255. * x).astype(np.uint8)` in float32 (truncation), after the
/// clamp to [0, 1]; NaN becomes 0.
pub fn pixel(x: f32) -> u8 {
    // `as` saturates and maps NaN to 0; the clamp keeps numpy's result for every valid input.
    (255.0f32 * x.clamp(0.0, 1.0)) as u8
}

/// Per batch item, (width, height, interleaved RGB bytes) of an image tensor in [0, 1] of shape
/// `[B, 3, H, W]` or `[3, H, W]`, converted as A1111 does (see [`pixel`]).
pub fn rgb8_from_chw(shape: &[usize], data: &[f32]) -> Result<Vec<(u32, u32, Vec<u8>)>> {
    interleave(shape, data, pixel)
}

/// As [`rgb8_from_chw`] for an image tensor already in 8-bit values.
pub fn rgb8_from_chw_u8(shape: &[usize], data: &[u8]) -> Result<Vec<(u32, u32, Vec<u8>)>> {
    interleave(shape, data, |v| v)
}

/// An image record's values, channels first.
#[derive(Clone, Debug, PartialEq)]
pub enum Planes {
    U8(Vec<u8>),
    /// In [0, 1], or NaN.
    Float(Vec<f32>),
}

/// A recorded image tensor (`[B, 3, H, W]` or `[3, H, W]`; floats in [0, 1] or u8), checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTensor {
    pub batch: usize,
    pub width: u32,
    pub height: u32,
    pub planes: Planes,
}

impl ImageTensor {
    /// Check and decode a record's payload (little-endian `dtype` values of `shape`). Refuses
    /// other ranks or channel counts, integer dtypes other than u8, and finite float values
    /// outside [0, 1].
    pub fn from_record(dtype: DType, shape: &[u64], data: &[u8]) -> Result<Self> {
        let not_image = |what: String| ImageError::NotImage { what };
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        if !matches!(dims.as_slice(), [3, _, _] | [_, 3, _, _]) {
            return Err(not_image(format!(
                "its shape is {shape:?}; an image is [B, 3, H, W] or [3, H, W]"
            )));
        }
        let planes = if dtype == DType::U8 {
            Planes::U8(data.to_vec())
        } else {
            let Some(values) = dtype.decode_floats(data) else {
                return Err(not_image(format!(
                    "it holds {dtype} values; an image holds floats in [0, 1] or u8"
                )));
            };
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &v in values.iter().filter(|v| !v.is_nan()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if lo < 0.0 || hi > 1.0 {
                return Err(not_image(format!(
                    "its values span [{lo}, {hi}], outside [0, 1] (the decoded image is the 'image' record; export other tensors to .npy)"
                )));
            }
            Planes::Float(values)
        };
        let len = match &planes {
            Planes::U8(v) => v.len(),
            Planes::Float(v) => v.len(),
        };
        let (w, h, batch) = chw_layout(&dims, len)?;
        Ok(ImageTensor {
            batch,
            width: w as u32,
            height: h as u32,
            planes,
        })
    }

    fn item_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    fn item_shape(&self) -> [usize; 3] {
        [3, self.height as usize, self.width as usize]
    }

    /// NaN values (written as 0 in 8-bit form).
    pub fn nan_count(&self) -> usize {
        match &self.planes {
            Planes::U8(_) => 0,
            Planes::Float(v) => v.iter().filter(|x| x.is_nan()).count(),
        }
    }

    /// Interleaved 8-bit RGB of batch item `index` (A1111's conversion for floats).
    pub fn rgb8(&self, index: usize) -> Option<Vec<u8>> {
        let range = index * self.item_len()..(index + 1) * self.item_len();
        let shape = self.item_shape();
        let mut items = match &self.planes {
            Planes::U8(v) => rgb8_from_chw_u8(&shape, v.get(range)?).ok()?,
            Planes::Float(v) => rgb8_from_chw(&shape, v.get(range)?).ok()?,
        };
        items.pop().map(|(_, _, rgb)| rgb)
    }

    /// Values of batch item `index` on the [0, 1] scale (u8 divided by 255), channels first.
    pub fn values(&self, index: usize) -> Option<Vec<f32>> {
        let range = index * self.item_len()..(index + 1) * self.item_len();
        Some(match &self.planes {
            Planes::U8(v) => v.get(range)?.iter().map(|&b| b as f32 / 255.0).collect(),
            Planes::Float(v) => v.get(range)?.to_vec(),
        })
    }
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) <= 0xFF)
}

/// An 8-bit RGB PNG with `text` chunks before the image data: `tEXt` for Latin-1 text, an
/// uncompressed `iTXt` otherwise (what Pillow's `add_text` writes). Keys must be 1–79 Latin-1
/// characters.
pub fn encode_png(width: u32, height: u32, rgb: &[u8], text: &[(&str, &str)]) -> Result<Vec<u8>> {
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or(ImageError::TooLarge {
            width: width as usize,
            height: height as usize,
        })?;
    if rgb.len() != expected || width == 0 || height == 0 {
        return Err(ImageError::Encode(format!(
            "{width}×{height} RGB needs {expected} bytes, got {}",
            rgb.len()
        )));
    }
    for (key, _) in text {
        if key.is_empty() || key.chars().count() > 79 || !is_latin1(key) {
            return Err(ImageError::Encode(format!(
                "text key '{key}' must be 1 to 79 Latin-1 characters"
            )));
        }
    }
    let enc = |e: png::EncodingError| ImageError::Encode(e.to_string());
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            if is_latin1(value) {
                encoder.add_text_chunk(key.to_string(), value.to_string())
            } else {
                encoder.add_itxt_chunk(key.to_string(), value.to_string())
            }
            .map_err(enc)?;
        }
        let mut writer = encoder.write_header().map_err(enc)?;
        writer.write_image_data(rgb).map_err(enc)?;
        writer.finish().map_err(enc)?;
    }
    Ok(out)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn inflate(data: &[u8], offset: usize) -> Result<Vec<u8>> {
    fdeflate::decompress_to_vec_bounded(data, MAX_TEXT_CHUNK).map_err(|e| ImageError::Damaged {
        offset,
        what: match e {
            fdeflate::BoundedDecompressionError::OutputTooLarge { .. } => {
                format!("compressed text over {MAX_TEXT_CHUNK} bytes")
            }
            _ => "compressed text does not inflate".into(),
        },
    })
}

/// One text chunk's (key, text), or `None` when it is not a text chunk.
fn text_chunk(kind: &[u8], data: &[u8], offset: usize) -> Result<Option<(String, String)>> {
    let damaged = |what: &str| ImageError::Damaged {
        offset,
        what: format!("{} chunk: {what}", String::from_utf8_lossy(kind)),
    };
    if !matches!(kind, b"tEXt" | b"zTXt" | b"iTXt") {
        return Ok(None);
    }
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| damaged("no keyword terminator"))?;
    let key = latin1(&data[..nul]);
    let rest = &data[nul + 1..];
    let text = match kind {
        b"tEXt" => latin1(rest),
        b"zTXt" => match rest.split_first() {
            Some((0, z)) => latin1(&inflate(z, offset)?),
            _ => return Err(damaged("unknown compression method")),
        },
        _ => {
            let [flag, method, rest @ ..] = rest else {
                return Err(damaged("truncated header"));
            };
            let mut parts = rest.splitn(3, |&b| b == 0);
            let (Some(_lang), Some(_tkey), Some(body)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(damaged("truncated header"));
            };
            let bytes = match (flag, method) {
                (0, _) => body.to_vec(),
                (1, 0) => inflate(body, offset)?,
                _ => return Err(damaged("unknown compression")),
            };
            String::from_utf8(bytes).map_err(|_| damaged("text is not UTF-8"))?
        }
    };
    Ok(Some((key, text)))
}

/// Every text chunk (`tEXt`, `zTXt`, `iTXt`) of a PNG, in file order, as (key, text). Chunks
/// are checked (length within the file, CRC); reading stops at `IEND`.
pub fn png_text(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(ImageError::NotPng);
    }
    let mut out = Vec::new();
    let mut at = PNG_SIGNATURE.len();
    while at < bytes.len() {
        let damaged = |what: String| ImageError::Damaged { offset: at, what };
        let Some(head) = bytes.get(at..at + 8) else {
            return Err(damaged("truncated chunk header".into()));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let end = at
            .checked_add(8)
            .and_then(|n| n.checked_add(len))
            .filter(|&e| e.checked_add(4).is_some_and(|e4| e4 <= bytes.len()))
            .ok_or_else(|| {
                damaged(format!(
                    "chunk '{}' of {len} bytes runs past the end of the file",
                    String::from_utf8_lossy(kind)
                ))
            })?;
        let data = &bytes[at + 8..end];
        let crc = u32::from_be_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        if h.finalize() != crc {
            return Err(damaged(format!(
                "chunk '{}' fails its CRC",
                String::from_utf8_lossy(kind)
            )));
        }
        if let Some(kv) = text_chunk(kind, data, at)? {
            out.push(kv);
        }
        if kind == b"IEND" {
            break;
        }
        at = end + 4;
    }
    Ok(out)
}

/// A1111's display names for one of our samplers: (Sampler, Schedule type).
pub fn a1111_sampler(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "dpmpp-2m-karras" => ("DPM++ 2M", "Karras"),
        "dpmpp-2m" => ("DPM++ 2M", "Uniform"),
        "euler" => ("Euler", "Automatic"),
        "euler-a" => ("Euler a", "Automatic"),
        "ddim" => ("DDIM", "Automatic"),
        _ => return None,
    })
}

/// Our sampler for A1111's Sampler and Schedule type fields (either release's form).
pub fn sampler_from_a1111(sampler: &str, schedule: Option<&str>) -> Option<&'static str> {
    // webui ≥ 1.9 splits a trailing schedule name off the sampler name ("DPM++ 2M Karras").
    let (base, schedule) = [
        "Karras",
        "karras",
        "Uniform",
        "uniform",
        "Automatic",
        "automatic",
    ]
    .iter()
    .find_map(|s| {
        sampler
            .strip_suffix(s)
            .and_then(|b| b.strip_suffix(' '))
            .map(|b| (b, Some(*s)))
    })
    .unwrap_or((sampler, schedule));
    let schedule = schedule.map(str::to_ascii_lowercase);
    Some(match (base, schedule.as_deref()) {
        ("DPM++ 2M", Some("karras" | "automatic")) => "dpmpp-2m-karras",
        // Before 1.9 there was no schedule type and plain DPM++ 2M used the uniform schedule.
        ("DPM++ 2M", Some("uniform") | None) => "dpmpp-2m",
        ("Euler", Some("automatic" | "uniform") | None) => "euler",
        ("Euler a", Some("automatic" | "uniform") | None) => "euler-a",
        ("DDIM", Some("automatic") | None) => "ddim",
        _ => return None,
    })
}

/// What the infotext says about a generation. `sampler` is our name (`dpmpp-2m-karras`,
/// `dpmpp-2m`, `euler`, `euler-a`, `ddim`); any other name is written as given. `clip_skip` is
/// written only when above 1; `extra` pairs follow in order (a key equal to a standard one
/// replaces its value in place, as in A1111's dictionary).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfotextParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    pub sampler: String,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// A1111's short hash: the first 10 hex digits of the checkpoint's SHA-256.
    pub model_hash: Option<String>,
    pub model_name: Option<String>,
    pub clip_skip: Option<u32>,
    pub extra: Vec<(String, String)>,
}

impl InfotextParams {
    /// The parameters of a trace header's settings; `width`/`height` are used when the header
    /// has none (the image's own size). The model name is the last path component of
    /// `settings.model` without a `.safetensors`/`.ckpt` extension; the hash is the short form
    /// of `model_hashes["sha256"]`; `clip_skip` comes from `extra["clip_skip"]`.
    pub fn from_settings(s: &Settings, width: u32, height: u32) -> Result<Self> {
        let mut missing = Vec::new();
        let mut need = |name: &'static str, present: bool| {
            if !present {
                missing.push(format!("settings.{name}"));
            }
        };
        need("steps", s.steps.is_some());
        need("sampler", s.sampler.is_some());
        need("cfg_scale", s.cfg_scale.is_some());
        need("seed", s.seed.is_some());
        let (Some(steps), Some(sampler), Some(cfg_scale), Some(seed)) =
            (s.steps, s.sampler.clone(), s.cfg_scale, s.seed)
        else {
            return Err(ImageError::MissingSettings {
                missing: missing.join(", "),
            });
        };
        let model_name = s.model.as_deref().and_then(|m| {
            let last = m.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next()?;
            let name = [".safetensors", ".ckpt"]
                .iter()
                .find_map(|ext| last.strip_suffix(ext))
                .unwrap_or(last);
            (!name.is_empty()).then(|| name.to_string())
        });
        let model_hash = s
            .model_hashes
            .get("sha256")
            .map(|h| h.chars().take(10).collect::<String>().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        let clip_skip = match s.extra.get("clip_skip") {
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
                .and_then(|n| u32::try_from(n).ok()),
            None => None,
        };
        // The webui's own names for the generators it has (its GPU generator, the default,
        // goes unnamed), and ENSD when set.
        let mut extra = Vec::new();
        if let Some(ensd) = s
            .extra
            .get("rng_params")
            .and_then(|r| r["params"]["ensd"].as_u64())
            && ensd != 0
        {
            extra.push(("ENSD".to_string(), ensd.to_string()));
        }
        if let Some(rng) = rng_fields(s) {
            extra.push(rng);
        }
        Ok(InfotextParams {
            prompt: s.prompt.clone().unwrap_or_default(),
            negative_prompt: s.negative_prompt.clone().unwrap_or_default(),
            steps,
            sampler,
            cfg_scale,
            seed,
            width: s.width.unwrap_or(width),
            height: s.height.unwrap_or(height),
            model_hash,
            model_name,
            clip_skip,
            extra,
        })
    }
}

/// The infotext field that names a run's generator: the webui's `RNG: CPU` / `RNG: NV`; for
/// PyTorch's CUDA noise (the webui's default GPU source, which it writes no field for) and for
/// generators the webui does not have, `sdtrace RNG` ([`SDTRACE_RNG_KEY`]),
/// which the webui ignores and sdtrace reads back: the spec, then a note saying what the webui
/// would draw.
fn rng_fields(s: &Settings) -> Option<(String, String)> {
    let rng = s.rng.as_deref()?;
    let preset = s
        .extra
        .get("rng_params")
        .and_then(|r| r["params"]["preset"].as_str())
        .and_then(crate::cards::find);
    let ours = |v: String| Some((SDTRACE_RNG_KEY.to_string(), v));
    match rng {
        "torch-cpu" => Some(("RNG".into(), "CPU".into())),
        "a1111-nv" => Some(("RNG".into(), "NV".into())),
        "sdtrace" => {
            ours("sdtrace (sdtrace's own generator; the webui cannot redraw this noise)".into())
        }
        "device" => {
            ours("device (candle's own GPU generator; the webui cannot redraw this noise)".into())
        }
        r if r.starts_with("torch-cuda:") => match preset {
            Some(p) => ours(format!(
                "torch-cuda:{} (the webui's GPU source, as drawn on a {})",
                p.name, p.card
            )),
            None => {
                let arg = &r["torch-cuda:".len()..];
                let (sms, threads) = arg.split_once(',').unwrap_or((arg, "2048"));
                ours(format!(
                    "{r} (the webui's GPU source, as drawn on a card of {sms} SMs × {threads} threads)"
                ))
            }
        },
        r if r.starts_with("file:") => ours(format!(
            "{r} (noise read from a file; the webui cannot redraw it)"
        )),
        _ => None,
    }
}

/// Python's `str.isspace` (Unicode whitespace and the four ASCII separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// A1111's `quote`: a value with `,`, `:` or a newline becomes a JSON string (non-ASCII kept).
pub fn quote(v: &str) -> String {
    if !v.contains([',', '\n', ':']) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A1111's `unquote`: a value in double quotes is read as a JSON string, if it is one.
pub fn unquote(v: &str) -> String {
    if v.len() >= 2
        && v.starts_with('"')
        && v.ends_with('"')
        && let Ok(s) = serde_json::from_str::<String>(v)
    {
        return s;
    }
    v.to_string()
}

/// Insert or replace `key` keeping its first position (a Python dict).
fn dict_set(pairs: &mut Vec<(String, String)>, key: &str, value: String) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(p) => p.1 = value,
        None => pairs.push((key.to_string(), value)),
    }
}

/// The A1111 infotext of a generation (see the module documentation for the layout).
pub fn infotext(p: &InfotextParams) -> String {
    let (sampler, schedule) = match a1111_sampler(&p.sampler) {
        Some((s, t)) => (s.to_string(), Some(t)),
        None => (p.sampler.clone(), None),
    };
    let mut pairs: Vec<(String, String)> = vec![
        ("Steps".into(), p.steps.to_string()),
        ("Sampler".into(), sampler),
    ];
    if let Some(t) = schedule {
        pairs.push(("Schedule type".into(), t.into()));
    }
    // Rust prints 7.0 as `7` and 7.5 as `7.5`: the shortest text that reads back.
    pairs.push(("CFG scale".into(), format!("{}", p.cfg_scale)));
    pairs.push(("Seed".into(), p.seed.to_string()));
    pairs.push(("Size".into(), format!("{}x{}", p.width, p.height)));
    if let Some(h) = &p.model_hash {
        pairs.push(("Model hash".into(), h.clone()));
    }
    if let Some(m) = &p.model_name {
        pairs.push(("Model".into(), m.clone()));
    }
    if let Some(c) = p.clip_skip.filter(|&c| c > 1) {
        pairs.push(("Clip skip".into(), c.to_string()));
    }
    for (k, v) in &p.extra {
        dict_set(&mut pairs, k, v.clone());
    }
    let line = pairs
        .iter()
        .map(|(k, v)| {
            if k == v {
                k.clone()
            } else {
                format!("{k}: {}", quote(v))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let negative = if p.negative_prompt.is_empty() {
        String::new()
    } else {
        format!("\nNegative prompt: {}", p.negative_prompt)
    };
    py_strip(&format!("{}{negative}\n{line}", p.prompt)).to_string()
}

/// A parsed infotext. `params` holds every `key: value` pair of the parameter line in order
/// (values unquoted, a repeated key keeping its first place and last value); the typed fields
/// are read from it, and `extra` is what they do not cover.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedInfotext {
    pub prompt: String,
    pub negative_prompt: String,
    pub params: Vec<(String, String)>,
    pub steps: Option<u32>,
    /// Our sampler name, when A1111's sampler and schedule type have an sdtrace equivalent.
    pub sampler: Option<String>,
    /// `Sampler` as written.
    pub a1111_sampler: Option<String>,
    /// `Schedule type` as written (absent before webui 1.9).
    pub schedule_type: Option<String>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub model_hash: Option<String>,
    pub model_name: Option<String>,
    /// As written; A1111 reads a missing value as 1.
    pub clip_skip: Option<u32>,
    pub extra: Vec<(String, String)>,
}

fn py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// One match of A1111's `re_param` at `p`: `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`
/// as (key, raw value, end).
fn param_at(s: &[char], p: usize) -> Option<(String, String, usize)> {
    let n = s.len();
    let mut i = p;
    while i < n && py_space(s[i]) {
        i += 1;
    }
    let key_start = i;
    if i >= n || !py_word(s[i]) {
        return None;
    }
    i += 1;
    while i < n && (py_word(s[i]) || matches!(s[i], ' ' | '-' | '/')) {
        i += 1;
    }
    if i - key_start < 2 || i >= n || s[i] != ':' {
        return None;
    }
    let key: String = s[key_start..i].iter().collect();
    i += 1;
    while i < n && py_space(s[i]) {
        i += 1;
    }
    // The quoted form, when it closes and is followed by a comma or the end.
    if i < n && s[i] == '"' {
        let mut k = i + 1;
        let mut closed = None;
        while k < n {
            match s[k] {
                '\\' if k + 1 < n && s[k + 1] != '\n' => k += 2,
                '\\' => break,
                '"' => {
                    closed = Some(k);
                    break;
                }
                _ => k += 1,
            }
        }
        if let Some(q) = closed.filter(|&q| q > i + 1)
            && (q + 1 == n || s[q + 1] == ',')
        {
            let v = s[i..=q].iter().collect();
            return Some((key, v, (q + 2).min(n)));
        }
    }
    let mut m = i;
    while m < n && s[m] != ',' {
        m += 1;
    }
    let v = s[i..m].iter().collect();
    Some((key, v, (m + 1).min(n)))
}

/// A1111's `re_param.findall` over one line: its `Key: value` pairs (the webui takes the last
/// line for its settings when it holds at least 3 of them).
pub fn param_pairs(line: &str) -> Vec<(String, String)> {
    let s: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut p = 0;
    while p < s.len() {
        match param_at(&s, p) {
            Some((k, v, end)) => {
                out.push((k, v));
                p = end.max(p + 1);
            }
            None => p += 1,
        }
    }
    out
}

/// Parse an A1111 infotext as `parse_generation_parameters` does: prompt lines, then lines from
/// `Negative prompt:` on, then a last line of at least three `key: value` pairs. Fails only when
/// a field this module types (Steps, CFG scale, Seed, Size, Clip skip) has an unreadable value.
pub fn parse_infotext(text: &str) -> Result<ParsedInfotext> {
    let mut lines: Vec<&str> = py_strip(text).split('\n').collect();
    let mut last = lines.pop().unwrap_or_default();
    if param_pairs(last).len() < 3 {
        lines.push(last);
        last = "";
    }
    let mut out = ParsedInfotext::default();
    let mut in_negative = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = py_strip(rest);
        }
        let target = if in_negative {
            &mut out.negative_prompt
        } else {
            &mut out.prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    for (k, v) in param_pairs(last) {
        // A1111 skips an empty value (its `v[0]` raises).
        if v.is_empty() {
            continue;
        }
        let v = if v.starts_with('"') && v.ends_with('"') {
            unquote(&v)
        } else {
            v
        };
        dict_set(&mut out.params, &k, v);
    }
    let bad = |field: &str, v: &str, what: &str| ImageError::Infotext {
        field: field.into(),
        what: format!("'{v}' is not {what}"),
    };
    for (k, v) in &out.params {
        let t = v.trim();
        match k.as_str() {
            "Steps" => {
                out.steps = Some(t.parse().map_err(|_| bad(k, v, "a step count"))?);
            }
            "CFG scale" => {
                out.cfg_scale = Some(
                    t.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(k, v, "a number"))?,
                );
            }
            "Seed" => out.seed = Some(t.parse().map_err(|_| bad(k, v, "a seed"))?),
            "Size" => {
                let (w, h) = v
                    .split_once('x')
                    .filter(|(w, h)| {
                        !w.is_empty()
                            && !h.is_empty()
                            && w.bytes().chain(h.bytes()).all(|b| b.is_ascii_digit())
                    })
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    .ok_or_else(|| bad(k, v, "WIDTHxHEIGHT"))?;
                out.width = Some(w);
                out.height = Some(h);
            }
            "Clip skip" => {
                out.clip_skip = Some(t.parse().map_err(|_| bad(k, v, "a layer count"))?);
            }
            "Sampler" => out.a1111_sampler = Some(v.clone()),
            "Schedule type" => out.schedule_type = Some(v.clone()),
            "Model hash" => out.model_hash = Some(v.clone()),
            "Model" => out.model_name = Some(v.clone()),
            _ => out.extra.push((k.clone(), v.clone())),
        }
    }
    out.sampler = out
        .a1111_sampler
        .as_deref()
        .and_then(|s| sampler_from_a1111(s, out.schedule_type.as_deref()))
        .map(str::to_string);
    Ok(out)
}

impl ParsedInfotext {
    /// The generation parameters, when the infotext has every required field and a sampler
    /// sdtrace knows.
    pub fn params(&self) -> Result<InfotextParams> {
        let missing = |field: &str| ImageError::Infotext {
            field: field.into(),
            what: "is missing".into(),
        };
        let sampler = match (&self.sampler, &self.a1111_sampler) {
            (Some(s), _) => s.clone(),
            (None, Some(a)) => {
                return Err(ImageError::Infotext {
                    field: "Sampler".into(),
                    what: format!(
                        "'{a}'{} has no sdtrace equivalent (supported: DPM++ 2M with Karras or Uniform, Euler, Euler a, DDIM)",
                        self.schedule_type
                            .as_deref()
                            .map_or(String::new(), |t| format!(" with schedule type '{t}'"))
                    ),
                });
            }
            (None, None) => return Err(missing("Sampler")),
        };
        Ok(InfotextParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps.ok_or_else(|| missing("Steps"))?,
            sampler,
            cfg_scale: self.cfg_scale.ok_or_else(|| missing("CFG scale"))?,
            seed: self.seed.ok_or_else(|| missing("Seed"))?,
            width: self.width.ok_or_else(|| missing("Size"))?,
            height: self.height.ok_or_else(|| missing("Size"))?,
            model_hash: self.model_hash.clone(),
            model_name: self.model_name.clone(),
            clip_skip: self.clip_skip,
            extra: self.extra.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> InfotextParams {
        InfotextParams {
            prompt: "a photo of an astronaut, riding a horse: on mars".into(),
            negative_prompt: "blurry, lowres".into(),
            steps: 20,
            sampler: "dpmpp-2m-karras".into(),
            cfg_scale: 7.0,
            seed: 1_744_694_513,
            width: 512,
            height: 768,
            model_hash: Some("6ce0161689".into()),
            model_name: Some("v1-5-pruned-emaonly".into()),
            clip_skip: Some(2),
            extra: vec![],
        }
    }

    #[test]
    fn a1111_layout() {
        assert_eq!(
            infotext(&params()),
            "a photo of an astronaut, riding a horse: on mars\nNegative prompt: blurry, lowres\n\
             Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1744694513, \
             Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2"
        );
        let p = InfotextParams {
            negative_prompt: String::new(),
            sampler: "euler-a".into(),
            cfg_scale: 7.5,
            model_hash: None,
            model_name: None,
            clip_skip: Some(1),
            extra: vec![
                ("Lora hashes".into(), "detail: 0123abcd, style: 89ef".into()),
                ("Tiling".into(), "Tiling".into()),
                ("Seed".into(), "42".into()),
            ],
            ..params()
        };
        assert_eq!(
            infotext(&p),
            "a photo of an astronaut, riding a horse: on mars\n\
             Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, \
             Size: 512x768, Lora hashes: \"detail: 0123abcd, style: 89ef\", Tiling"
        );
        for (ours, want) in [
            ("dpmpp-2m", "Sampler: DPM++ 2M, Schedule type: Uniform,"),
            ("euler", "Sampler: Euler, Schedule type: Automatic,"),
            ("ddim", "Sampler: DDIM, Schedule type: Automatic,"),
            ("lms", "Sampler: lms, CFG scale"),
        ] {
            let t = infotext(&InfotextParams {
                sampler: ours.into(),
                ..params()
            });
            assert!(t.contains(want), "{ours}: {t}");
        }
    }

    #[test]
    fn quoting_as_python_json_dumps() {
        assert_eq!(quote("plain text"), "plain text");
        assert_eq!(quote("a: b"), "\"a: b\"");
        assert_eq!(
            quote("x, \"y\"\\\n\tz\u{1}é😀"),
            "\"x, \\\"y\\\"\\\\\\n\\tz\\u0001é😀\""
        );
        assert_eq!(
            unquote(&quote("x, \"y\"\\\n\tz\u{1}é😀")),
            "x, \"y\"\\\n\tz\u{1}é😀"
        );
        assert_eq!(unquote("\""), "\"");
        assert_eq!(unquote("\"bad \\q\""), "\"bad \\q\"");
    }

    #[test]
    fn round_trips() {
        let cases = [
            params(),
            InfotextParams {
                prompt: "line one\nline two, with (emphasis:1.2)\n日本語のプロンプト".into(),
                negative_prompt: "neg one\nneg two".into(),
                sampler: "ddim".into(),
                cfg_scale: 0.1 + 0.2,
                clip_skip: None,
                model_hash: None,
                extra: vec![
                    ("Denoising strength".into(), "0.5".into()),
                    (
                        "Hires prompt".into(),
                        "a \"quoted\", text\nover lines".into(),
                    ),
                    ("Version".into(), "v1.10.1".into()),
                ],
                ..params()
            },
            InfotextParams {
                prompt: String::new(),
                negative_prompt: "only negative".into(),
                sampler: "dpmpp-2m".into(),
                ..params()
            },
        ];
        for p in cases {
            let text = infotext(&p);
            let back = parse_infotext(&text).unwrap();
            assert_eq!(back.params().unwrap(), p, "{text}");
        }
    }

    #[test]
    fn parses_what_a1111_wrote_before_and_after_1_9() {
        let old = "masterpiece\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = parse_infotext(old).unwrap();
        assert_eq!(p.sampler.as_deref(), Some("dpmpp-2m-karras"));
        assert_eq!(p.model_hash.as_deref(), Some("45dee52b"));
        assert_eq!(
            (p.width, p.height, p.clip_skip),
            (Some(512), Some(512), None)
        );
        for (sampler, schedule, want) in [
            ("DPM++ 2M", None, Some("dpmpp-2m")),
            ("DPM++ 2M", Some("Automatic"), Some("dpmpp-2m-karras")),
            ("DPM++ 2M", Some("Uniform"), Some("dpmpp-2m")),
            ("DPM++ 2M", Some("Exponential"), None),
            ("Euler a", Some("Automatic"), Some("euler-a")),
            ("Euler", Some("Karras"), None),
            ("Euler Karras", None, None),
            ("LMS", None, None),
        ] {
            assert_eq!(
                sampler_from_a1111(sampler, schedule),
                want,
                "{sampler} {schedule:?}"
            );
        }
        let p = parse_infotext("just a prompt\nsecond line").unwrap();
        assert_eq!(p.prompt, "just a prompt\nsecond line");
        assert!(p.params.is_empty());
        let e = p.params().unwrap_err().to_string();
        assert!(e.contains("Sampler"), "{e}");
        let e = parse_infotext("x\nSteps: many, Sampler: Euler, Seed: 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'Steps'") && e.contains("many"), "{e}");
        let e = parse_infotext(
            "x\nSteps: 2, Sampler: LMS, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 8x8",
        )
        .unwrap()
        .params()
        .unwrap_err()
        .to_string();
        assert!(e.contains("'LMS' with schedule type 'Karras'"), "{e}");
    }

    #[test]
    fn findall_like_python() {
        // Unclosed quote falls back to the raw form; an empty value is skipped; a key needs two
        // characters; text between pairs is skipped.
        let p = param_pairs(r#"A: "x, Bb: 1, ??? Cc:, D: 2, Ee: "q\"r", Ff: "s" t"#);
        assert_eq!(
            p,
            vec![
                ("Bb".to_string(), "1".to_string()),
                ("Cc".into(), String::new()),
                ("Ee".into(), "\"q\\\"r\"".into()),
                ("Ff".into(), "\"s\" t".into()),
            ]
        );
    }

    #[test]
    fn pixels_truncate_like_numpy() {
        assert_eq!(pixel(1.0), 255);
        assert_eq!(pixel(0.999), 254);
        assert_eq!(pixel(0.5), 127);
        assert_eq!(pixel(-0.1), 0);
        assert_eq!(pixel(f32::NAN), 0);
        assert_eq!(pixel(3.0), 255);
        // 255 × f32(0.2) = 51.0000007… in f64 but exactly 51 in f32 arithmetic.
        assert_eq!(pixel(0.2), 51);
        let shape = [2, 3, 1, 2];
        let data: Vec<f32> = (0..12).map(|i| i as f32 / 11.0).collect();
        let imgs = rgb8_from_chw(&shape, &data).unwrap();
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].0, 2);
        assert_eq!(imgs[0].1, 1);
        // Pixel 0 of item 0: channels at 0, 2, 4.
        assert_eq!(
            &imgs[0].2[..3],
            &[pixel(0.0), pixel(2.0 / 11.0), pixel(4.0 / 11.0)]
        );
        assert!(rgb8_from_chw(&[1, 4, 2, 2], &[0.0; 16]).is_err());
        assert!(rgb8_from_chw(&[3, 2, 2], &[0.0; 11]).is_err());
        assert!(rgb8_from_chw(&[usize::MAX, 3, 2, 2], &[]).is_err());
    }

    #[test]
    fn png_text_chunks_like_pillow() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        let latin = "prompt with é\nSteps: 2";
        let wide = "日本語, Steps: 2";
        let png = encode_png(2, 3, &rgb, &[("parameters", latin), ("other", wide)]).unwrap();
        assert_eq!(
            png_text(&png).unwrap(),
            vec![
                ("parameters".to_string(), latin.to_string()),
                ("other".to_string(), wide.to_string())
            ]
        );
        // The Latin-1 text is a tEXt chunk holding Latin-1 bytes; the other an uncompressed iTXt
        // with empty language and translated keyword; both before IDAT.
        let find = |kind: &[u8]| png.windows(4).position(|w| w == kind).unwrap();
        let text_at = find(b"tEXt");
        assert_eq!(&png[text_at + 4..text_at + 4 + 11], b"parameters\0");
        assert_eq!(png[text_at + 4 + 11 + 12], 0xE9);
        let itxt_at = find(b"iTXt");
        assert_eq!(&png[itxt_at + 4..itxt_at + 4 + 9], b"other\0\0\0\0");
        assert!(text_at < find(b"IDAT") && itxt_at < find(b"IDAT"));
        // The pixels decode back.
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 3));
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
        // Damage is reported, never a panic.
        assert!(matches!(png_text(b"GIF89a"), Err(ImageError::NotPng)));
        let mut bad = png.clone();
        bad[text_at + 6] ^= 1;
        assert!(png_text(&bad).unwrap_err().to_string().contains("CRC"));
        for cut in 0..png.len() {
            let _ = png_text(&png[..cut]);
        }
        assert!(encode_png(2, 3, &rgb[1..], &[]).is_err());
        assert!(encode_png(2, 3, &rgb, &[("", "x")]).is_err());
        assert!(encode_png(2, 3, &rgb, &[("ключ", "x")]).is_err());
    }

    #[test]
    fn settings_to_params() {
        let mut s = Settings {
            model: Some("/models/v1-5-pruned-emaonly.safetensors".into()),
            prompt: Some("p".into()),
            sampler: Some("euler".into()),
            steps: Some(3),
            cfg_scale: Some(7.5),
            seed: Some(9),
            width: Some(64),
            ..Default::default()
        };
        s.model_hashes.insert(
            "sha256".into(),
            "6CE0161689B3853ACAA03779EC93EAFE75A02F4CED659BEE03F50797806FA2FA".into(),
        );
        s.extra.insert("clip_skip".into(), serde_json::json!(2));
        let p = InfotextParams::from_settings(&s, 32, 48).unwrap();
        assert_eq!(p.model_name.as_deref(), Some("v1-5-pruned-emaonly"));
        assert_eq!(p.model_hash.as_deref(), Some("6ce0161689"));
        assert_eq!((p.width, p.height, p.clip_skip), (64, 48, Some(2)));
        assert!(p.extra.is_empty());
        // The webui's names for its CPU generator and a set ENSD.
        s.rng = Some("torch-cpu".into());
        s.extra.insert(
            "rng_params".into(),
            serde_json::json!({"params": {"ensd": 31337}}),
        );
        let p = InfotextParams::from_settings(&s, 32, 48).unwrap();
        let text = infotext(&p);
        assert!(text.ends_with("ENSD: 31337, RNG: CPU"), "{text}");
        // Generators the webui has no field for are named where the webui does not look.
        s.extra.remove("rng_params");
        for (rng, preset, want) in [
            ("a1111-nv", None, "RNG: NV"),
            (
                "torch-cuda:15,2048",
                Some("gtx1070"),
                "sdtrace RNG: \"torch-cuda:gtx1070 (the webui's GPU source, as drawn on a GeForce GTX 1070)\"",
            ),
            (
                "torch-cuda:12,1024",
                None,
                "sdtrace RNG: \"torch-cuda:12,1024 (the webui's GPU source, as drawn on a card of 12 SMs × 1024 threads)\"",
            ),
            (
                "sdtrace",
                None,
                "sdtrace RNG: sdtrace (sdtrace's own generator",
            ),
        ] {
            s.rng = Some(rng.into());
            if let Some(p) = preset {
                s.extra.insert(
                    "rng_params".into(),
                    serde_json::json!({"params": {"preset": p}}),
                );
            }
            let text = infotext(&InfotextParams::from_settings(&s, 32, 48).unwrap());
            assert!(text.contains(want), "{rng}: {text}");
            assert!(!text.contains("RNG: CPU"), "{rng}: {text}");
            s.extra.remove("rng_params");
        }
        s.cfg_scale = None;
        s.seed = None;
        let e = InfotextParams::from_settings(&s, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("settings.cfg_scale, settings.seed"), "{e}");
    }
}
