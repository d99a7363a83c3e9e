//! Export of recorded payloads to `.npy` and `.safetensors`, for numpy and PyTorch.
//!
//! Rendering is pure ([`to_npy`], [`to_safetensors`] return bytes); [`write_atomic`] puts bytes
//! on disk through a temporary file in the same directory and a rename, so an interrupted export
//! never leaves a half-written file under the requested name.

use crate::dtype::DType;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: unsupported output extension; use .npy or .safetensors")]
    UnknownExtension { path: PathBuf },
    #[error(".npy has no bfloat16 type; export '{key}' to .safetensors instead")]
    NpyBf16 { key: String },
    #[error("{path}: {op}: {source}")]
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
    fn formats_by_extension() {
        assert_eq!(
            ExportFormat::from_path(Path::new("a.NPY")).unwrap(),
            ExportFormat::Npy
        );
        assert_eq!(
            ExportFormat::from_path(Path::new("a.safetensors")).unwrap(),
            ExportFormat::Safetensors
        );
        assert!(ExportFormat::from_path(Path::new("a.pt")).is_err());
    }
}
