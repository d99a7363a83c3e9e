//! Model file hashes as AUTOMATIC1111's webui computes them, and `--expect-hash` checks.
//!
//! The webui's old hash (before mid-January 2023, still seen in shared infotexts) is the first 8
//! hex digits of the SHA-256 of the 64 KiB at offset 1 MiB (fewer bytes, or none, when the
//! file is shorter); its new hash is the SHA-256 of the whole file, shown as its first 10 hex
//! digits (the infotext's `Model hash`). Both are computed in one streaming read with a 1 MiB
//! buffer, whatever the file's size. Nothing here needs a tensor library.

use super::ldm::CheckpointError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Offset and length of the bytes behind the webui's old hash.
const OLD_AT: u64 = 0x10_0000;
const OLD_LEN: u64 = 0x1_0000;

/// A file's hashes in lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelHashes {
    /// SHA-256 of the whole file (64 hex digits).
    pub sha256: String,
    /// The webui's old hash (8 hex digits).
    pub a1111_old: String,
}

impl ModelHashes {
    /// The webui's short hash: the first 10 hex digits of the SHA-256.
    pub fn short(&self) -> &str {
        &self.sha256[..10]
    }

    /// Whether `expected` (8-hex old hash, 10-hex short hash or the full SHA-256, any case,
    /// optionally in square brackets as the webui shows it) names this file.
    pub fn check(&self, expected: &str, path: &Path) -> Result<(), CheckpointError> {
        let given = expected
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !given.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckpointError::BadExpectedHash {
                given: expected.into(),
            });
        }
        let (actual, what) = match given.len() {
            8 => (self.a1111_old.as_str(), "A1111's old 8-hex hash"),
            10 => (self.short(), "SHA-256 short hash"),
            64 => (self.sha256.as_str(), "SHA-256"),
            _ => {
                return Err(CheckpointError::BadExpectedHash {
                    given: expected.into(),
                });
            }
        };
        if actual == given {
            Ok(())
        } else {
            Err(CheckpointError::HashMismatch {
                path: path.to_path_buf(),
                expected: given,
                actual: actual.to_string(),
                what,
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash everything `reader` yields (see the module documentation).
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<ModelHashes> {
    let mut full = Sha256::new();
    let mut old = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        full.update(chunk);
        let (lo, hi) = (pos, pos + n as u64);
        let (a, b) = (lo.max(OLD_AT), hi.min(OLD_AT + OLD_LEN));
        if a < b {
            old.update(&chunk[(a - lo) as usize..(b - lo) as usize]);
        }
        pos = hi;
    }
    Ok(ModelHashes {
        sha256: hex(&full.finalize()),
        a1111_old: hex(&old.finalize())[..8].to_string(),
    })
}

/// Hash the file at `path`.
pub fn hash_file(path: &Path) -> Result<ModelHashes, CheckpointError> {
    let f = std::fs::File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        op: "cannot open",
        source,
    })?;
    hash_reader(f).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        op: "cannot read",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads in odd-sized pieces, to cross the 1 MiB boundary mid-chunk.
    struct Jagged<'a>(&'a [u8], usize);
    impl Read for Jagged<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7919 + 4093;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn hashes_match_direct_computation() {
        // SHA-256 of the empty string (a file shorter than 1 MiB has an empty old-hash range).
        let empty = hash_reader(&b"abc"[..]).unwrap();
        assert_eq!(empty.a1111_old, "e3b0c442");
        assert_eq!(
            empty.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let data: Vec<u8> = (0..(1u32 << 20) + 70_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let h = hash_reader(Jagged(&data, 0)).unwrap();
        assert_eq!(h.sha256, hex(&Sha256::digest(&data)));
        let old = hex(&Sha256::digest(&data[0x10_0000..0x11_0000]));
        assert_eq!(h.a1111_old, old[..8]);
        assert_eq!(h.short(), &h.sha256[..10]);
        // A file ending inside the 64 KiB window hashes what there is.
        let short = &data[..0x10_0000 + 100];
        let h = hash_reader(short).unwrap();
        assert_eq!(
            h.a1111_old,
            hex(&Sha256::digest(&data[0x10_0000..0x10_0000 + 100]))[..8]
        );
    }

    #[test]
    fn expected_hashes() {
        let h = hash_reader(&b"abc"[..]).unwrap();
        let p = Path::new("m.safetensors");
        for ok in ["e3b0c442", "BA7816BF8F", "[ba7816bf8f]", &h.sha256] {
            h.check(ok, p).unwrap();
        }
        let e = h.check("2700c435", p).unwrap_err().to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("e3b0c442") && e.contains("2700c435"),
            "{e}"
        );
        let e = h.check("xyz", p).unwrap_err().to_string();
        assert!(e.contains("--expect-hash 'xyz'"), "{e}");
        assert!(h.check("abcdef", p).is_err());
    }
}
