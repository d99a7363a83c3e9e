//! Byte-level framing: file header, frame headers, checksums, footer.

use std::io::Write;

/// First 8 bytes of every trace.
pub const FILE_MAGIC: &[u8; 8] = b"SDTRACE\0";
/// Last 8 bytes of a complete trace.
pub const FOOTER_MAGIC: &[u8; 8] = b"SDTRIDX\0";
/// Format major version: readers refuse other majors.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version: additions old readers can ignore.
pub const FORMAT_MINOR: u16 = 1;

pub const FILE_HEADER_LEN: u64 = 16;
pub const FRAME_HEADER_LEN: u64 = 16;
pub const FOOTER_LEN: u64 = 24;

/// Upper bounds on bodies that readers load whole; payload frames are streamed instead.
pub const MAX_HEADER_BODY: u64 = 16 << 20;
pub const MAX_RECORD_BODY: u64 = 64 << 20;
pub const MAX_INDEX_BODY: u64 = 1 << 30;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The run header, UTF-8 JSON.
    Header,
    /// One record's metadata, postcard.
    Record,
    /// A tensor payload (raw or encoded bytes).
    Payload,
    /// The index of all records, postcard.
    Index,
    /// How the run ended, UTF-8 JSON (format 1.1); just before the index.
    RunEnd,
    /// A kind this reader does not know; skipped.
    Unknown(u8),
}

impl FrameKind {
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Header => 1,
            FrameKind::Record => 2,
            FrameKind::Payload => 3,
            FrameKind::Index => 4,
            FrameKind::RunEnd => 5,
            FrameKind::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u8) -> FrameKind {
        match c {
            1 => FrameKind::Header,
            2 => FrameKind::Record,
            3 => FrameKind::Payload,
            4 => FrameKind::Index,
            5 => FrameKind::RunEnd,
            c => FrameKind::Unknown(c),
        }
    }
}

/// The 16 bytes at the start of the file.
pub fn file_header() -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    h[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    h
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u8,
    pub reserved: u16,
    pub crc: u32,
    pub body_len: u64,
}

impl FrameHeader {
    pub fn parse(b: &[u8; 16]) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::from_code(b[0]),
            flags: b[1],
            reserved: u16::from_le_bytes([b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            body_len: u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])),
        }
    }

    /// A CRC hasher primed with the checksummed header bytes (all but the CRC field).
    pub fn crc_hasher(&self) -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        h.update(&[self.kind.code(), self.flags]);
        h.update(&self.reserved.to_le_bytes());
        h.update(&self.body_len.to_le_bytes());
        h
    }

    /// Total bytes the frame occupies, padding included, or `None` on overflow.
    pub fn total_len(&self) -> Option<u64> {
        FRAME_HEADER_LEN
            .checked_add(self.body_len)?
            .checked_add(pad_len(self.body_len))
    }
}

/// Zero bytes after a body of `len` bytes so the next frame starts 8-aligned.
pub fn pad_len(len: u64) -> u64 {
    (8 - len % 8) % 8
}

/// Write one whole frame; returns the bytes written.
pub fn write_frame(out: &mut impl Write, kind: FrameKind, body: &[u8]) -> std::io::Result<u64> {
    let mut hdr = FrameHeader {
        kind,
        flags: 0,
        reserved: 0,
        crc: 0,
        body_len: body.len() as u64,
    };
    let mut h = hdr.crc_hasher();
    h.update(body);
    hdr.crc = h.finalize();
    write_frame_header(out, &hdr)?;
    out.write_all(body)?;
    let pad = pad_len(hdr.body_len);
    out.write_all(&[0u8; 8][..pad as usize])?;
    Ok(FRAME_HEADER_LEN + hdr.body_len + pad)
}

pub fn write_frame_header(out: &mut impl Write, hdr: &FrameHeader) -> std::io::Result<()> {
    let mut b = [0u8; 16];
    b[0] = hdr.kind.code();
    b[1] = hdr.flags;
    b[2..4].copy_from_slice(&hdr.reserved.to_le_bytes());
    b[4..8].copy_from_slice(&hdr.crc.to_le_bytes());
    b[8..16].copy_from_slice(&hdr.body_len.to_le_bytes());
    out.write_all(&b)
}

/// The 24-byte footer pointing at the index frame; `run_end_len` is the total length of the
/// run-end frame that ends right before the index (0: none).
pub fn footer(index_offset: u64, run_end_len: u32) -> [u8; 24] {
    let mut f = [0u8; 24];
    f[..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..12].copy_from_slice(&crc32fast::hash(&index_offset.to_le_bytes()).to_le_bytes());
    f[12..16].copy_from_slice(&run_end_len.to_le_bytes());
    f[16..].copy_from_slice(FOOTER_MAGIC);
    f
}

/// The index offset and run-end frame length of a valid footer, or `None`.
pub fn parse_footer(f: &[u8; 24]) -> Option<(u64, u32)> {
    if &f[16..] != FOOTER_MAGIC {
        return None;
    }
    let off: [u8; 8] = f[..8].try_into().ok()?;
    let crc = u32::from_le_bytes(f[8..12].try_into().ok()?);
    let run_end = u32::from_le_bytes(f[12..16].try_into().ok()?);
    (crc32fast::hash(&off) == crc).then(|| (u64::from_le_bytes(off), run_end))
}
