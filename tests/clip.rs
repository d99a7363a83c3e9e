//! Our CLIP text encoder against candle-transformers' on SD 1.5's config, clip skip, probe keys,
//! and the synthetic tokenizer vocabulary.

mod common;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use sdtrace::model::clip::{ClipActivation, ClipConfig, ClipTextModel};
use sdtrace::model::synth::{byte_level_vocab, bytes_to_unicode, clip_weights};
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{RunHeader, TraceReader, TraceWriter, WriterOptions};
use std::collections::HashMap;

fn ids(n_batch: usize) -> Tensor {
    // BOS, a few tokens, EOS padding, as a tokenizer frames a prompt to 77.
    let mut v = Vec::new();
    for b in 0..n_batch {
        let mut row = vec![49406u32, 320, 1125 + b as u32, 539, 550, 7651, 49407];
        row.resize(77, 49407);
        v.extend(row);
    }
    Tensor::from_vec(v, (n_batch, 77), &Device::Cpu).unwrap()
}

#[test]
fn matches_candle_transformers_clip_and_clip_skip() {
    use candle_transformers::models::stable_diffusion::clip;
    // SD 1.5's real text-encoder shapes (candle's config cannot be shrunk).
    let cfg = ClipConfig::sd15();
    let w: HashMap<String, Tensor> = clip_weights(&cfg, 11).unwrap().into_iter().collect();
    let vb = || VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let ours = ClipTextModel::new(vb(), &cfg, "text_encoder").unwrap();
    let theirs = clip::ClipTextTransformer::new(vb(), &clip::Config::v1_5()).unwrap();
    // Batch 1: candle's own causal mask does not broadcast over heads for larger batches.
    let x = ids(1);
    let a = ours.forward(&x, 1, &Probe::disabled()).unwrap();
    let b = theirs.forward(&x).unwrap();
    let err = common::rel_l2(&a, &b);
    assert!(err < 1e-5, "relative L2 {err:e}");
    // Clip skip 2 = the penultimate layer + final layer norm, as candle computes it.
    let (_, penultimate) = theirs
        .forward_until_encoder_layer(&x, usize::MAX, -2)
        .unwrap();
    let final_norm =
        candle_nn::layer_norm(768, 1e-5, vb().pp("text_model.final_layer_norm")).unwrap();
    let penultimate = final_norm.forward(&penultimate).unwrap();
    let skip2 = ours.forward(&x, 2, &Probe::disabled()).unwrap();
    let err = common::rel_l2(&skip2, &penultimate);
    assert!(err < 1e-5, "clip skip 2: relative L2 {err:e}");
    assert!(ours.forward(&x, 0, &Probe::disabled()).is_err());
    assert!(ours.forward(&x, 13, &Probe::disabled()).is_err());
}

#[test]
fn probes_every_layer_and_the_final_norm() {
    let cfg = ClipConfig::tiny();
    let w: HashMap<String, Tensor> = clip_weights(&cfg, 2).unwrap().into_iter().collect();
    let model = ClipTextModel::new(
        VarBuilder::from_tensors(w, DType::F32, &Device::Cpu),
        &cfg,
        "text_encoder",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sdt");
    let probe = Probe::new(
        TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap(),
        Policy::preset("sketch").unwrap(),
    );
    let plain = model.forward(&ids(1), 1, &Probe::disabled()).unwrap();
    let probed = model.forward(&ids(1), 1, &probe).unwrap();
    probe.finish().unwrap();
    assert_eq!(
        plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        probed.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let r = TraceReader::open(&path).unwrap();
    let keys: Vec<&str> = r.entries().iter().map(|e| &*e.key).collect();
    assert_eq!(
        keys,
        [
            "text_encoder.encoder.layers.0",
            "text_encoder.encoder.layers.1",
            "text_encoder.final_layer_norm"
        ]
    );
    // f16 runs and stays close.
    let w: HashMap<String, Tensor> = clip_weights(&cfg, 2).unwrap().into_iter().collect();
    let half = ClipTextModel::new(
        VarBuilder::from_tensors(w, DType::F16, &Device::Cpu),
        &cfg,
        "text_encoder",
    )
    .unwrap();
    let h = half
        .forward(&ids(1), 1, &Probe::disabled())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(common::rel_l2(&h, &plain) < 1e-2);
}

#[test]
fn hf_config_round_trip_and_errors() {
    let p = std::path::Path::new("text_encoder/config.json");
    for cfg in [ClipConfig::sd15(), ClipConfig::sd21(), ClipConfig::tiny()] {
        assert_eq!(ClipConfig::from_hf_json(&cfg.to_hf_json(), p).unwrap(), cfg);
    }
    assert_eq!(ClipConfig::sd21().activation, ClipActivation::GeluErf);
    let mut v = ClipConfig::sd15().to_hf_json();
    v["hidden_act"] = "relu".into();
    assert!(
        ClipConfig::from_hf_json(&v, p)
            .unwrap_err()
            .to_string()
            .contains("hidden_act")
    );
    let mut v = ClipConfig::sd15().to_hf_json();
    v["num_attention_heads"] = 7.into();
    let e = ClipConfig::from_hf_json(&v, p).unwrap_err().to_string();
    assert!(
        e.contains("num_attention_heads") && e.contains("text_encoder/config.json"),
        "{e}"
    );
}

#[test]
fn byte_vocabulary_matches_openai_clip_ids() {
    let table = bytes_to_unicode();
    assert_eq!(table.len(), 256);
    // OpenAI CLIP: "!" is id 0, "a" is id 64, "a</w>" is 320, specials at the end.
    let v = byte_level_vocab();
    assert_eq!(v["!"], 0);
    assert_eq!(v["a"], 64);
    assert_eq!(v["a</w>"], 320);
    assert_eq!(v["<|startoftext|>"], 49406);
    assert_eq!(v["<|endoftext|>"], 49407);
    assert_eq!(v.as_object().unwrap().len(), 514);
}
