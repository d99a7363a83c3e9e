//! Export of recorded payloads to `.npy` and `.safetensors`, for numpy and PyTorch, and of
//! image records to `.png`, as AUTOMATIC1111's webui saves them.
//!
//! Rendering is pure ([`to_npy`], [`to_safetensors`], [`to_png`] return bytes); [`write_atomic`]
//! puts bytes on disk through a temporary file in the same directory and a rename, so an
//! interrupted export never leaves a half-written file under the requested name. A PNG holds one
//! batch item of an image tensor (`[B, 3, H, W]` or `[3, H, W]`: floats in [0, 1] or 8-bit
//! values), converted with A1111's pixel rule, and the run's generation parameters as A1111's
//! `parameters` text chunk (see [`crate::image`]).

use crate::dtype::DType;
use crate::image::{ImageError, ImageTensor, InfotextParams, PARAMETERS_KEY, encode_png, infotext};
use crate::trace::Settings;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{path}: unsupported output extension; use .npy or .safetensors (any tensor) or .png (an image record)"
    )]
    UnknownExtension { path: PathBuf },
    #[error("'{key}' is not an image: {what}")]
    NotImage { key: String, what: String },
    #[error("--index {index}: '{key}' holds {batch} image(s); use --index 0 to {last}", last = batch.saturating_sub(1))]
    BadIndex {
        key: String,
        index: usize,
        batch: usize,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(".npy has no bfloat16 type; export '{key}' to .safetensors instead")]
    NpyBf16 { key: String },
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode safetensors: {0}")]
    Safetensors(String),
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Npy,
    Safetensors,
    Png,
}

impl ExportFormat {
    /// The format named by `path`'s extension.
    pub fn from_path(path: &Path) -> Result<Self, ExportError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("npy") => Ok(ExportFormat::Npy),
            Some("safetensors") => Ok(ExportFormat::Safetensors),
            Some("png") => Ok(ExportFormat::Png),
            _ => Err(ExportError::UnknownExtension {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// A `.npy` (version 1.0) file holding the tensor, C order, little-endian.
pub fn to_npy(key: &str, dtype: DType, shape: &[u64], data: &[u8]) -> Result<Vec<u8>, ExportError> {
    let descr = match dtype {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::F64 => "<f8",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::U8 => "|u1",
        DType::BF16 => {
            return Err(ExportError::NpyBf16 {
                key: key.to_string(),
            });
        }
    };
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes,
    // ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// A `.safetensors` file holding one tensor named `key`, with `metadata` in `__metadata__`.
pub fn to_safetensors(
    key: &str,
    dtype: DType,
    shape: &[u64],
    data: &[u8],
    metadata: &[(String, String)],
) -> Result<Vec<u8>, ExportError> {
    use safetensors::tensor::{Dtype, TensorView};
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
    };
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let view = TensorView::new(st_dtype, shape, data)
        .map_err(|e| ExportError::Safetensors(e.to_string()))?;
    let meta = (!metadata.is_empty()).then(|| metadata.iter().cloned().collect());
    safetensors::serialize([(key, view)], meta).map_err(|e| ExportError::Safetensors(e.to_string()))
}

/// A PNG and what the caller should tell the user about it.
#[derive(Clone, Debug, PartialEq)]
pub struct PngExport {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The `parameters` text written, if the header had the settings for it.
    pub parameters: Option<String>,
    /// Notes for the user (missing settings, NaN pixels written as 0).
    pub notes: Vec<String>,
}

/// A PNG of batch item `index` of the image record `key` (float values in [0, 1] or u8), with
/// A1111's `parameters` chunk built from the trace header's `settings`; the seed written is
/// `seed + index`, A1111's seed of that batch item. Any other record is refused with the reason.
pub fn to_png(
    key: &str,
    dtype: DType,
    shape: &[u64],
    data: &[u8],
    index: usize,
    settings: &Settings,
) -> Result<PngExport, ExportError> {
    let img = ImageTensor::from_record(dtype, shape, data).map_err(|e| match e {
        ImageError::NotImage { what } => ExportError::NotImage {
            key: key.to_string(),
            what,
        },
        e => e.into(),
    })?;
    let mut notes = Vec::new();
    let nan = img.nan_count();
    if nan > 0 {
        notes.push(format!("{nan} NaN values written as 0, as A1111 does"));
    }
    let Some(rgb) = img.rgb8(index) else {
        return Err(ExportError::BadIndex {
            key: key.to_string(),
            index,
            batch: img.batch,
        });
    };
    let (width, height) = (img.width, img.height);
    let parameters = match InfotextParams::from_settings(settings, width, height) {
        Ok(mut p) => {
            p.seed = p.seed.wrapping_add(index as u64);
            Some(infotext(&p))
        }
        Err(e) => {
            notes.push(format!("no A1111 parameters written: {e}"));
            None
        }
    };
    let text: Vec<(&str, &str)> = parameters
        .as_deref()
        .map(|p| (PARAMETERS_KEY, p))
        .into_iter()
        .collect();
    let bytes = encode_png(width, height, &rgb, &text)?;
    Ok(PngExport {
        bytes,
        width,
        height,
        parameters,
        notes,
    })
}

/// Write `bytes` to `path` atomically (temporary file + rename in the same directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let io = |op, source| ExportError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| io("not a file name", std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot write", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_exact() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let npy = to_npy("k", DType::F32, &[2, 3], &data).unwrap();
        let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&npy[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(&npy[10 + hlen..], &data[..]);
        let one = to_npy("k", DType::U8, &[4], &[1, 2, 3, 4]).unwrap();
        assert!(
            std::str::from_utf8(&one[10..70])
                .unwrap()
                .contains("'shape': (4,)")
        );
        let scalar = to_npy("k", DType::F64, &[], &[0; 8]).unwrap();
        assert!(
            std::str::from_utf8(&scalar[10..70])
                .unwrap()
                .contains("'shape': ()")
        );
        assert!(matches!(
            to_npy("k", DType::BF16, &[1], &[0, 0]),
            Err(ExportError::NpyBf16 { .. })
        ));
    }

    #[test]
    fn safetensors_round_trip() {
        let data: Vec<u8> = [7i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = to_safetensors(
            "noise.initial",
            DType::I64,
            &[2],
            &data,
            &[("step".into(), "none".into())],
        )
        .unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("noise.initial").unwrap();
        assert_eq!(t.shape(), &[2]);
        assert_eq!(t.data(), &data[..]);
    }

    #[test]
    fn png_of_float_and_u8_images() {
        let settings = Settings {
            prompt: Some("p".into()),
            sampler: Some("euler".into()),
            steps: Some(4),
            cfg_scale: Some(7.0),
            seed: Some(10),
            ..Default::default()
        };
        // f16 [3, 2, 2] with a NaN: written as 0, with a note; size from the image.
        let vals = [
            0.0f32,
            0.25,
            0.5,
            1.0,
            f32::NAN,
            0.1,
            0.2,
            0.3,
            0.4,
            0.6,
            0.7,
            0.8,
        ];
        let data: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let png = to_png("image", DType::F16, &[3, 2, 2], &data, 0, &settings).unwrap();
        assert_eq!((png.width, png.height), (2, 2));
        assert_eq!(png.notes, vec!["1 NaN values written as 0, as A1111 does"]);
        let text = png.parameters.unwrap();
        assert!(text.ends_with("Seed: 10, Size: 2x2"), "{text}");
        assert_eq!(
            crate::image::png_text(&png.bytes).unwrap()[0],
            (PARAMETERS_KEY.to_string(), text)
        );
        // Refusals: an integer tensor, values outside [0, 1], a batch index past the end.
        let e = to_png("t", DType::I64, &[3, 1, 1], &[0; 24], 0, &settings).unwrap_err();
        assert!(e.to_string().contains("i64 values"), "{e}");
        let data: Vec<u8> = [-1.0f32, 0.0, 1.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = to_png("vae.decoder", DType::F32, &[3, 1, 1], &data, 0, &settings).unwrap_err();
        assert!(e.to_string().contains("span [-1, 1.5]"), "{e}");
        let e = to_png("image", DType::U8, &[2, 3, 1, 1], &[0; 6], 2, &settings).unwrap_err();
        assert!(e.to_string().contains("use --index 0 to 1"), "{e}");
        let ok = to_png(
            "image",
            DType::U8,
            &[2, 3, 1, 1],
            &[1, 2, 3, 4, 5, 6],
            1,
            &Settings::default(),
        )
        .unwrap();
        assert!(ok.parameters.is_none() && ok.notes[0].contains("settings.steps"));
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(
            ExportFormat::from_path(Path::new("a.NPY")).unwrap(),
            ExportFormat::Npy
        );
        assert_eq!(
            ExportFormat::from_path(Path::new("a.safetensors")).unwrap(),
            ExportFormat::Safetensors
        );
        assert_eq!(
            ExportFormat::from_path(Path::new("a.png")).unwrap(),
            ExportFormat::Png
        );
        assert!(ExportFormat::from_path(Path::new("a.pt")).is_err());
    }
}
