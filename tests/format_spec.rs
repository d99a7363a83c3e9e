//! An independent writer that follows docs/FORMAT.md byte by byte (its own CRC-32, varints,
//! postcard layout, shuffle, footer) — not the library's encoder — and the library reading it
//! back. A second test walks a library-written file with the same spec-level code.

use sdtrace::DType;
use sdtrace::trace::{Codec, Fidelity, Integrity, TraceReader};

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct SpecWriter {
    buf: Vec<u8>,
    rows: Vec<Vec<u8>>,
    keys: Vec<String>,
}

impl SpecWriter {
    fn new(header_json: &str) -> Self {
        let mut buf = b"SDTRACE\0".to_vec();
        buf.extend(1u16.to_le_bytes());
        buf.extend(0u16.to_le_bytes());
        buf.extend([0u8; 4]);
        let mut w = SpecWriter {
            buf,
            rows: Vec::new(),
            keys: Vec::new(),
        };
        w.frame(1, header_json.as_bytes());
        w
    }

    /// Append a frame; returns (offset, total length).
    fn frame(&mut self, kind: u8, body: &[u8]) -> (u64, u64) {
        let at = self.buf.len() as u64;
        let head = [kind, 0, 0, 0];
        let len = (body.len() as u64).to_le_bytes();
        let crc = crc32(&[&head, &len, body]);
        self.buf.extend(head);
        self.buf.extend(crc.to_le_bytes());
        self.buf.extend(len);
        self.buf.extend(body);
        while !self.buf.len().is_multiple_of(8) {
            self.buf.push(0);
        }
        (at, self.buf.len() as u64 - at)
    }

    /// A record whose summary has recognisable made-up values; payload optional.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        key: &str,
        step: Option<u32>,
        order: u64,
        dtype: u8,
        shape: &[u64],
        payload: Option<(u8, &[u8], Vec<u8>)>,
        sketch: Option<&[f64]>,
    ) {
        let (mut payload_ref, mut payload_len) = (Vec::new(), 0);
        if let Some((codec, raw, stored)) = &payload {
            let (at, total) = self.frame(3, stored);
            payload_len = total;
            payload_ref.push(1);
            varint(&mut payload_ref, at);
            payload_ref.push(*codec);
            varint(&mut payload_ref, stored.len() as u64);
            varint(&mut payload_ref, raw.len() as u64);
        } else {
            payload_ref.push(0);
        }
        let mut m = Vec::new();
        string(&mut m, key);
        match step {
            Some(s) => {
                m.push(1);
                varint(&mut m, s as u64);
            }
            None => m.push(0),
        }
        varint(&mut m, 0); // eval
        varint(&mut m, order);
        m.push(dtype);
        varint(&mut m, shape.len() as u64);
        for &d in shape {
            varint(&mut m, d);
        }
        let fidelity = if payload.is_some() {
            2
        } else if sketch.is_some() {
            1
        } else {
            0
        };
        m.push(fidelity);
        // Summary: count, nan, +inf, -inf, zeros, min, max, mean, std, l2, absmax, absmax idx, hist, hash.
        for v in [shape.iter().product::<u64>(), 1, 2, 3, 4] {
            varint(&mut m, v);
        }
        for v in [-1.5f64, 2.5, 0.25, 1.0, 3.0, 2.5] {
            m.extend(v.to_le_bytes());
        }
        varint(&mut m, 5);
        varint(&mut m, 64);
        for b in 0..64u64 {
            varint(&mut m, b * 300);
        }
        varint(&mut m, 0xDEAD_BEEF_0123_4567);
        match sketch {
            Some(vals) => {
                m.push(1);
                varint(&mut m, 42);
                varint(&mut m, vals.len() as u64);
                for v in vals {
                    m.extend(v.to_le_bytes());
                }
            }
            None => m.push(0),
        }
        m.push(0); // no thumbnail
        m.extend(&payload_ref);
        m.extend([0xAB, 0xCD]); // a field from a future minor version: must be ignored
        let (at, total) = self.frame(2, &m);

        let key_id = match self.keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key.to_string());
                self.keys.len() - 1
            }
        };
        let mut row = Vec::new();
        varint(&mut row, key_id as u64);
        match step {
            Some(s) => {
                row.push(1);
                varint(&mut row, s as u64);
            }
            None => row.push(0),
        }
        varint(&mut row, 0);
        varint(&mut row, order);
        row.push(dtype);
        row.push(fidelity);
        varint(&mut row, shape.len() as u64);
        for &d in shape {
            varint(&mut row, d);
        }
        varint(&mut row, at);
        varint(&mut row, total);
        varint(&mut row, payload_len);
        self.rows.push(row);
    }

    fn finish(mut self) -> Vec<u8> {
        let mut body = Vec::new();
        varint(&mut body, self.keys.len() as u64);
        for k in &self.keys.clone() {
            string(&mut body, k);
        }
        varint(&mut body, self.rows.len() as u64);
        for r in &self.rows {
            body.extend(r);
        }
        let (at, _) = self.frame(4, &body);
        self.buf.extend(at.to_le_bytes());
        self.buf.extend(crc32(&[&at.to_le_bytes()]).to_le_bytes());
        self.buf.extend([0u8; 4]);
        self.buf.extend(b"SDTRIDX\0");
        self.buf
    }
}

fn shuffle_zstd(raw: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for block in raw.chunks(262_144) {
        let n = block.len() / size;
        let mut sh = vec![0u8; block.len()];
        for i in 0..n {
            for j in 0..size {
                sh[j * n + i] = block[i * size + j];
            }
        }
        let z = zstd::bulk::compress(&sh, 3).unwrap();
        out.extend((z.len() as u32).to_le_bytes());
        out.extend(z);
    }
    out
}

#[test]
fn crc_matches_the_documented_check_value() {
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
}

#[test]
fn library_reads_a_trace_written_from_the_spec() {
    let header = r#"{"sdtrace_version":"spec-writer","settings":{"seed":1744694513,"sampler":"euler","from_the_future":{"x":1}},"device":{"device":"cuda:0","gpu":{"name":"GeForce GTX 1070","sm_count":15,"max_threads_per_sm":2048}},"unknown_top":true}"#;
    let mut w = SpecWriter::new(header);
    let noise: Vec<u8> = (0..1000)
        .flat_map(|i| (i as f32 * 0.5 - 7.0).to_le_bytes())
        .collect();
    let cond: Vec<u8> = (0..300_000u32)
        .flat_map(|i| half::f16::from_f32((i % 97) as f32 / 8.0).to_le_bytes())
        .collect();
    w.record(
        "noise.initial",
        None,
        0,
        0,
        &[1, 4, 10, 25],
        Some((0, &noise, noise.clone())),
        None,
    );
    w.record(
        "text.cond",
        None,
        1,
        1,
        &[2, 150_000],
        Some((1, &cond, shuffle_zstd(&cond, 2))),
        None,
    );
    w.record(
        "unet.conv_in",
        Some(0),
        2,
        0,
        &[2, 320, 8, 8],
        None,
        Some(&[0.5, -1.0, 2.0, 0.0]),
    );
    let bytes = w.finish();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.sdt");
    std::fs::write(&path, &bytes).unwrap();

    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.integrity(), &Integrity::Complete);
    let h = r.header();
    assert_eq!(h.sdtrace_version.as_deref(), Some("spec-writer"));
    assert_eq!(h.settings.seed, Some(1_744_694_513));
    assert_eq!(h.device.gpu.as_ref().unwrap().sm_count, Some(15));
    assert!(
        h.settings.extra.contains_key("from_the_future") && h.extra.contains_key("unknown_top")
    );
    assert_eq!(r.entries().len(), 3);
    r.verify().unwrap();

    let e = r.find("noise.initial", None, 0).unwrap();
    let m = r.read_meta(e).unwrap();
    assert_eq!(
        (m.dtype, m.fidelity, m.shape.clone()),
        (DType::F32, Fidelity::Full, vec![1, 4, 10, 25])
    );
    let s = &m.summary;
    assert_eq!(
        (s.count, s.nan, s.pos_inf, s.neg_inf, s.zeros),
        (1000, 1, 2, 3, 4)
    );
    assert_eq!(
        (
            s.min,
            s.max,
            s.mean,
            s.std,
            s.l2,
            s.abs_max,
            s.abs_max_index
        ),
        (-1.5, 2.5, 0.25, 1.0, 3.0, 2.5, 5)
    );
    assert_eq!(s.log2_hist[63], 63 * 300);
    assert_eq!(s.bits_hash, 0xDEAD_BEEF_0123_4567);
    assert_eq!(r.read_payload(&m).unwrap().unwrap(), noise);

    let m = r.read_meta(r.find("text.cond", None, 0).unwrap()).unwrap();
    assert_eq!(m.payload.unwrap().codec, Codec::ShuffleZstd);
    assert_eq!(m.dtype, DType::F16);
    assert_eq!(r.read_payload(&m).unwrap().unwrap(), cond);

    let m = r
        .read_meta(r.find("unet.conv_in", Some(0), 0).unwrap())
        .unwrap();
    assert_eq!(m.fidelity, Fidelity::Sketch);
    let sk = m.sketch.unwrap();
    assert_eq!((sk.seed, sk.values), (42, vec![0.5, -1.0, 2.0, 0.0]));
    assert!(m.payload.is_none());

    // Without its footer the same bytes still yield every record, by scanning.
    std::fs::write(&path, &bytes[..bytes.len() - 24]).unwrap();
    let r = TraceReader::open(&path).unwrap();
    assert!(!r.integrity().is_complete());
    assert_eq!(r.entries().len(), 3);
}

/// Walk a library-written trace with nothing but the spec: alignment, CRC coverage, footer.
#[test]
fn library_output_follows_the_spec() {
    use sdtrace::probe::{Policy, Probe, TensorView};
    use sdtrace::trace::{RunHeader, TraceWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lib.sdt");
    let w = TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap();
    let probe = Probe::new(w, Policy::preset("full").unwrap());
    let data: Vec<u8> = (0..77).flat_map(|i| (i as f32).to_le_bytes()).collect();
    probe
        .tensor(
            "text.cond",
            TensorView::new(DType::F32, &[1, 77], &data).unwrap(),
        )
        .unwrap();
    probe.finish().unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[..8], b"SDTRACE\0");
    assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
    let mut at = 16usize;
    let mut kinds = Vec::new();
    while at < b.len() - 24 {
        assert_eq!(at % 8, 0);
        let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap());
        assert_eq!(
            crc32(&[
                &b[at..at + 4],
                &b[at + 8..at + 16],
                &b[at + 16..at + 16 + len]
            ]),
            crc
        );
        assert!(
            b[at + 16 + len..(at + 16 + len).next_multiple_of(8)]
                .iter()
                .all(|&z| z == 0)
        );
        kinds.push(b[at]);
        at = (at + 16 + len).next_multiple_of(8);
    }
    // Header, payload, record, run-end (the probe closes a whole run with one), index.
    assert_eq!(kinds, vec![1, 3, 2, 5, 4]);
    let f = &b[b.len() - 24..];
    assert_eq!(&f[16..], b"SDTRIDX\0");
    let index_at = u64::from_le_bytes(f[..8].try_into().unwrap());
    assert_eq!(
        u32::from_le_bytes(f[8..12].try_into().unwrap()),
        crc32(&[&f[..8]])
    );
    assert_eq!(b[index_at as usize], 4);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(
            &b[32..32 + u64::from_le_bytes(b[24..32].try_into().unwrap()) as usize]
        )
        .unwrap()["settings"],
        serde_json::json!({})
    );
}

/// §3 of FORMAT.md, implemented from the text, equals the library's sketch.
#[test]
fn sketch_follows_the_spec() {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let key = "unet.mid_block.attentions.0";
    let shape = [2u64, 3, 37];
    let vals: Vec<f32> = (0..222).map(|i| (i as f32 * 0.731).sin() * 10.0).collect();
    let mut seed_input = key.as_bytes().to_vec();
    seed_input.push(0xFF);
    for d in shape {
        seed_input.extend(d.to_le_bytes());
    }
    let seed = xxhash_rust::xxh3::xxh3_64(&seed_input);
    let k = 64u64;
    let mut buckets = vec![0.0f64; k as usize];
    for (i, &x) in vals.iter().enumerate() {
        let p = i as u64 / 2;
        let h = mix(seed.wrapping_add((p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let half = if i % 2 == 0 {
            h as u32
        } else {
            (h >> 32) as u32
        };
        let sign = if half >> 31 == 1 { -1.0 } else { 1.0 };
        buckets[(half as u64 & (k - 1)) as usize] += sign * x as f64;
    }
    let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (_, sketch) =
        sdtrace::stats::summarize_with_sketch(DType::F32, &bytes, key, &shape, k as usize);
    assert_eq!(sketch.seed, seed);
    assert_eq!(sketch.values, buckets);
}
