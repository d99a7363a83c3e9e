//! Single-file LDM checkpoints through `sdtrace record`: the tiny synthetic model written as a
//! diffusers folder and as one `.safetensors` file (by our own writer, from the documented key
//! mapping) records bit-identical traces, in f32 and f16; the built-in vocabulary works with no
//! tokenizer files; hashes reach the header; `--expect-hash`, pickles and broken files are
//! refused before anything is written.

mod common;

use common::sdtrace;

use sdtrace::model::hash::hash_file;
use sdtrace::model::synth::{SynthSize, write_checkpoint_file, write_model};
use sdtrace::trace::{RunStatus, TraceReader};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Models {
    dir: PathBuf,
    f32: PathBuf,
    f16: PathBuf,
}

/// The tiny model (seed 3) as a folder and as single files, once for this test binary.
fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("checkpoint-test-models");
        std::fs::create_dir_all(&root).unwrap();
        let m = Models {
            dir: root.join("tiny"),
            f32: root.join("tiny.safetensors"),
            f16: root.join("tiny-f16.safetensors"),
        };
        write_model(&m.dir, SynthSize::Tiny, 3).unwrap();
        write_checkpoint_file(&m.f32, SynthSize::Tiny, 3, candle_core::DType::F32).unwrap();
        write_checkpoint_file(&m.f16, SynthSize::Tiny, 3, candle_core::DType::F16).unwrap();
        m
    })
}

fn record(model: &Path, extra: &[&str], out: &Path) -> (i32, String) {
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model)
        .args([
            "--size", "64x64", "--seed", "42", "--steps", "3", "--no-png", "-q",
        ])
        .args([
            "--prompt",
            "a (red:1.2) house, [sky]",
            "--negative",
            "blurry",
        ])
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every record of `a` and `b`: same keys in the same order, same summaries (bit hashes
/// included), sketches and payload bytes. Returns the record count.
fn assert_bit_identical(a: &Path, b: &Path) -> usize {
    let (ra, rb) = (TraceReader::open(a).unwrap(), TraceReader::open(b).unwrap());
    assert_eq!(ra.run_end().unwrap().status, RunStatus::Complete);
    assert_eq!(ra.entries().len(), rb.entries().len());
    for (ea, eb) in ra.entries().iter().zip(rb.entries()) {
        let (ma, mb) = (ra.read_meta(ea).unwrap(), rb.read_meta(eb).unwrap());
        let id = format!("{} step {:?} eval {}", ma.key, ma.step, ma.eval);
        assert_eq!(ma.id(), mb.id(), "{id}");
        assert_eq!((ma.dtype, &ma.shape), (mb.dtype, &mb.shape), "{id}");
        assert_eq!(ma.summary.bits_hash, mb.summary.bits_hash, "{id}");
        assert_eq!(ma.sketch, mb.sketch, "{id}");
        assert_eq!(
            ra.read_payload(&ma).unwrap(),
            rb.read_payload(&mb).unwrap(),
            "{id}"
        );
    }
    ra.entries().len()
}

#[test]
fn folder_and_single_file_record_bit_identical_traces() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let tok = m.dir.join("tokenizer");
    let tok = tok.to_str().unwrap();
    for (file, dtype) in [(&m.f32, "f32"), (&m.f16, "f16")] {
        let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
        let (c, err) = record(&m.dir, &["--dtype", dtype], &a);
        assert_eq!(c, 0, "{err}");
        // The folder's byte-level vocabulary, so that both runs see the same token ids.
        let (c, err) = record(file, &["--dtype", dtype, "--tokenizer", tok], &b);
        assert_eq!(c, 0, "{err}");
        let n = assert_bit_identical(&a, &b);
        assert!(n > 200, "{n} records");
        let h = TraceReader::open(&b).unwrap().header().clone();
        let hashes = hash_file(file).unwrap();
        assert_eq!(h.settings.model_hashes["sha256"], hashes.sha256);
        assert_eq!(h.settings.model_hashes["a1111_old"], hashes.a1111_old);
        let f = &h.settings.extra["model_format"];
        assert_eq!(f["used"], f["tensors"]);
        assert_eq!(f["weight_dtypes"][dtype.to_uppercase()], f["tensors"]);
        assert!(
            f["tokenizer"].as_str().unwrap().contains("--tokenizer"),
            "{f}"
        );
    }
}

#[test]
fn single_files_work_without_tokenizer_files() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.sdt");
    let short = &hash_file(&m.f32).unwrap().sha256[..10];
    let (c, err) = record(&m.f32, &["--expect-hash", short], &out);
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&out).unwrap();
    let f = &r.header().settings.extra["model_format"];
    assert_eq!(f["tokenizer"], "built-in OpenAI CLIP vocabulary", "{f}");
    assert_eq!(f["prediction"], "Epsilon (default)", "{f}");
    assert_eq!(
        r.header().settings.model.as_deref(),
        Some("tiny.safetensors")
    );
    // OpenAI ids for the same prompt differ from the byte-level ones: the conditioning differs.
    let folder = dir.path().join("d.sdt");
    assert_eq!(record(&m.dir, &[], &folder).0, 0);
    let f = TraceReader::open(&folder).unwrap();
    let hash = |r: &TraceReader| {
        let e = r.find("text.cond", None, 0).unwrap();
        r.read_meta(e).unwrap().summary.bits_hash
    };
    assert_ne!(hash(&r), hash(&f));
}

#[test]
fn wrong_files_are_refused_before_anything_is_written() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.sdt");
    let old = hash_file(&m.f32).unwrap().a1111_old;
    let (c, err) = record(&m.f32, &["--expect-hash", "2700c435"], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("2700c435") && err.contains(&old) && err.contains("tiny.safetensors"),
        "{err}"
    );
    assert!(!out.exists());
    let (c, err) = record(&m.dir, &["--expect-hash", "2700c435"], &out);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("diffusers folder"), "{err}");
    // A pickle, whatever its name.
    let ckpt = dir.path().join("anything-v3.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04archive/data.pkl").unwrap();
    let (c, err) = record(&ckpt, &[], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("pickle") && err.contains("safetensors"),
        "{err}"
    );
    // Truncated: the header promises more than the file holds.
    let bytes = std::fs::read(&m.f32).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (c, err) = record(&cut, &[], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("cut.safetensors") && err.contains("not a safetensors"),
        "{err}"
    );
    // An SDXL refiner: OpenCLIP alone under conditioner.embedders.0.model.
    let refiner = dir.path().join("sd_xl_refiner_1.0.safetensors");
    let zeros = |shape: &[usize]| {
        candle_core::Tensor::zeros(shape, candle_core::DType::F16, &candle_core::Device::Cpu)
            .unwrap()
    };
    let tensors = std::collections::HashMap::from([
        (
            "conditioner.embedders.0.model.token_embedding.weight".to_string(),
            zeros(&[8, 4]),
        ),
        (
            "model.diffusion_model.label_emb.0.0.weight".to_string(),
            zeros(&[4, 2560]),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &refiner).unwrap();
    let (c, err) = record(&refiner, &[], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("sd_xl_refiner_1.0.safetensors") && err.contains("SDXL refiner"),
        "{err}"
    );
    assert!(!out.exists());
}
