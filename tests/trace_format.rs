//! Round trips, truncation, bit flips and garbage: the reader always gives a clean result or a
//! clean error, never a panic.

mod common;

use common::{Rng, encode, fixed_header, normal_vec, write_mini_run};
use proptest::prelude::*;
use sdtrace::DType;
use sdtrace::probe::{TensorView, capture};
use sdtrace::stats::summarize;
use sdtrace::trace::{
    Codec, Fidelity, Integrity, NonFinite, RunEnd, RunStatus, TraceError, TraceReader, TraceWriter,
    WriterOptions,
};
use std::path::Path;

/// Read every record and payload; returns the number of records, or the first error.
fn read_all(path: &Path) -> Result<usize, TraceError> {
    let r = TraceReader::open(path)?;
    for e in r.entries() {
        let m = r.read_meta(e)?;
        r.read_payload(&m)?;
    }
    Ok(r.entries().len())
}

#[test]
fn round_trip_every_dtype_fidelity_and_codec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.sdt");
    let mut w = TraceWriter::create(&path, &fixed_header("rt"), WriterOptions::default()).unwrap();
    let mut rng = Rng(7);
    let mut expected = Vec::new();
    for dtype in DType::ALL {
        for fidelity in Fidelity::ALL {
            for codec in [Codec::Raw, Codec::ShuffleZstd] {
                let shape = [2usize, 3, 5, 7];
                let data = encode(dtype, &normal_vec(&mut rng, 210, 3.0));
                let key = format!("t.{dtype}.{fidelity}.{codec}");
                let view = TensorView::new(dtype, &shape, &data).unwrap();
                let rec = capture(&key, Some(1), 0, view, fidelity, codec, 64);
                w.write(rec).unwrap();
                expected.push((key, dtype, fidelity, codec, data));
            }
        }
    }
    // A payload spanning several compression blocks.
    let big = encode(DType::F32, &normal_vec(&mut rng, 300_000, 1.0));
    let view = TensorView::new(DType::F32, &[300_000], &big).unwrap();
    w.write(capture(
        "big",
        None,
        0,
        view,
        Fidelity::Full,
        Codec::ShuffleZstd,
        256,
    ))
    .unwrap();
    let written = w.finish().unwrap();
    assert_eq!(written.records as usize, expected.len() + 1);

    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.integrity(), &Integrity::Complete);
    assert_eq!(r.header(), &fixed_header("rt"));
    assert_eq!(r.verify().unwrap() as usize, expected.len() + 1);
    for (i, (key, dtype, fidelity, codec, data)) in expected.iter().enumerate() {
        let e = &r.entries()[i];
        assert_eq!(
            (&*e.key, e.dtype, e.fidelity, e.order),
            (key.as_str(), *dtype, *fidelity, i as u64)
        );
        let m = r.read_meta(e).unwrap();
        assert_eq!(m.summary, summarize(*dtype, data));
        assert_eq!(m.shape, vec![2, 3, 5, 7]);
        assert_eq!(
            m.sketch.as_ref().map(|s| s.values.len()),
            (*fidelity >= Fidelity::Sketch).then_some(64)
        );
        assert_eq!(m.thumbnail.is_some(), *fidelity >= Fidelity::Sketch);
        let payload = r.read_payload(&m).unwrap();
        if *fidelity == Fidelity::Full {
            assert_eq!(payload.as_deref(), Some(&data[..]), "{key}");
            assert_eq!(m.payload.unwrap().codec, *codec);
        } else {
            assert!(payload.is_none());
        }
    }
    let big_entry = r.find("big", None, 0).unwrap();
    let m = r.read_meta(big_entry).unwrap();
    assert_eq!(r.read_payload(&m).unwrap().unwrap(), big);
    // Streaming delivers whole elements in pieces of at most 1 MiB.
    let mut pieces = 0;
    r.payload_chunks(&m, |p| {
        assert!(p.len() <= 1 << 20 && p.len() % 4 == 0);
        pieces += 1;
        Ok(())
    })
    .unwrap();
    assert!(pieces > 1);
}

/// Every frame boundary and a spread of other offsets: the prefix reads as a truncated trace
/// holding exactly the records completed before the cut.
#[test]
fn truncation_keeps_every_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.sdt");
    let total = write_mini_run(&full, 3, 11) as usize;
    let bytes = std::fs::read(&full).unwrap();
    let r = TraceReader::open(&full).unwrap();
    let ends: Vec<u64> = r
        .entries()
        .iter()
        .map(|e| e.record_offset + e.record_len)
        .collect();
    let mut cuts: Vec<u64> = vec![0, 1, 8, 15, 16, 17, 31];
    for e in r.entries() {
        cuts.extend([
            e.record_offset - e.payload_len,
            e.record_offset,
            e.record_offset + 1,
            e.record_offset + e.record_len - 1,
        ]);
    }
    cuts.extend(ends.iter().copied());
    let mut rng = Rng(99);
    cuts.extend((0..150).map(|_| rng.below(bytes.len() as u64)));
    cuts.push(bytes.len() as u64 - 1);
    let cut_path = dir.path().join("cut.sdt");
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut as usize]).unwrap();
        match TraceReader::open(&cut_path) {
            Ok(t) => {
                let complete = ends.iter().filter(|&&end| end <= cut).count();
                assert_eq!(t.entries().len(), complete, "cut at {cut}");
                assert!(!t.integrity().is_complete(), "cut at {cut}");
                assert_eq!(read_all(&cut_path).unwrap(), complete);
            }
            Err(TraceError::NoHeader { .. } | TraceError::NotATrace { .. }) => {
                assert!(cut < 200, "cut at {cut}")
            }
            Err(e) => panic!("cut at {cut}: unexpected error {e}"),
        }
    }
    assert_eq!(read_all(&full).unwrap(), total);
}

#[test]
fn bit_flips_give_clean_results_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.sdt");
    write_mini_run(&full, 2, 5);
    let bytes = std::fs::read(&full).unwrap();
    let path = dir.path().join("flip.sdt");
    let mut rng = Rng(1234);
    let mut errors = 0;
    for _ in 0..400 {
        let mut b = bytes.clone();
        let at = rng.below(b.len() as u64) as usize;
        b[at] ^= 1 << rng.below(8);
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = read_all(&path) {
            errors += 1;
            let msg = e.to_string();
            assert!(
                msg.contains("flip.sdt"),
                "error does not name the file: {msg}"
            );
        }
    }
    assert!(errors > 0);
}

#[test]
fn damaged_payload_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sdt");
    write_mini_run(&path, 1, 3);
    let r = TraceReader::open(&path).unwrap();
    let e = r.find("noise.initial", None, 0).unwrap().clone();
    let m = r.read_meta(&e).unwrap();
    let p = m.payload.unwrap();
    drop(r);
    let mut b = std::fs::read(&path).unwrap();
    b[(p.frame_offset + 16 + 5) as usize] ^= 0x40;
    std::fs::write(&path, &b).unwrap();
    let r = TraceReader::open(&path).unwrap();
    let err = r
        .read_payload(&r.read_meta(&e).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("byte offset {}", p.frame_offset)) && err.contains("checksum"),
        "{err}"
    );
    assert!(r.verify().is_err());
}

/// Write `steps` full f32 records of `vals`, one per step, keyed by `key(step)`.
fn write_steps(w: &mut TraceWriter, steps: u32, vals: &[f64], key: impl Fn(u32) -> String) {
    let data = encode(DType::F32, vals);
    let shape = [vals.len()];
    for i in 0..steps {
        let view = TensorView::new(DType::F32, &shape, &data).unwrap();
        w.write(capture(
            &key(i),
            Some(i),
            0,
            view,
            Fidelity::Full,
            Codec::Raw,
            16,
        ))
        .unwrap();
    }
}

#[test]
fn dropped_writer_leaves_readable_truncated_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.sdt");
    let mut w = TraceWriter::create(
        &path,
        &fixed_header("dropped"),
        WriterOptions { max_queue_bytes: 1 },
    )
    .unwrap();
    write_steps(&mut w, 5, &[1.0, 2.0, 3.0], |i| format!("k{i}"));
    drop(w);
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.entries().len(), 5);
    match r.integrity() {
        Integrity::Recovered { reason, .. } => {
            assert!(reason.contains("did not finish"), "{reason}")
        }
        i => panic!("{i:?}"),
    }
}

/// A run stopped early closes cleanly: the file is complete, the run-end frame says the run
/// was not, through the footer and (with the footer cut off) through the recovery scan.
#[test]
fn run_end_frame_marks_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stopped.sdt");
    let mut w =
        TraceWriter::create(&path, &fixed_header("stopped"), WriterOptions::default()).unwrap();
    write_steps(&mut w, 3, &[1.0, f64::NAN, 3.0], |_| "k".into());
    let end = RunEnd {
        status: RunStatus::Interrupted,
        reason: Some("interrupted (Ctrl-C)".into()),
        steps_completed: Some(3),
        steps_planned: Some(20),
        elapsed_ms: Some(1234),
        nonfinite: vec![NonFinite {
            key: "k".into(),
            step: Some(0),
            eval: 0,
            nan: 1,
            pos_inf: 0,
            neg_inf: 0,
        }],
        ..RunEnd::default()
    };
    w.finish_with(end.clone()).unwrap();
    let r = TraceReader::open(&path).unwrap();
    assert!(r.integrity().is_complete());
    assert_eq!(r.run_end(), Some(&end));
    assert_eq!(r.version(), (1, 1));
    assert_eq!(read_all(&path).unwrap(), 3);
    assert!(
        end.describe().contains("interrupted, 3 of 20 steps"),
        "{}",
        end.describe()
    );

    // Without its footer the scan still finds the frame.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.sdt");
    std::fs::write(&cut, &bytes[..bytes.len() - 24]).unwrap();
    let r = TraceReader::open(&cut).unwrap();
    assert!(!r.integrity().is_complete());
    assert_eq!(r.run_end(), Some(&end));
    assert_eq!(r.entries().len(), 3);

    // A plain finish writes no run-end frame.
    let plain = dir.path().join("plain.sdt");
    let w = TraceWriter::create(&plain, &fixed_header("plain"), WriterOptions::default()).unwrap();
    w.finish().unwrap();
    assert_eq!(TraceReader::open(&plain).unwrap().run_end(), None);
}

#[test]
fn writer_errors_name_the_path() {
    let err = TraceWriter::create(
        "/nonexistent-dir/x.sdt",
        &fixed_header("x"),
        WriterOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("/nonexistent-dir/x.sdt"), "{err}");
    if Path::new("/dev/full").exists() {
        let err = TraceWriter::create("/dev/full", &fixed_header("x"), WriterOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }
    // A payload that does not match its shape is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let mut w = TraceWriter::create(
        dir.path().join("v.sdt"),
        &fixed_header("v"),
        WriterOptions::default(),
    )
    .unwrap();
    let data = encode(DType::F32, &[1.0, 2.0]);
    let mut rec = capture(
        "k",
        None,
        0,
        TensorView::new(DType::F32, &[2], &data).unwrap(),
        Fidelity::Full,
        Codec::Raw,
        8,
    );
    rec.shape = vec![3];
    assert!(matches!(
        w.write(rec),
        Err(TraceError::InvalidTensor { .. })
    ));
}

#[test]
fn other_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.sdt");
    std::fs::write(&p, b"PK\x03\x04 not a trace at all").unwrap();
    assert!(matches!(
        TraceReader::open(&p),
        Err(TraceError::NotATrace { .. })
    ));
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        TraceReader::open(&p),
        Err(TraceError::NotATrace { .. })
    ));
    let mut future = b"SDTRACE\0".to_vec();
    future.extend([2, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(&p, &future).unwrap();
    let e = TraceReader::open(&p).err().unwrap();
    assert!(
        matches!(e, TraceError::UnsupportedVersion { major: 2, .. }),
        "{e}"
    );
    assert!(TraceReader::open(dir.path()).is_err());
    assert!(TraceReader::open(dir.path().join("missing.sdt")).is_err());
}

#[test]
fn index_of_100k_records_opens_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.sdt");
    let mut w =
        TraceWriter::create(&path, &fixed_header("many"), WriterOptions::default()).unwrap();
    let data = encode(DType::F32, &[0.5; 16]);
    let view = TensorView::new(DType::F32, &[16], &data).unwrap();
    let rec = capture("unet.x", None, 0, view, Fidelity::Stats, Codec::Raw, 8);
    for i in 0..100_000u32 {
        let mut r = rec.clone();
        r.key = format!("unet.down_blocks.{}.resnets.{}", i % 97, i % 7);
        r.step = Some(i / 1000);
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    TraceReader::open(&path).unwrap();
    let t = std::time::Instant::now();
    let r = TraceReader::open(&path).unwrap();
    let took = t.elapsed();
    assert_eq!(r.entries().len(), 100_000);
    // The bench measures the real figure; this only catches accidental full scans.
    assert!(took.as_millis() < 1000, "opening took {took:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.sdt");
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_all(&p);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..4096), kind in 0u8..6) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.sdt");
        let good = dir.path().join("good.sdt");
        TraceWriter::create(&good, &fixed_header("g"), WriterOptions::default()).unwrap().finish().unwrap();
        let mut b = std::fs::read(&good).unwrap();
        b.truncate(b.len() - 24 - 16 - 8); // drop index frame (empty index body is 2 bytes + pad) and footer
        b.push(kind);
        b.extend(&tail);
        std::fs::write(&p, &b).unwrap();
        let _ = read_all(&p);
    }
}
