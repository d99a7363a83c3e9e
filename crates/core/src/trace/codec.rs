//! Payload encodings.
//!
//! `raw`: the tensor's little-endian bytes as they are. `shuffle-zstd`: the bytes are cut into
//! blocks of [`BLOCK`] bytes (the last may be shorter), each block is byte-shuffled (byte `j` of
//! element `i` moves to position `j·n + i`, `n` = elements in the block) and compressed as one
//! zstd frame; the body is, per block, its compressed length as u32 LE then the zstd frame.
//! Independent blocks let readers stream a payload with bounded memory.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Raw bytes per shuffle-zstd block: a multiple of every element size.
pub const BLOCK: usize = 1 << 18;

/// How a payload's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Codec {
    #[default]
    Raw,
    ShuffleZstd,
}

impl Codec {
    pub fn code(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::ShuffleZstd => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::ShuffleZstd => "shuffle-zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Codec> for u8 {
    fn from(c: Codec) -> u8 {
        c.code()
    }
}

impl TryFrom<u8> for Codec {
    type Error = String;
    fn try_from(c: u8) -> Result<Self, String> {
        match c {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::ShuffleZstd),
            c => Err(format!("unknown payload codec {c}")),
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" | "none" => Ok(Codec::Raw),
            "zstd" | "shuffle-zstd" => Ok(Codec::ShuffleZstd),
            _ => Err(format!("unknown codec '{s}' (expected raw or zstd)")),
        }
    }
}

/// Byte-shuffle `src` (elements of `size` bytes) into `dst`.
pub fn shuffle(src: &[u8], size: usize, dst: &mut Vec<u8>) {
    let n = src.len() / size;
    dst.clear();
    dst.resize(src.len(), 0);
    for j in 0..size {
        for (i, d) in dst[j * n..(j + 1) * n].iter_mut().enumerate() {
            *d = src[i * size + j];
        }
    }
}

/// Inverse of [`shuffle`].
pub fn unshuffle(src: &[u8], size: usize, dst: &mut Vec<u8>) {
    let n = src.len() / size;
    dst.clear();
    dst.resize(src.len(), 0);
    for j in 0..size {
        for (i, &s) in src[j * n..(j + 1) * n].iter().enumerate() {
            dst[i * size + j] = s;
        }
    }
}

/// zstd level used for payloads: fast, and float data gains little from higher levels.
const ZSTD_LEVEL: i32 = 1;

/// Encode a whole payload with shuffle-zstd.
pub fn encode_shuffle_zstd(raw: &[u8], elem_size: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() / 2 + 64);
    let mut shuffled = Vec::new();
    let mut enc = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    for block in raw.chunks(BLOCK) {
        shuffle(block, elem_size, &mut shuffled);
        let z = enc.compress(&shuffled)?;
        out.extend_from_slice(&(z.len() as u32).to_le_bytes());
        out.extend_from_slice(&z);
    }
    Ok(out)
}

/// Streaming decoder state for one shuffle-zstd payload.
pub struct BlockDecoder {
    elem_size: usize,
    remaining_raw: u64,
    dec: zstd::bulk::Decompressor<'static>,
    shuffled: Vec<u8>,
}

impl BlockDecoder {
    pub fn new(elem_size: usize, raw_len: u64) -> std::io::Result<Self> {
        Ok(BlockDecoder {
            elem_size,
            remaining_raw: raw_len,
            dec: zstd::bulk::Decompressor::new()?,
            shuffled: Vec::new(),
        })
    }

    /// Raw length of the next block, or 0 when done.
    pub fn next_block_len(&self) -> usize {
        self.remaining_raw.min(BLOCK as u64) as usize
    }

    /// Decode one compressed block into `out` (replacing its contents).
    pub fn decode_block(&mut self, z: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let expect = self.next_block_len();
        if expect == 0 {
            return Err("more compressed blocks than the payload length allows".into());
        }
        self.shuffled = self
            .dec
            .decompress(z, expect)
            .map_err(|e| format!("zstd block does not decode: {e}"))?;
        if self.shuffled.len() != expect {
            return Err(format!(
                "zstd block decodes to {} bytes, expected {expect}",
                self.shuffled.len()
            ));
        }
        unshuffle(&self.shuffled, self.elem_size, out);
        self.remaining_raw -= expect as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_round_trip() {
        let src: Vec<u8> = (0..24u8).collect();
        let mut s = Vec::new();
        shuffle(&src, 4, &mut s);
        assert_eq!(&s[..6], &[0, 4, 8, 12, 16, 20]);
        let mut back = Vec::new();
        unshuffle(&s, 4, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn blocks_round_trip() {
        let raw: Vec<u8> = (0..(BLOCK * 2 + 1000)).map(|i| (i % 251) as u8).collect();
        let enc = encode_shuffle_zstd(&raw, 4).unwrap();
        let mut dec = BlockDecoder::new(4, raw.len() as u64).unwrap();
        let mut pos = 0;
        let mut out = Vec::new();
        let mut back = Vec::new();
        while dec.next_block_len() > 0 {
            let len = u32::from_le_bytes(enc[pos..pos + 4].try_into().unwrap()) as usize;
            dec.decode_block(&enc[pos + 4..pos + 4 + len], &mut out)
                .unwrap();
            back.extend_from_slice(&out);
            pos += 4 + len;
        }
        assert_eq!(pos, enc.len());
        assert_eq!(back, raw);
    }
}
