//! `file:PATH`: noise read from a `.npy` or `.safetensors` file instead of drawn.
//!
//! A `.npy` file (version 1–3, little-endian `<f4`, `<f8` or `<f2`, C order) holds the initial
//! noise only. A `.safetensors` file holds either one tensor (the initial noise, whatever its
//! name) or `noise.initial` plus, optionally, `sampler.noise.0`, `sampler.noise.1`, … for the
//! ancestral draws in order (what `sdtrace export` writes has these names). Float32, float16,
//! bfloat16 and float64 tensors are read as f32. Invariants: the whole file is read and checked
//! when the source is made (before a run starts), never more than [`MAX_FILE`] bytes and never
//! an allocation sized by an unchecked header; a draw whose shape differs from the file's
//! (leading 1s aside) is an error naming both shapes, never a silent reshape.

use super::RngError;
use crate::dtype::DType;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Largest noise file read (4·2048² f32 elements, a 16384² image, are 64 MiB).
pub const MAX_FILE: u64 = 1 << 30;

/// One stored tensor.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Noise from a file.
#[derive(Clone, Debug)]
pub struct FileNoise {
    path: PathBuf,
    /// Draws in order: the initial noise, then the ancestral draws.
    draws: Vec<Stored>,
    next: usize,
    hash: String,
}

fn err(path: &Path, what: impl Into<String>) -> RngError {
    RngError::File {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl FileNoise {
    pub const NAME: &'static str = "file";

    /// Read and check `path`.
    pub fn open(path: &Path) -> Result<Self, RngError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            err(
                path,
                format!("cannot read it ({e}); give a .npy or .safetensors file, e.g. one written by `sdtrace noise` or `sdtrace export`"),
            )
        })?;
        if meta.len() > MAX_FILE {
            return Err(err(
                path,
                format!(
                    "{} bytes is more than the {MAX_FILE} bytes a noise file may have",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read it: {e}")))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let draws = match ext.as_deref() {
            Some("npy") => vec![read_npy(path, &bytes)?],
            Some("safetensors") => read_safetensors(path, &bytes)?,
            _ => {
                return Err(err(
                    path,
                    "unknown extension; noise files are .npy or .safetensors",
                ));
            }
        };
        Ok(FileNoise {
            path: path.to_path_buf(),
            draws,
            next: 0,
            hash: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        })
    }

    /// Draw `k` (0 = the initial noise), checked against `shape`.
    fn stored(&self, k: usize, shape: &[usize]) -> Result<&Stored, RngError> {
        let Some(d) = self.draws.get(k) else {
            let held = self
                .draws
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(err(
                &self.path,
                format!(
                    "draw {} of shape {shape:?} is needed, but the file holds only {held}; an ancestral sampler (euler-a) needs one tensor per step: add sampler.noise.0, sampler.noise.1, ... to a .safetensors file, or use a deterministic sampler",
                    k + 1
                ),
            ));
        };
        let strip =
            |s: &[usize]| -> Vec<usize> { s.iter().copied().skip_while(|&d| d == 1).collect() };
        if strip(&d.shape) != strip(shape) {
            let image = |s: &[usize]| match s {
                [.., 4, h, w] => format!(" (a {}x{} image)", w * 8, h * 8),
                _ => String::new(),
            };
            return Err(err(
                &self.path,
                format!(
                    "tensor '{}' has shape {:?}{} but this run needs {shape:?}{}: use a run of the file's size (--size), or write noise of the right size with `sdtrace noise`",
                    d.name,
                    d.shape,
                    image(&d.shape),
                    image(shape)
                ),
            ));
        }
        Ok(d)
    }

    /// The next draw, checked against `shape`.
    pub fn take(&mut self, shape: &[usize]) -> Result<Vec<f32>, RngError> {
        let data = self.stored(self.next, shape)?.data.clone();
        self.next += 1;
        Ok(data)
    }

    /// Whether the next draws, of `shapes`, will succeed (checked before a run starts).
    pub fn check(&self, shapes: &[Vec<usize>]) -> Result<(), RngError> {
        for (i, shape) in shapes.iter().enumerate() {
            self.stored(self.next + i, shape)?;
        }
        Ok(())
    }

    /// Draws not taken yet.
    pub fn remaining(&self) -> usize {
        self.draws.len().saturating_sub(self.next)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn params(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "xxh3": self.hash,
            "tensors": self.draws.iter().map(|d| json!({"name": d.name, "shape": d.shape})).collect::<Vec<_>>(),
        })
    }
}

/// Element count of a file's shape, refusing overflow.
fn count(path: &Path, shape: &[usize]) -> Result<usize, RngError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| err(path, format!("shape {shape:?} is too large")))
}

/// Little-endian floats of `dtype` to f32 ([`DType::decode_floats`]).
fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    dtype.decode_floats(bytes).unwrap_or_default()
}

/// Read a `.npy` file.
fn read_npy(path: &Path, bytes: &[u8]) -> Result<Stored, RngError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(path, format!(".npy version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| err(path, "the .npy header is cut short or not text"))?;
    let field = |name: &str| -> Option<&str> {
        let at = header.find(&format!("'{name}'"))?;
        let rest = header[at + name.len() + 2..].trim_start();
        Some(rest.strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| err(path, "the .npy header has no 'descr'"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(err(
            path,
            "the array is in Fortran order; save np.ascontiguousarray(noise) instead",
        ));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| err(path, "the .npy header has no 'shape'"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err(path, format!("cannot read the shape ({shape_text})")))?;
    let dtype = match descr {
        "<f4" | "=f4" => DType::F32,
        "<f8" | "=f8" => DType::F64,
        "<f2" | "=f2" => DType::F16,
        other => {
            return Err(err(
                path,
                format!(
                    "dtype '{other}' is not supported; save little-endian float32 (noise.astype('<f4'))"
                ),
            ));
        }
    };
    let size = dtype.size();
    let n = count(path, &shape)?;
    let data = &bytes[start + header_len..];
    if n.checked_mul(size) != Some(data.len()) {
        return Err(err(
            path,
            format!(
                "shape {shape:?} needs {} bytes of data, the file has {}",
                n.saturating_mul(size),
                data.len()
            ),
        ));
    }
    Ok(Stored {
        name: "(npy)".into(),
        shape,
        data: decode(data, dtype),
    })
}

/// Read a `.safetensors` file: one tensor, or `noise.initial` and `sampler.noise.N`.
fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<Stored>, RngError> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let load = |name: &str| -> Result<Stored, RngError> {
        let t = st
            .tensor(name)
            .map_err(|e| err(path, format!("tensor '{name}': {e}")))?;
        let dtype = match t.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(err(
                    path,
                    format!("tensor '{name}' is {other:?}; noise must be a float tensor"),
                ));
            }
        };
        Ok(Stored {
            name: name.to_string(),
            shape: t.shape().to_vec(),
            data: decode(t.data(), dtype),
        })
    };
    if names.len() == 1 {
        return Ok(vec![load(&names[0])?]);
    }
    if !names.iter().any(|n| n == "noise.initial") {
        let mut shown = names.clone();
        shown.sort();
        return Err(err(
            path,
            format!(
                "it holds {} tensors ({}) but none is called 'noise.initial'; keep one tensor, or name the initial noise 'noise.initial' and the ancestral draws 'sampler.noise.0', 'sampler.noise.1', ...",
                names.len(),
                shown.join(", ")
            ),
        ));
    }
    let mut draws = vec![load("noise.initial")?];
    for k in 0.. {
        let name = format!("sampler.noise.{k}");
        if !names.contains(&name) {
            break;
        }
        draws.push(load(&name)?);
    }
    Ok(draws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::export::{to_npy, to_safetensors};

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_what_export_writes() {
        let dir = tempfile::tempdir().unwrap();
        let v: Vec<f32> = (0..16).map(|i| i as f32 - 3.5).collect();
        let npy = dir.path().join("n.npy");
        std::fs::write(
            &npy,
            to_npy("k", DType::F32, &[1, 4, 2, 2], &bytes(&v)).unwrap(),
        )
        .unwrap();
        let mut f = FileNoise::open(&npy).unwrap();
        // Leading 1s do not matter.
        assert_eq!(f.take(&[4, 2, 2]).unwrap(), v);
        let e = f.take(&[1, 4, 2, 2]).unwrap_err().to_string();
        assert!(e.contains("sampler.noise.0") && e.contains("n.npy"), "{e}");
        let g = FileNoise::open(&npy).unwrap();
        assert!(g.check(&[vec![1, 4, 2, 2]]).is_ok());
        assert!(g.check(&[vec![1, 4, 2, 2], vec![1, 4, 2, 2]]).is_err());
        assert!(g.check(&[vec![1, 4, 2, 3]]).is_err());

        let st = dir.path().join("n.safetensors");
        std::fs::write(
            &st,
            to_safetensors("noise.initial", DType::F32, &[1, 4, 2, 2], &bytes(&v), &[]).unwrap(),
        )
        .unwrap();
        let mut f = FileNoise::open(&st).unwrap();
        let e = f.take(&[1, 4, 4, 4]).unwrap_err().to_string();
        assert!(
            e.contains("[1, 4, 2, 2] (a 16x16 image)")
                && e.contains("[1, 4, 4, 4] (a 32x32 image)"),
            "{e}"
        );
        assert_eq!(f.take(&[1, 4, 2, 2]).unwrap(), v);
        assert_eq!(f.params()["tensors"][0]["name"], "noise.initial");
    }

    #[test]
    fn several_tensors_are_served_in_order() {
        use safetensors::tensor::{Dtype, TensorView};
        let dir = tempfile::tempdir().unwrap();
        let a = bytes(&[1.0; 4]);
        let b = bytes(&[2.0; 4]);
        let c = half::f16::from_f32(3.0).to_le_bytes().repeat(4);
        let views = [
            (
                "noise.initial",
                TensorView::new(Dtype::F32, vec![4], &a).unwrap(),
            ),
            (
                "sampler.noise.0",
                TensorView::new(Dtype::F32, vec![4], &b).unwrap(),
            ),
            (
                "sampler.noise.1",
                TensorView::new(Dtype::F16, vec![4], &c).unwrap(),
            ),
            ("other", TensorView::new(Dtype::F32, vec![4], &a).unwrap()),
        ];
        let p = dir.path().join("all.safetensors");
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let mut f = FileNoise::open(&p).unwrap();
        assert_eq!(f.take(&[4]).unwrap(), [1.0; 4]);
        assert_eq!(f.take(&[4]).unwrap(), [2.0; 4]);
        assert_eq!(f.take(&[4]).unwrap(), [3.0; 4]);
        assert!(f.take(&[4]).is_err());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileNoise::open(&dir.path().join("missing.npy"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.npy") && e.contains("cannot read"),
            "{e}"
        );
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"hello").unwrap();
        assert!(
            FileNoise::open(&p)
                .unwrap_err()
                .to_string()
                .contains(".npy or .safetensors")
        );
        let p = dir.path().join("bad.npy");
        std::fs::write(
            &p,
            b"\x93NUMPY\x01\x00\x20\x00{'descr': '<i8', 'shape': (2,), }",
        )
        .unwrap();
        let e = FileNoise::open(&p).unwrap_err().to_string();
        assert!(e.contains("'<i8'"), "{e}");
        // A header claiming more data than the file holds.
        let mut b = to_npy("k", DType::F32, &[1000], &bytes(&[0.0; 1000])).unwrap();
        b.truncate(b.len() - 4);
        let p = dir.path().join("short.npy");
        std::fs::write(&p, b).unwrap();
        let e = FileNoise::open(&p).unwrap_err().to_string();
        assert!(e.contains("needs 4000 bytes"), "{e}");
        let p = dir.path().join("two.safetensors");
        let a = bytes(&[1.0]);
        let views = [
            (
                "a",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &a).unwrap(),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &a).unwrap(),
            ),
        ];
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let e = FileNoise::open(&p).unwrap_err().to_string();
        assert!(e.contains("'noise.initial'") && e.contains("a, b"), "{e}");
    }
}
