//! The trace reader: header and index up front, records and payloads on demand.
//!
//! Opening reads the file header, the run header frame and, through the footer, the index
//! frame; nothing else. Without a valid footer and index it scans the frames instead and keeps
//! every record that checks: a frame that does not decode is skipped by its length, one whose
//! checksum fails (its length may be the damaged part) by resynchronising at the next frame
//! that checks, and both are listed in [`TraceReader::damage`]. A valid footer whose index does
//! not check is damage too; a file that merely ends early (no footer: a killed recording) is
//! truncated, not damaged. All reads are positioned reads on the file
//! (no mmap, so a file that shrinks under us yields an error, not a SIGBUS), and every length
//! is checked against the file size before a buffer is allocated for it.

use super::codec::{BLOCK, BlockDecoder, Codec};
use super::format::{
    FILE_HEADER_LEN, FILE_MAGIC, FOOTER_LEN, FORMAT_MAJOR, FRAME_HEADER_LEN, FrameHeader,
    FrameKind, MAX_HEADER_BODY, MAX_INDEX_BODY, MAX_RECORD_BODY, parse_footer,
};
use super::header::{RunEnd, RunHeader};
use super::record::{Fidelity, IndexBody, RecordId, RecordMeta};
use super::{Result, TraceError};
use crate::dtype::{DType, byte_len};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether the trace was closed properly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Footer and index intact: the writer finished.
    Complete,
    /// No usable index: records were recovered by scanning. `valid_len` bytes of `file_len`
    /// form the readable prefix.
    Recovered {
        reason: String,
        valid_len: u64,
        file_len: u64,
    },
}

impl Integrity {
    pub fn is_complete(&self) -> bool {
        matches!(self, Integrity::Complete)
    }
}

/// A part of the file that failed its checks and was left out: a frame (while scanning), the
/// index, or a record listed by the index (found by [`TraceReader::verify_all`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the damaged frame.
    pub offset: u64,
    pub what: String,
}

/// One record as listed by the index.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordEntry {
    pub key: Arc<str>,
    pub step: Option<u32>,
    pub eval: u32,
    pub order: u64,
    pub dtype: DType,
    pub fidelity: Fidelity,
    pub shape: Vec<u64>,
    /// File offset of the record frame.
    pub record_offset: u64,
    /// Bytes of the record frame on disk.
    pub record_len: u64,
    /// Bytes of the payload frame on disk (0 without payload).
    pub payload_len: u64,
}

impl RecordEntry {
    pub fn id(&self) -> RecordId {
        RecordId {
            step: self.step,
            eval: self.eval,
            key: self.key.to_string(),
        }
    }

    /// Bytes this record occupies in the file.
    pub fn stored_bytes(&self) -> u64 {
        self.record_len + self.payload_len
    }
}

/// An open trace.
pub struct TraceReader {
    path: PathBuf,
    file: File,
    file_len: u64,
    version: (u16, u16),
    header: RunHeader,
    entries: Vec<RecordEntry>,
    integrity: Integrity,
    run_end: Option<RunEnd>,
    damage: Vec<Damage>,
    /// The footer checked, so a failure after it is damage, not truncation.
    footer_valid: bool,
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

impl TraceReader {
    /// Open a trace: header and index only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Before opening: opening a FIFO without a writer blocks forever.
        crate::files::check_regular(&path).map_err(|kind| TraceError::NotRegular {
            path: path.clone(),
            kind,
        })?;
        let file = File::open(&path).map_err(|e| TraceError::io(&path, "cannot open trace", e))?;
        let meta = file
            .metadata()
            .map_err(|e| TraceError::io(&path, "cannot stat trace", e))?;
        if !meta.is_file() {
            // Replaced between the check and the open.
            return Err(TraceError::NotRegular {
                path,
                kind: "not a regular file",
            });
        }
        let file_len = meta.len();
        let mut r = TraceReader {
            path,
            file,
            file_len,
            version: (0, 0),
            header: RunHeader::default(),
            entries: Vec::new(),
            integrity: Integrity::Complete,
            run_end: None,
            damage: Vec::new(),
            footer_valid: false,
        };
        r.read_file_header()?;
        let data_start = r.read_run_header()?;
        match r.read_index(data_start) {
            Ok(()) => {}
            Err(reason) => {
                if r.footer_valid {
                    r.damage.push(Damage {
                        offset: r.file_len - FOOTER_LEN,
                        what: format!("the footer checks but its index does not: {reason}"),
                    });
                }
                r.scan(data_start, reason)?
            }
        }
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Format (major, minor) version of the file.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    pub fn header(&self) -> &RunHeader {
        &self.header
    }

    /// Records in file (= execution) order.
    pub fn entries(&self) -> &[RecordEntry] {
        &self.entries
    }

    pub fn integrity(&self) -> &Integrity {
        &self.integrity
    }

    /// How the run ended, when the writer recorded it (format 1.1; `None` for traces written
    /// without a run-end frame, and for runs killed before they could close the file).
    pub fn run_end(&self) -> Option<&RunEnd> {
        self.run_end.as_ref()
    }

    /// What failed its checks while opening and was left out (empty for an intact file, and
    /// for a file that merely ends early). Records listed by an intact index are checked only
    /// when read ([`read_meta`](Self::read_meta), [`verify_all`](Self::verify_all)).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// The record with this identity, if recorded.
    pub fn find(&self, key: &str, step: Option<u32>, eval: u32) -> Option<&RecordEntry> {
        self.entries
            .iter()
            .find(|e| &*e.key == key && e.step == step && e.eval == eval)
    }

    fn corrupt(&self, offset: u64, what: impl Into<String>) -> TraceError {
        TraceError::corrupt(&self.path, offset, what)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read_at(&self.file, buf, offset)
            .map_err(|e| TraceError::io(&self.path, "cannot read trace", e))
    }

    fn read_file_header(&mut self) -> Result<()> {
        let mut h = [0u8; 16];
        let n = (self.file_len.min(16)) as usize;
        self.read_exact_at(&mut h[..n], 0)?;
        if h[..n.min(8)] != FILE_MAGIC[..n.min(8)] || n == 0 {
            return Err(TraceError::NotATrace {
                path: self.path.clone(),
            });
        }
        if n < 16 {
            return Err(TraceError::NoHeader {
                path: self.path.clone(),
                len: self.file_len,
            });
        }
        let major = u16::from_le_bytes([h[8], h[9]]);
        let minor = u16::from_le_bytes([h[10], h[11]]);
        if major != FORMAT_MAJOR {
            return Err(TraceError::UnsupportedVersion {
                path: self.path.clone(),
                major,
                minor,
                supported: FORMAT_MAJOR,
            });
        }
        self.version = (major, minor);
        Ok(())
    }

    /// Read a frame header at `offset`, checking that the whole frame lies within `end`.
    fn frame_header(&self, offset: u64, end: u64) -> Result<FrameHeader, String> {
        if offset.checked_add(FRAME_HEADER_LEN).is_none_or(|e| e > end) {
            return Err(format!("incomplete frame header at byte offset {offset}"));
        }
        let mut b = [0u8; 16];
        read_at(&self.file, &mut b, offset)
            .map_err(|e| format!("cannot read at byte offset {offset}: {e}"))?;
        let h = FrameHeader::parse(&b);
        match h.total_len().and_then(|t| offset.checked_add(t)) {
            Some(frame_end) if frame_end <= end => Ok(h),
            _ => Err(format!(
                "frame at byte offset {offset} claims {} body bytes but only {} remain",
                h.body_len,
                end.saturating_sub(offset + FRAME_HEADER_LEN)
            )),
        }
    }

    /// Read and checksum a whole (small) frame body.
    fn frame_body(&self, offset: u64, h: &FrameHeader, limit: u64) -> Result<Vec<u8>, String> {
        if h.body_len > limit {
            return Err(format!(
                "{:?} frame at byte offset {offset} is {} bytes, more than the {limit} allowed",
                h.kind, h.body_len
            ));
        }
        let mut body = vec![0u8; h.body_len as usize];
        read_at(&self.file, &mut body, offset + FRAME_HEADER_LEN)
            .map_err(|e| format!("cannot read at byte offset {offset}: {e}"))?;
        let mut crc = h.crc_hasher();
        crc.update(&body);
        let got = crc.finalize();
        if got != h.crc {
            return Err(format!(
                "checksum mismatch in frame at byte offset {offset} (stored {:08x}, computed {got:08x})",
                h.crc
            ));
        }
        Ok(body)
    }

    fn read_run_header(&mut self) -> Result<u64> {
        let at = FILE_HEADER_LEN;
        let no_header = || TraceError::NoHeader {
            path: self.path.clone(),
            len: self.file_len,
        };
        let h = self
            .frame_header(at, self.file_len)
            .map_err(|_| no_header())?;
        if h.kind != FrameKind::Header {
            return Err(self.corrupt(
                at,
                format!(
                    "expected the run header frame, found frame kind {}",
                    h.kind.code()
                ),
            ));
        }
        let body = self
            .frame_body(at, &h, MAX_HEADER_BODY)
            .map_err(|what| self.corrupt(at, what))?;
        self.header = RunHeader::from_json(&body).map_err(|e| {
            self.corrupt(
                at + FRAME_HEADER_LEN,
                format!("run header is not valid JSON: {e}"),
            )
        })?;
        Ok(at + h.total_len().unwrap_or(0))
    }

    /// Load the index through the footer; `Err(reason)` means "scan instead".
    fn read_index(&mut self, data_start: u64) -> Result<(), String> {
        if self.file_len < data_start + FOOTER_LEN {
            return Err(
                "no footer: the recording did not finish (killed, crashed, or out of disk)".into(),
            );
        }
        let footer_at = self.file_len - FOOTER_LEN;
        let mut f = [0u8; 24];
        read_at(&self.file, &mut f, footer_at).map_err(|e| e.to_string())?;
        let (index_at, run_end_len) = parse_footer(&f).ok_or(
            "no valid footer: the recording did not finish (killed, crashed, or out of disk)",
        )?;
        self.footer_valid = true;
        if index_at < data_start || index_at % 8 != 0 {
            return Err(format!(
                "footer points at byte offset {index_at}, outside the data"
            ));
        }
        let h = self.frame_header(index_at, footer_at)?;
        if h.kind != FrameKind::Index || index_at + h.total_len().unwrap_or(0) != footer_at {
            return Err(format!(
                "footer does not point at an index frame (byte offset {index_at})"
            ));
        }
        let run_end_at = index_at.checked_sub(u64::from(run_end_len));
        let run_end = match run_end_at {
            _ if run_end_len == 0 => None,
            Some(at) if at >= data_start && at % 8 == 0 => Some(self.read_run_end(at, index_at)?),
            _ => {
                return Err(format!(
                    "footer names a run-end frame of {run_end_len} bytes that does not fit before the index"
                ));
            }
        };
        let body = self.frame_body(index_at, &h, MAX_INDEX_BODY)?;
        let (index, _rest): (IndexBody, _) = postcard::take_from_bytes(&body)
            .map_err(|e| format!("index at byte offset {index_at} does not decode: {e}"))?;
        let keys: Vec<Arc<str>> = index.keys.into_iter().map(Arc::from).collect();
        let mut entries = Vec::with_capacity(index.rows.len());
        let mut prev_end = data_start;
        for row in index.rows {
            let key = keys
                .get(row.key as usize)
                .ok_or_else(|| format!("index names key #{} of {}", row.key, keys.len()))?;
            let start = row.record_offset.saturating_sub(row.payload_len);
            let end = row.record_offset.saturating_add(row.record_len);
            if start < prev_end || end > index_at || byte_len(row.dtype, &row.shape).is_none() {
                return Err(format!(
                    "index row for '{key}' is inconsistent with the file"
                ));
            }
            prev_end = end;
            entries.push(RecordEntry {
                key: key.clone(),
                step: row.step,
                eval: row.eval,
                order: row.order,
                dtype: row.dtype,
                fidelity: row.fidelity,
                shape: row.shape,
                record_offset: row.record_offset,
                record_len: row.record_len,
                payload_len: row.payload_len,
            });
        }
        if let (Some(at), Some(_)) = (run_end_at, &run_end)
            && prev_end > at
        {
            return Err("the run-end frame overlaps the last record".into());
        }
        self.entries = entries;
        self.integrity = Integrity::Complete;
        self.run_end = run_end;
        Ok(())
    }

    /// The run-end frame at `at`, which must end exactly at `end`.
    fn read_run_end(&self, at: u64, end: u64) -> Result<RunEnd, String> {
        let h = self.frame_header(at, end)?;
        if h.kind != FrameKind::RunEnd || at + h.total_len().unwrap_or(0) != end {
            return Err(format!(
                "footer does not point at a run-end frame (byte offset {at})"
            ));
        }
        let body = self.frame_body(at, &h, MAX_HEADER_BODY)?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("run-end frame at byte offset {at} is not valid JSON: {e}"))
    }

    /// Rebuild the record list by walking frames from `data_start`, keeping every record that
    /// checks and listing in `damage` every frame that does not. A frame whose checksum fails
    /// may have a damaged length, so the walk then resynchronises: it goes on at the next
    /// 8-aligned offset that holds a whole frame with a valid checksum ([`Self::resync`]). A
    /// frame that checks but does not make sense (a record that does not decode, or whose
    /// payload frame is missing) is skipped by its length, which its checksum vouches for.
    fn scan(&mut self, data_start: u64, why_no_index: String) -> Result<()> {
        let mut entries = Vec::new();
        let mut keys: HashMap<String, Arc<str>> = HashMap::new();
        let mut payloads: HashMap<u64, (u64, u64)> = HashMap::new(); // offset -> (body_len, total_len)
        let mut damage: Vec<Damage> = Vec::new();
        // Bytes resynchronisation may still read to check candidate frames: it cannot be
        // made to read the file over and over.
        let mut budget = self.file_len.saturating_mul(2).max(1 << 20);
        let mut at = data_start;
        // Why the scan stopped early, and whether that is the file ending early (truncation).
        let stop: Option<(String, bool)> = loop {
            if at == self.file_len {
                break None;
            }
            let h = match self.frame_header(at, self.file_len) {
                Ok(h) => h,
                Err(e) => match self.resync(at + 8, &mut budget) {
                    // Damage in the middle: a frame that checks follows.
                    Some(next) => {
                        damage.push(Damage {
                            offset: at,
                            what: format!(
                                "{e}; {} bytes skipped to the next frame that checks",
                                next - at
                            ),
                        });
                        at = next;
                        continue;
                    }
                    None => break Some((e, true)),
                },
            };
            let total = h.total_len().unwrap_or(0);
            // The checksum (and, for bodies read whole, the size limit) first.
            let body = match h.kind {
                FrameKind::Payload | FrameKind::Unknown(_) => {
                    self.check_crc_streaming(at, &h).map(|()| Vec::new())
                }
                FrameKind::Record => self.frame_body(at, &h, MAX_RECORD_BODY),
                FrameKind::Header | FrameKind::RunEnd => self.frame_body(at, &h, MAX_HEADER_BODY),
                FrameKind::Index => Ok(Vec::new()),
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    let next = self.resync(at + 8, &mut budget);
                    damage.push(Damage {
                        offset: at,
                        what: e,
                    });
                    match next {
                        Some(next) => {
                            at = next;
                            continue;
                        }
                        // Nothing that checks follows: the damage (noted) ends the walk.
                        None => {
                            at += total;
                            break None;
                        }
                    }
                }
            };
            let mut bad = |what: String| damage.push(Damage { offset: at, what });
            match h.kind {
                FrameKind::Payload => {
                    payloads.insert(at, (h.body_len, total));
                }
                FrameKind::Record => match decode_meta(&body, at) {
                    Err(e) => bad(e),
                    Ok(meta) => {
                        let payload_len = match meta.payload {
                            None => Some(0),
                            Some(p) => match payloads.get(&p.frame_offset) {
                                Some(&(body, total)) if body == p.stored_len => Some(total),
                                _ => None,
                            },
                        };
                        match payload_len {
                            None => bad(format!(
                                "record {} at byte offset {at} points at a payload frame that is missing or damaged (byte offset {})",
                                meta.id(),
                                meta.payload.map_or(0, |p| p.frame_offset)
                            )),
                            Some(payload_len) => {
                                let key = keys
                                    .entry(meta.key.clone())
                                    .or_insert_with(|| Arc::from(meta.key.as_str()))
                                    .clone();
                                entries.push(RecordEntry {
                                    key,
                                    step: meta.step,
                                    eval: meta.eval,
                                    order: meta.order,
                                    dtype: meta.dtype,
                                    fidelity: meta.fidelity,
                                    shape: meta.shape,
                                    record_offset: at,
                                    record_len: total,
                                    payload_len,
                                });
                            }
                        }
                    }
                },
                // The index ends the records; only the footer can follow it. With a valid
                // footer the index was tried (and its damage noted) before the scan.
                FrameKind::Index if self.footer_valid => break None,
                FrameKind::Index => {
                    break Some((
                        "the index frame is present but the footer is damaged".into(),
                        false,
                    ));
                }
                FrameKind::Header => bad(format!(
                    "a second run header at byte offset {at} (ignored: the first one counts)"
                )),
                FrameKind::RunEnd => match serde_json::from_slice(&body) {
                    Ok(end) => self.run_end = Some(end),
                    Err(e) => bad(format!(
                        "run-end frame at byte offset {at} is not valid JSON: {e}"
                    )),
                },
                FrameKind::Unknown(_) => {}
            }
            at += total;
        };
        // A stop before the end is damage when the file claims to be whole (a valid footer)
        // or the stop is not at a frame that runs past the end (an index without footer).
        if let Some((s, truncated)) = &stop
            && (self.footer_valid || !truncated)
        {
            damage.push(Damage {
                offset: at,
                what: format!("scan stopped: {s}"),
            });
        }
        let mut reason = match stop {
            Some((s, _)) => format!("{why_no_index}; scan stopped: {s}"),
            None => why_no_index,
        };
        if !damage.is_empty() {
            reason += &format!(
                "; {} damaged part{} skipped",
                damage.len(),
                if damage.len() == 1 { "" } else { "s" }
            );
        }
        self.damage.extend(damage);
        self.entries = entries;
        self.integrity = Integrity::Recovered {
            reason,
            valid_len: at,
            file_len: self.file_len,
        };
        Ok(())
    }

    /// The first 8-aligned offset from `from` (rounded up) that starts a whole frame of a kind
    /// that may follow the run header (record, payload, index, run end), with zero flags and
    /// reserved bytes and a valid checksum; `None` when there is none before the end of the
    /// file or `budget` (bytes read to check candidates) runs out.
    fn resync(&self, from: u64, budget: &mut u64) -> Option<u64> {
        let end = self.file_len;
        let mut chunk_at = from.div_ceil(8) * 8;
        let mut buf = vec![0u8; 1 << 20];
        while chunk_at + FRAME_HEADER_LEN <= end {
            let n = (end - chunk_at).min(buf.len() as u64) as usize;
            read_at(&self.file, &mut buf[..n], chunk_at).ok()?;
            *budget = budget.checked_sub(n as u64)?;
            let mut i = 0;
            while i + FRAME_HEADER_LEN as usize <= n {
                let b = &buf[i..i + FRAME_HEADER_LEN as usize];
                if matches!(b[0], 2..=5) && b[1..4] == [0, 0, 0] {
                    let at = chunk_at + i as u64;
                    if let Ok(h) = self.frame_header(at, end) {
                        *budget = budget.checked_sub(h.body_len)?;
                        let checks = match h.kind {
                            FrameKind::Record => self.frame_body(at, &h, MAX_RECORD_BODY).is_ok(),
                            FrameKind::RunEnd => self.frame_body(at, &h, MAX_HEADER_BODY).is_ok(),
                            FrameKind::Index => self.frame_body(at, &h, MAX_INDEX_BODY).is_ok(),
                            _ => self.check_crc_streaming(at, &h).is_ok(),
                        };
                        if checks {
                            return Some(at);
                        }
                    }
                }
                i += 8;
            }
            chunk_at += (n as u64 - FRAME_HEADER_LEN) / 8 * 8 + 8;
        }
        None
    }

    fn check_crc_streaming(&self, at: u64, h: &FrameHeader) -> Result<(), String> {
        let mut crc = h.crc_hasher();
        let mut buf = vec![0u8; (1 << 20).min(h.body_len as usize)];
        let mut pos = 0u64;
        while pos < h.body_len {
            let n = (h.body_len - pos).min(buf.len() as u64) as usize;
            read_at(&self.file, &mut buf[..n], at + FRAME_HEADER_LEN + pos)
                .map_err(|e| e.to_string())?;
            crc.update(&buf[..n]);
            pos += n as u64;
        }
        let got = crc.finalize();
        if got != h.crc {
            return Err(format!(
                "checksum mismatch in frame at byte offset {at} (stored {:08x}, computed {got:08x})",
                h.crc
            ));
        }
        Ok(())
    }

    /// Read, checksum and decode a record's metadata.
    pub fn read_meta(&self, e: &RecordEntry) -> Result<RecordMeta> {
        let at = e.record_offset;
        let h = self
            .frame_header(at, self.file_len)
            .map_err(|w| self.corrupt(at, w))?;
        if h.kind != FrameKind::Record {
            return Err(self.corrupt(
                at,
                format!("expected a record frame, found kind {}", h.kind.code()),
            ));
        }
        let body = self
            .frame_body(at, &h, MAX_RECORD_BODY)
            .map_err(|w| self.corrupt(at, w))?;
        let meta = decode_meta(&body, at).map_err(|w| self.corrupt(at, w))?;
        if *meta.key != *e.key
            || meta.step != e.step
            || meta.eval != e.eval
            || meta.order != e.order
        {
            return Err(self.corrupt(
                at,
                format!(
                    "the record frame holds {} (order {}), but the index lists {} (order {}) there",
                    meta.id(),
                    meta.order,
                    e.id(),
                    e.order
                ),
            ));
        }
        if meta.dtype != e.dtype || meta.shape != e.shape || meta.fidelity != e.fidelity {
            // The record frame wins; an index that disagrees with it is damaged.
            return Err(self.corrupt(
                at,
                format!(
                    "the record frame of {} holds {} {:?} ({}), but the index lists {} {:?} ({})",
                    meta.id(),
                    meta.dtype,
                    meta.shape,
                    meta.fidelity,
                    e.dtype,
                    e.shape,
                    e.fidelity
                ),
            ));
        }
        Ok(meta)
    }

    /// Stream a record's decoded tensor bytes to `sink` in pieces of at most 1 MiB, then verify
    /// the payload checksum. Pieces are whole elements. Returns `Ok(false)` when the record has
    /// no payload. On a checksum mismatch the error comes after the pieces were delivered.
    pub fn payload_chunks(
        &self,
        meta: &RecordMeta,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        let Some(p) = meta.payload else {
            return Ok(false);
        };
        let at = p.frame_offset;
        let expected = byte_len(meta.dtype, &meta.shape);
        if expected != Some(p.raw_len) {
            return Err(self.corrupt(
                at,
                format!(
                    "payload of '{}' holds {} bytes, its shape needs {expected:?}",
                    meta.key, p.raw_len
                ),
            ));
        }
        let h = self
            .frame_header(at, self.file_len)
            .map_err(|w| self.corrupt(at, w))?;
        if h.kind != FrameKind::Payload || h.body_len != p.stored_len {
            return Err(self.corrupt(
                at,
                format!(
                    "record '{}' points at byte offset {at}, which is not its payload frame",
                    meta.key
                ),
            ));
        }
        let body_at = at + FRAME_HEADER_LEN;
        let mut crc = h.crc_hasher();
        let mut read = |pos: u64, buf: &mut Vec<u8>, n: usize| -> Result<()> {
            buf.resize(n, 0);
            self.read_exact_at(buf, body_at + pos)?;
            crc.update(buf);
            Ok(())
        };
        let mut buf = Vec::new();
        match p.codec {
            Codec::Raw => {
                if p.stored_len != p.raw_len {
                    return Err(
                        self.corrupt(at, "raw payload length differs from the tensor length")
                    );
                }
                let piece = (1u64 << 20) / 8 * 8;
                let mut pos = 0;
                while pos < p.stored_len {
                    let n = (p.stored_len - pos).min(piece) as usize;
                    read(pos, &mut buf, n)?;
                    sink(&buf)?;
                    pos += n as u64;
                }
            }
            Codec::ShuffleZstd => {
                let mut dec = BlockDecoder::new(meta.dtype.size(), p.raw_len)
                    .map_err(|e| TraceError::io(&self.path, "zstd", e))?;
                let mut out = Vec::new();
                let mut pos = 0;
                while dec.next_block_len() > 0 {
                    if pos + 4 > p.stored_len {
                        return Err(self.corrupt(body_at + pos, "compressed payload ends early"));
                    }
                    read(pos, &mut buf, 4)?;
                    let zlen = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64;
                    pos += 4;
                    if zlen > p.stored_len - pos || zlen > 2 * BLOCK as u64 {
                        return Err(self.corrupt(
                            body_at + pos - 4,
                            format!("compressed block claims {zlen} bytes"),
                        ));
                    }
                    read(pos, &mut buf, zlen as usize)?;
                    dec.decode_block(&buf, &mut out)
                        .map_err(|w| self.corrupt(body_at + pos, w))?;
                    pos += zlen;
                    sink(&out)?;
                }
                if pos != p.stored_len {
                    return Err(
                        self.corrupt(body_at + pos, "bytes left after the last compressed block")
                    );
                }
            }
        }
        let got = crc.finalize();
        if got != h.crc {
            return Err(self.corrupt(
                at,
                format!(
                    "checksum mismatch in payload frame (stored {:08x}, computed {got:08x})",
                    h.crc
                ),
            ));
        }
        Ok(true)
    }

    /// A record's whole decoded tensor, verified; `None` when it has no payload.
    pub fn read_payload(&self, meta: &RecordMeta) -> Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        let had = self.payload_chunks(meta, |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(had.then_some(data))
    }

    /// Read and checksum every record and payload; returns the number of records checked, or
    /// the first damage.
    pub fn verify(&self) -> Result<u64> {
        for e in &self.entries {
            self.check(e)?;
        }
        Ok(self.entries.len() as u64)
    }

    /// Read and checksum one record and its payload.
    pub fn check(&self, e: &RecordEntry) -> Result<RecordMeta> {
        let meta = self.read_meta(e)?;
        self.payload_chunks(&meta, |_| Ok(()))?;
        Ok(meta)
    }

    /// Read and checksum every record and payload, going on past damage: the index of every
    /// entry that failed, with why.
    pub fn verify_all(&self) -> Vec<(usize, TraceError)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| self.check(e).err().map(|err| (i, err)))
            .collect()
    }
}

fn decode_meta(body: &[u8], at: u64) -> Result<RecordMeta, String> {
    let (meta, _rest): (RecordMeta, _) = postcard::take_from_bytes(body)
        .map_err(|e| format!("record frame at byte offset {at} does not decode: {e}"))?;
    if byte_len(meta.dtype, &meta.shape).is_none() {
        return Err(format!(
            "record '{}' at byte offset {at} has an impossible shape {:?}",
            meta.key, meta.shape
        ));
    }
    Ok(meta)
}
