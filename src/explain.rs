//! `sdtrace explain`: the generation parameters of two images side by side, every setting that
//! differs, and a prediction of whether their initial noise can agree (and from which size it
//! cannot), with the fix, before anyone records a trace. No model, no tensor library.
//!
//! Sources of the parameters, per image ([`generation_of_png`]):
//! - the webui's (A1111, Forge) and sdtrace's `parameters` text, read with the webui's own
//!   parsing rules ([`crate::image::parse_infotext`]). No `RNG` field means the webui's default
//!   source, the GPU; `RNG: CPU`, `RNG: NV` and sdtrace's `sdtrace RNG` name the generator.
//! - ComfyUI's `prompt` text (the API graph: node id → `{class_type, inputs}`), or when it is
//!   absent its `workflow` text (the editor's graph, whose widget values are read by position
//!   for the node types below). From the graph: `KSampler` / `KSamplerAdvanced` (seed or
//!   noise_seed, steps, cfg, sampler_name, scheduler, denoise), the `EmptyLatentImage` behind
//!   `latent_image` (width, height, batch_size), the checkpoint loader behind `model`
//!   (ckpt_name, LoRAs on the way), the `CLIPTextEncode` texts behind `positive`/`negative`, and
//!   `CLIPSetLastLayer` (clip skip). Inputs linked to other nodes are followed a few hops; what
//!   cannot be found is left out with a note. ComfyUI draws noise on the CPU (`torch.randn` with
//!   a CPU generator: sdtrace's `torch-cpu`), the whole batch in one draw.
//!
//! The prediction ([`explain`]) uses [`crate::sampling::rng::agree`]: PyTorch's GPU noise agrees
//! between two cards up to the smaller card's wave (SMs × threads per SM elements; an N×N image
//! draws 4·(N/8)² per image, the webui draws each image of a batch alone) and differs past it;
//! CPU noise never agrees with GPU noise. Without the cards (`--cards`, or the card sdtrace notes
//! in its own PNGs), a table of common cards shows where each one parts from the others.
//! [`render`] is a pure function of the result.

use crate::analysis::noise::{max_square, square_sizes};
use crate::exit::ExitStatus;
use crate::image::{ImageError, PARAMETERS_KEY, ParsedInfotext, parse_infotext, png_text};
use crate::params::{SDTRACE_RNG_KEY, sdtrace_rng_value};
use crate::sampling::RngSpec;
use crate::sampling::rng::agree::{Agreement, agreement, draw_elements};
use crate::sampling::rng::presets;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Errors of reading an image's generation parameters.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Png(#[from] ImageError),
    #[error(
        "no generation parameters: neither a 'parameters' text (webui, Forge, sdtrace) nor ComfyUI's 'prompt' or 'workflow' text (saved without metadata, or stripped)"
    )]
    NoParameters,
    #[error("ComfyUI '{chunk}' text: {what}")]
    Comfy { chunk: &'static str, what: String },
}

/// What made an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// AUTOMATIC1111's webui or Forge (their infotext).
    Webui,
    /// `sdtrace record` (the webui's infotext with `Recorded by: sdtrace …`).
    Sdtrace,
    ComfyUi,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Webui => "A1111/Forge webui",
            Tool::Sdtrace => "sdtrace",
            Tool::ComfyUi => "ComfyUI",
        }
    }
}

/// Where an image's initial noise came from.
#[derive(Clone, Debug, PartialEq)]
pub enum NoiseSource {
    /// A generator the image names (RNG: CPU / NV, ComfyUI's CPU, sdtrace's field).
    Known(RngSpec),
    /// The webui's GPU source on a card the image does not name.
    Gpu,
}

/// One setting of an image: how it is shown and the form it is compared in.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: String,
    pub shown: String,
    pub canon: String,
}

/// The generation parameters of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tool: Tool,
    pub settings: Vec<Setting>,
    pub seed: Option<u64>,
    pub size: Option<(u32, u32)>,
    pub batch: u32,
    pub noise: NoiseSource,
    /// How the noise source was read, for people.
    pub noise_how: String,
    /// The batch is drawn in one call (ComfyUI), not image by image (the webui).
    pub batch_in_one_draw: bool,
    pub notes: Vec<String>,
}

impl Generation {
    fn new(tool: Tool) -> Self {
        Generation {
            tool,
            settings: Vec::new(),
            seed: None,
            size: None,
            batch: 1,
            noise: NoiseSource::Gpu,
            noise_how: String::new(),
            batch_in_one_draw: false,
            notes: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, shown: impl Into<String>, canon: impl Into<String>) {
        let (shown, canon) = (shown.into(), canon.into());
        match self.settings.iter_mut().find(|s| s.key == key) {
            Some(s) => {
                s.shown = shown;
                s.canon = canon;
            }
            None => self.settings.push(Setting {
                key: key.into(),
                shown,
                canon,
            }),
        }
    }

    /// The setting `key`, if the image gives it.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Noise elements of one draw (one image for the webui, the batch for ComfyUI).
    pub fn draw_elements(&self) -> Option<u64> {
        self.size.map(|s| {
            draw_elements(
                s,
                if self.batch_in_one_draw {
                    self.batch
                } else {
                    1
                },
            )
        })
    }
}

/// A model name compared without folders and extension, in lower case.
fn model_canon(name: &str) -> String {
    let last = name
        .trim()
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("");
    [".safetensors", ".ckpt", ".pt", ".bin", ".gguf"]
        .iter()
        .find_map(|e| {
            last.len()
                .checked_sub(e.len())
                .filter(|&n| last[n..].eq_ignore_ascii_case(e))
                .map(|n| &last[..n])
        })
        .unwrap_or(last)
        .to_lowercase()
}

/// A number as the webui writes it (7.0 → `7`).
fn num(x: f64) -> String {
    format!("{x}")
}

/// Settings the table shows first, in this order; the others follow as found.
const ORDER: [&str; 16] = [
    "Prompt",
    "Negative prompt",
    "Model",
    "Model hash",
    "LoRA",
    "Sampler",
    "Steps",
    "CFG scale",
    "Seed",
    "Size",
    "Batch size",
    "Clip skip",
    "Denoising strength",
    "ENSD",
    "RNG source",
    "Version",
];

/// Extra infotext fields that are read elsewhere or say nothing about the result.
const SKIPPED: [&str; 7] = [
    "RNG",
    SDTRACE_RNG_KEY,
    "Recorded by",
    "Schedule type",
    "Eta noise seed delta",
    "Batch pos",
    "Model",
];

/// The generation of a webui (or sdtrace) infotext.
///
/// # Errors
/// A typed field with an unreadable value (the infotext parser's error).
pub fn from_infotext(text: &str) -> Result<Generation, ExplainError> {
    let p: ParsedInfotext = parse_infotext(text)?;
    let field = |k: &str| {
        p.params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let tool = if field("Recorded by").is_some_and(|v| v.starts_with("sdtrace")) {
        Tool::Sdtrace
    } else {
        Tool::Webui
    };
    let mut g = Generation::new(tool);
    g.set("Prompt", p.prompt.clone(), p.prompt.clone());
    g.set(
        "Negative prompt",
        p.negative_prompt.clone(),
        p.negative_prompt.clone(),
    );
    if let Some(m) = &p.model_name {
        g.set("Model", m.clone(), model_canon(m));
    }
    if let Some(h) = &p.model_hash {
        g.set("Model hash", h.clone(), h.trim().to_lowercase());
    }
    if let Some(s) = &p.a1111_sampler {
        let shown = match &p.schedule_type {
            Some(t) => format!("{s} ({t})"),
            None => s.clone(),
        };
        let canon = p.sampler.clone().unwrap_or_else(|| shown.to_lowercase());
        g.set("Sampler", shown, canon);
    }
    if let Some(s) = p.steps {
        g.set("Steps", s.to_string(), s.to_string());
    }
    if let Some(c) = p.cfg_scale {
        g.set("CFG scale", num(c), num(c));
    }
    if let Some(s) = p.seed {
        g.seed = Some(s);
        g.set("Seed", s.to_string(), s.to_string());
    }
    if let (Some(w), Some(h)) = (p.width, p.height) {
        g.size = Some((w, h));
        g.set("Size", format!("{w}x{h}"), format!("{w}x{h}"));
    }
    let batch = field("Batch size").and_then(|b| b.trim().parse::<u32>().ok());
    g.batch = batch.unwrap_or(1).max(1);
    match batch {
        Some(b) => g.set("Batch size", b.to_string(), b.to_string()),
        None => g.set("Batch size", "1 (default)", "1"),
    }
    match p.clip_skip {
        Some(c) => g.set("Clip skip", c.to_string(), c.to_string()),
        None => g.set("Clip skip", "1 (default)", "1"),
    }
    match field("ENSD").or_else(|| field("Eta noise seed delta")) {
        Some(e) => g.set("ENSD", e.clone(), e.trim().to_string()),
        None => g.set("ENSD", "0 (default)", "0"),
    }
    // The generator: the webui's field, else sdtrace's, else the webui's default GPU.
    let ours = field(SDTRACE_RNG_KEY).and_then(|v| sdtrace_rng_value(&v));
    let (noise, how) = match field("RNG").as_deref().map(str::trim) {
        Some("CPU") => (
            NoiseSource::Known(RngSpec::TorchCpu),
            "RNG: CPU (torch.randn on the CPU)".to_string(),
        ),
        Some("NV") => (
            NoiseSource::Known(RngSpec::A1111Nv),
            "RNG: NV (the webui's NVIDIA-like generator, the same on every device)".to_string(),
        ),
        other => match ours {
            Some(spec) => {
                let how = match &spec {
                    RngSpec::TorchCuda { .. } => format!(
                        "GPU, emulated by sdtrace as {} (its '{SDTRACE_RNG_KEY}' field)",
                        crate::params::rng_flag_text(&spec)
                    ),
                    _ => format!(
                        "sdtrace's '{SDTRACE_RNG_KEY}' field: --rng {}",
                        crate::params::rng_flag_text(&spec)
                    ),
                };
                (NoiseSource::Known(spec), how)
            }
            None => (
                NoiseSource::Gpu,
                match other {
                    Some(v) if v != "GPU" => {
                        format!("RNG: {v} (not one of the webui's sources; read as its GPU)")
                    }
                    Some(_) => "RNG: GPU (card not named)".to_string(),
                    None => {
                        "GPU: no RNG field, the webui's default source (card not named)".to_string()
                    }
                },
            ),
        },
    };
    let (shown, canon) = source_row(&noise, tool);
    g.set("RNG source", shown, canon);
    g.noise = noise;
    g.noise_how = how;
    for (k, v) in &p.extra {
        if SKIPPED.contains(&k.as_str()) || g.get(k).is_some() {
            continue;
        }
        g.set(k, v.clone(), v.trim().to_string());
    }
    if let Some(v) = field("Recorded by") {
        g.notes.push(format!("recorded by {v}"));
    }
    Ok(g)
}

/// The RNG source row: shown and compared.
fn source_row(noise: &NoiseSource, tool: Tool) -> (String, String) {
    match noise {
        NoiseSource::Known(RngSpec::TorchCpu) if tool == Tool::ComfyUi => {
            ("CPU (ComfyUI)".into(), "cpu".into())
        }
        NoiseSource::Known(RngSpec::TorchCpu) => ("CPU".into(), "cpu".into()),
        NoiseSource::Known(RngSpec::A1111Nv) => ("NV".into(), "nv".into()),
        NoiseSource::Known(s @ RngSpec::TorchCuda { .. }) => {
            (format!("GPU ({})", s.label()), "gpu".into())
        }
        NoiseSource::Known(s) => (format!("sdtrace --rng {s}"), s.to_string()),
        NoiseSource::Gpu => ("GPU (default)".into(), "gpu".into()),
    }
}

// ------------------------------------------------------------------------------- ComfyUI

/// ComfyUI's sampler and scheduler as sdtrace's sampler name, where sdtrace has it.
fn comfy_sampler(sampler: &str, scheduler: &str) -> Option<&'static str> {
    Some(match (sampler, scheduler) {
        ("dpmpp_2m", "karras") => "dpmpp-2m-karras",
        ("dpmpp_2m", "normal") => "dpmpp-2m",
        ("euler", "normal") => "euler",
        ("euler_ancestral", "normal") => "euler-a",
        ("ddim", "ddim_uniform") => "ddim",
        _ => return None,
    })
}

/// A ComfyUI graph in API form: node id → node.
struct Graph<'a> {
    nodes: &'a Map<String, Value>,
}

impl<'a> Graph<'a> {
    fn node(&self, id: &str) -> Option<&'a Value> {
        self.nodes.get(id)
    }

    fn class(node: &Value) -> &str {
        node["class_type"].as_str().unwrap_or("")
    }

    /// The node a link value `[id, slot]` points at.
    fn linked(&self, v: &Value) -> Option<(&'a str, &'a Value)> {
        let arr = v.as_array()?;
        let id = match arr.first()? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let (k, node) = self.nodes.get_key_value(&id)?;
        Some((k.as_str(), node))
    }

    /// Input `name` of `node` as a literal, following links to nodes that hold the value
    /// (primitive nodes: the same input name, `value`, or their only literal input).
    fn literal(&self, node: &Value, name: &str) -> Option<Value> {
        let mut v = node["inputs"].get(name)?.clone();
        for _ in 0..8 {
            if !v.is_array() {
                return Some(v);
            }
            let (_, next) = self.linked(&v)?;
            let inputs = next["inputs"].as_object()?;
            let literals: Vec<&Value> = inputs.values().filter(|x| !x.is_array()).collect();
            v = inputs
                .get(name)
                .or_else(|| inputs.get("value"))
                .or_else(|| (literals.len() == 1).then(|| literals[0]))?
                .clone();
        }
        None
    }

    /// Follow `input` of `node` through nodes that pass it on, to the first node of a class
    /// in `want` (at most 16 hops); the classes passed are returned too.
    fn upstream(
        &self,
        node: &'a Value,
        input: &str,
        want: &[&str],
    ) -> (Option<&'a Value>, Vec<&'a Value>) {
        let mut passed = Vec::new();
        let mut at = node;
        let mut key = input.to_string();
        for _ in 0..16 {
            let Some((_, next)) = at["inputs"].get(key.as_str()).and_then(|v| self.linked(v))
            else {
                return (None, passed);
            };
            if want.contains(&Self::class(next)) {
                return (Some(next), passed);
            }
            passed.push(next);
            // Pass on through the same input, or the only linked input of a matching kind.
            let inputs = next["inputs"].as_object();
            let same = inputs
                .and_then(|i| i.get(key.as_str()))
                .is_some_and(Value::is_array);
            if !same {
                let links: Vec<&String> = inputs
                    .map(|i| {
                        i.iter()
                            .filter(|(k, v)| v.is_array() && k.contains(input))
                            .map(|(k, _)| k)
                            .collect()
                    })
                    .unwrap_or_default();
                match links.first() {
                    Some(k) => key = (*k).clone(),
                    None => return (None, passed),
                }
            }
            at = next;
        }
        (None, passed)
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The generation of a ComfyUI API graph (the PNG's `prompt` text).
///
/// # Errors
/// Text that is not a JSON object of nodes.
pub fn from_comfy_prompt(json: &str) -> Result<Generation, ExplainError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ExplainError::Comfy {
        chunk: "prompt",
        what: format!("not JSON ({e})"),
    })?;
    let nodes = v.as_object().ok_or_else(|| ExplainError::Comfy {
        chunk: "prompt",
        what: "not a JSON object of nodes".into(),
    })?;
    Ok(from_graph(&Graph { nodes }))
}

fn from_graph(graph: &Graph) -> Generation {
    let mut g = Generation::new(Tool::ComfyUi);
    g.noise = NoiseSource::Known(RngSpec::TorchCpu);
    g.noise_how = "ComfyUI draws the noise on the CPU (torch.randn with a CPU generator)".into();
    g.batch_in_one_draw = true;
    let mut ids: Vec<&String> = graph.nodes.keys().collect();
    ids.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.to_string()));
    let samplers: Vec<(&String, &Value)> = ids
        .iter()
        .filter_map(|id| Some((*id, graph.node(id)?)))
        .filter(|(_, n)| matches!(Graph::class(n), "KSampler" | "KSamplerAdvanced"))
        .collect();
    let empty_latent = ["EmptyLatentImage", "EmptySD3LatentImage"];
    // The first pass: a sampler fed by an empty latent, else the first sampler.
    let chosen = samplers
        .iter()
        .find(|(_, n)| graph.upstream(n, "latent_image", &empty_latent).0.is_some())
        .or(samplers.first());
    let Some((id, ks)) = chosen else {
        let classes: Vec<&str> = ids
            .iter()
            .filter_map(|id| graph.node(id).map(Graph::class))
            .collect();
        g.notes.push(format!(
            "no KSampler or KSamplerAdvanced node: the graph's nodes are {}; only the checkpoint is read",
            classes.join(", ")
        ));
        if let Some(ck) = ids
            .iter()
            .filter_map(|id| graph.node(id))
            .find_map(|n| n["inputs"]["ckpt_name"].as_str())
        {
            g.set("Model", ck, model_canon(ck));
        }
        let (shown, canon) = source_row(&g.noise, g.tool);
        g.set("RNG source", shown, canon);
        return g;
    };
    if samplers.len() > 1 {
        g.notes.push(format!(
            "{} sampler nodes; compared: node {id} ({}), the first pass (later passes, such as an upscale, are not)",
            samplers.len(),
            Graph::class(ks)
        ));
    }
    let advanced = Graph::class(ks) == "KSamplerAdvanced";
    let lit = |name: &str| graph.literal(ks, name);
    // Prompts.
    for (input, key) in [("positive", "Prompt"), ("negative", "Negative prompt")] {
        let (enc, passed) = graph.upstream(
            ks,
            input,
            &[
                "CLIPTextEncode",
                "CLIPTextEncodeSDXL",
                "CLIPTextEncodeSDXLRefiner",
            ],
        );
        match enc.and_then(|n| {
            graph
                .literal(n, "text")
                .or_else(|| graph.literal(n, "text_g"))
                .and_then(|v| text_of(&v))
        }) {
            Some(t) => {
                g.set(key, t.clone(), t.trim().to_string());
                if let Some(n) = enc
                    && let Some((_, skip)) = n["inputs"].get("clip").and_then(|c| graph.linked(c))
                    && Graph::class(skip) == "CLIPSetLastLayer"
                    && let Some(l) = skip["inputs"]["stop_at_clip_layer"].as_i64()
                {
                    let c = l.unsigned_abs().max(1);
                    g.set("Clip skip", c.to_string(), c.to_string());
                }
            }
            None => g.notes.push(format!(
                "the {input} prompt is not a plain CLIPTextEncode text{}",
                match passed.last() {
                    Some(n) => format!(" (it passes through {})", Graph::class(n)),
                    None => String::new(),
                }
            )),
        }
    }
    if g.get("Clip skip").is_none() && g.get("Prompt").is_some() {
        g.set("Clip skip", "1 (default)", "1");
    }
    // Model and LoRAs.
    let (ckpt, passed) = graph.upstream(
        ks,
        "model",
        &["CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader"],
    );
    match ckpt.and_then(|n| {
        graph
            .literal(n, "ckpt_name")
            .or_else(|| graph.literal(n, "unet_name"))
            .and_then(|v| text_of(&v))
    }) {
        Some(name) => g.set("Model", name.clone(), model_canon(&name)),
        None => g
            .notes
            .push("the checkpoint is not found behind the sampler's model input".into()),
    }
    let loras: Vec<String> = passed
        .iter()
        .filter_map(|n| {
            let name = graph.literal(n, "lora_name").and_then(|v| text_of(&v))?;
            let w = graph
                .literal(n, "strength_model")
                .and_then(|v| v.as_f64())
                .map_or(String::new(), |w| format!(":{}", num(w)));
            Some(format!("{}{w}", model_canon(&name)))
        })
        .collect();
    if !loras.is_empty() {
        g.set("LoRA", loras.join(", "), loras.join(", "));
    }
    // Sampler settings.
    let seed = lit(if advanced { "noise_seed" } else { "seed" });
    if let Some(s) = seed.as_ref().and_then(Value::as_u64) {
        g.seed = Some(s);
        g.set("Seed", s.to_string(), s.to_string());
    }
    if let Some(s) = lit("steps").and_then(|v| v.as_u64()) {
        g.set("Steps", s.to_string(), s.to_string());
    }
    if let Some(c) = lit("cfg").and_then(|v| v.as_f64()) {
        g.set("CFG scale", num(c), num(c));
    }
    let sampler = lit("sampler_name").and_then(|v| text_of(&v));
    let scheduler = lit("scheduler").and_then(|v| text_of(&v));
    if let Some(s) = &sampler {
        let sch = scheduler.clone().unwrap_or_default();
        let shown = if sch.is_empty() {
            s.clone()
        } else {
            format!("{s} ({sch})")
        };
        let canon = comfy_sampler(s, &sch)
            .map(str::to_string)
            .unwrap_or_else(|| shown.to_lowercase());
        g.set("Sampler", shown, canon);
    }
    if !advanced
        && let Some(d) = lit("denoise").and_then(|v| v.as_f64())
        && d != 1.0
    {
        g.set("Denoising strength", num(d), num(d));
    }
    if advanced {
        if lit("add_noise").and_then(|v| text_of(&v)).as_deref() == Some("disable") {
            g.notes
                .push("KSamplerAdvanced adds no noise (add_noise: disable)".into());
        }
        let start = lit("start_at_step").and_then(|v| v.as_u64()).unwrap_or(0);
        if start != 0 {
            g.notes.push(format!(
                "KSamplerAdvanced starts at step {start} (not a whole txt2img run)"
            ));
        }
    }
    // The latent.
    let (latent, passed) = graph.upstream(ks, "latent_image", &empty_latent);
    match latent {
        Some(n) => {
            let dim = |k: &str| {
                graph
                    .literal(n, k)
                    .and_then(|v| v.as_u64())
                    .and_then(|x| u32::try_from(x).ok())
            };
            if let (Some(w), Some(h)) = (dim("width"), dim("height")) {
                g.size = Some((w, h));
                g.set("Size", format!("{w}x{h}"), format!("{w}x{h}"));
            }
            let b = dim("batch_size").unwrap_or(1).max(1);
            g.batch = b;
            g.set("Batch size", b.to_string(), b.to_string());
        }
        None => g.notes.push(format!(
            "the latent does not come from an EmptyLatentImage{}: the size is unknown",
            match passed.first() {
                Some(n) => format!(" (it comes from {})", Graph::class(n)),
                None => String::new(),
            }
        )),
    }
    let (shown, canon) = source_row(&g.noise, g.tool);
    g.set("RNG source", shown, canon);
    g
}

/// Input names of the widgets of the node types read from a ComfyUI editor workflow, in
/// widget order (`<control>` is the seed's "control after generate" widget).
fn widget_names(class: &str) -> &'static [&'static str] {
    match class {
        "KSampler" => &[
            "seed",
            "<control>",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "denoise",
        ],
        "KSamplerAdvanced" => &[
            "add_noise",
            "noise_seed",
            "<control>",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ],
        "EmptyLatentImage" | "EmptySD3LatentImage" => &["width", "height", "batch_size"],
        "CheckpointLoaderSimple" => &["ckpt_name"],
        "UNETLoader" => &["unet_name", "weight_dtype"],
        "CLIPTextEncode" => &["text"],
        "CLIPSetLastLayer" => &["stop_at_clip_layer"],
        "LoraLoader" => &["lora_name", "strength_model", "strength_clip"],
        _ => &[],
    }
}

/// The generation of a ComfyUI editor workflow (the PNG's `workflow` text), converted to the
/// API form: widget values by position for the node types `widget_names` knows, links from
/// the workflow's link table.
///
/// # Errors
/// Text that is not a JSON object with a `nodes` array.
pub fn from_comfy_workflow(json: &str) -> Result<Generation, ExplainError> {
    let bad = |what: String| ExplainError::Comfy {
        chunk: "workflow",
        what,
    };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON ({e})")))?;
    let nodes = v["nodes"]
        .as_array()
        .ok_or_else(|| bad("no 'nodes' array".into()))?;
    // link id → [from node, from slot]
    let mut links = std::collections::HashMap::new();
    for l in v["links"].as_array().into_iter().flatten() {
        if let Some(a) = l.as_array()
            && let (Some(id), Some(from), Some(slot)) =
                (a.first().and_then(Value::as_u64), a.get(1), a.get(2))
        {
            links.insert(
                id,
                Value::Array(vec![
                    Value::String(text_of(from).unwrap_or_default()),
                    slot.clone(),
                ]),
            );
        }
    }
    let mut api = Map::new();
    for n in nodes {
        let (Some(id), Some(class)) = (n.get("id").and_then(text_of), n["type"].as_str()) else {
            continue;
        };
        let mut inputs = Map::new();
        for input in n["inputs"].as_array().into_iter().flatten() {
            if let (Some(name), Some(link)) = (input["name"].as_str(), input["link"].as_u64())
                && let Some(to) = links.get(&link)
            {
                inputs.insert(name.to_string(), to.clone());
            }
        }
        let names = widget_names(class);
        for (name, value) in names
            .iter()
            .zip(n["widgets_values"].as_array().into_iter().flatten())
        {
            if !name.starts_with('<') && !inputs.contains_key(*name) {
                inputs.insert(name.to_string(), value.clone());
            }
        }
        let mut node = Map::new();
        node.insert("class_type".into(), Value::String(class.into()));
        node.insert("inputs".into(), Value::Object(inputs));
        api.insert(id, Value::Object(node));
    }
    let mut g = from_graph(&Graph { nodes: &api });
    g.notes.push(
        "read from ComfyUI's editor workflow (no API 'prompt' text): widget values taken by position"
            .into(),
    );
    Ok(g)
}

/// The generation parameters of a PNG: the webui's/sdtrace's `parameters`, else ComfyUI's
/// `prompt`, else its `workflow`.
///
/// # Errors
/// Not a PNG, a damaged one, one with none of these texts, or unreadable ones.
pub fn generation_of_png(bytes: &[u8]) -> Result<Generation, ExplainError> {
    let texts = png_text(bytes)?;
    let get = |k: &str| {
        texts
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(t) = get(PARAMETERS_KEY) {
        return from_infotext(t);
    }
    match (get("prompt"), get("workflow")) {
        (Some(p), w) => match from_comfy_prompt(p) {
            Ok(g) => Ok(g),
            Err(e) => match w {
                Some(w) => from_comfy_workflow(w),
                None => Err(e),
            },
        },
        (None, Some(w)) => from_comfy_workflow(w),
        (None, None) => Err(ExplainError::NoParameters),
    }
}

// ------------------------------------------------------------------------------- the answer

/// One row of the settings table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
    pub mark: Mark,
}

/// How a row compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Same,
    Differs,
    /// Only one image says.
    OneSide,
}

/// The noise prediction's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseVerdict {
    Agree,
    Differ,
    /// Depends on cards the images do not name.
    Depends,
}

/// What `explain` says about two images.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub tools: (Tool, Tool),
    pub rows: Vec<Row>,
    pub notes: (Vec<String>, Vec<String>),
    /// Each side's noise source, in words.
    pub sources: (String, String),
    pub noise: Vec<String>,
    /// Common cards, when a GPU's card is unknown: (card, SMs × threads, wave, largest
    /// agreeing square, agrees at the images' size).
    pub card_table: Vec<CardRow>,
    pub verdict: NoiseVerdict,
    pub fix: Vec<String>,
}

/// One card of the table of common cards.
#[derive(Clone, Debug, PartialEq)]
pub struct CardRow {
    pub name: String,
    pub sms: u32,
    pub threads: u32,
    pub wave: u64,
    /// Largest N×N (one image) the card draws like any larger card.
    pub max_square: u64,
    /// At the images' size the card draws like any larger card.
    pub agrees_at_size: Option<bool>,
}

/// Cards of the table shown when a GPU's card is unknown.
pub const COMMON_CARDS: [&str; 9] = [
    "p2000", "gtx1060", "gtx1070", "rtx2060", "t4", "rtx3060", "rtx3090", "rtx4090", "a100",
];

impl Explanation {
    /// Rows whose values differ.
    pub fn differing(&self) -> usize {
        self.rows.iter().filter(|r| r.mark == Mark::Differs).count()
    }

    /// [`ExitStatus::Success`] when the settings and the predicted noise agree,
    /// [`ExitStatus::Diverged`] otherwise.
    pub fn status(&self) -> ExitStatus {
        if self.differing() > 0 || self.verdict != NoiseVerdict::Agree {
            ExitStatus::Diverged
        } else {
            ExitStatus::Success
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn wave_text(spec: &RngSpec) -> String {
    match spec {
        RngSpec::TorchCuda {
            sms,
            threads_per_sm,
            ..
        } => format!(
            "{}: {sms} SMs × {threads_per_sm} threads/SM = a wave of {} elements",
            spec.label(),
            thousands(spec.wave().unwrap_or(0))
        ),
        other => other.label(),
    }
}

/// Compare two generations; `cards` names the GPU of A and of B (used for a side whose noise
/// came from the webui's GPU source).
pub fn explain(a: &Generation, b: &Generation, cards: Option<&(RngSpec, RngSpec)>) -> Explanation {
    // Settings table.
    let mut keys: Vec<String> = ORDER.iter().map(|k| k.to_string()).collect();
    for s in a.settings.iter().chain(&b.settings) {
        if !keys.contains(&s.key) {
            keys.push(s.key.clone());
        }
    }
    let rows: Vec<Row> = keys
        .into_iter()
        .filter_map(|key| {
            let (sa, sb) = (a.get(&key), b.get(&key));
            let mark = match (sa, sb) {
                (None, None) => return None,
                (Some(x), Some(y)) if x.canon == y.canon => Mark::Same,
                (Some(_), Some(_)) => Mark::Differs,
                _ => Mark::OneSide,
            };
            Some(Row {
                key,
                a: sa.map(|s| s.shown.clone()),
                b: sb.map(|s| s.shown.clone()),
                mark,
            })
        })
        .collect();
    // Each side's generator, with the cards given.
    let mut noise = Vec::new();
    let mut side = |g: &Generation, card: Option<&RngSpec>, label: &str| -> Option<RngSpec> {
        match (&g.noise, card) {
            (NoiseSource::Gpu, Some(c)) => {
                noise.push(format!("{label}'s card (--cards): {}", wave_text(c)));
                Some(c.clone())
            }
            (NoiseSource::Known(k @ RngSpec::TorchCuda { .. }), Some(c)) if k != c => {
                noise.push(format!(
                    "{label}'s card (--cards, instead of the image's {}): {}",
                    k.label(),
                    wave_text(c)
                ));
                Some(c.clone())
            }
            (NoiseSource::Known(k @ RngSpec::TorchCuda { .. }), _) => {
                noise.push(format!("{label}'s card: {}", wave_text(k)));
                Some(k.clone())
            }
            (NoiseSource::Known(k), Some(c)) => {
                noise.push(format!(
                    "{label}'s noise is not the GPU's ({}): the card {} of --cards is not used",
                    k.label(),
                    c.label()
                ));
                Some(k.clone())
            }
            (NoiseSource::Known(k), None) => Some(k.clone()),
            (NoiseSource::Gpu, None) => None,
        }
    };
    let spec_a = side(a, cards.map(|c| &c.0), "A");
    let spec_b = side(b, cards.map(|c| &c.1), "B");
    let mut verdict = NoiseVerdict::Agree;
    let mut worse = |v: NoiseVerdict| {
        verdict = match (verdict, v) {
            (NoiseVerdict::Differ, _) | (_, NoiseVerdict::Differ) => NoiseVerdict::Differ,
            (NoiseVerdict::Depends, _) | (_, NoiseVerdict::Depends) => NoiseVerdict::Depends,
            _ => NoiseVerdict::Agree,
        }
    };
    let mut fix = Vec::new();
    if let (Some(sa), Some(sb)) = (a.seed, b.seed)
        && sa != sb
    {
        noise.push(format!(
            "the seeds differ ({sa} and {sb}): the noise differs at every size, whatever the generator"
        ));
        worse(NoiseVerdict::Differ);
        fix.push(format!("use one seed on both (A: {sa}, B: {sb})"));
    }
    if let (Some(za), Some(zb)) = (a.size, b.size)
        && za != zb
    {
        noise.push(format!(
            "the sizes differ ({}x{} and {}x{}): the noise tensors have different shapes",
            za.0, za.1, zb.0, zb.1
        ));
        worse(NoiseVerdict::Differ);
        fix.push("use one size on both".into());
    }
    if a.batch > 1 && a.batch_in_one_draw != b.batch_in_one_draw {
        noise.push(
            "ComfyUI draws a batch in one call, the webui each image alone with seed + i: only the first image's noise can agree"
                .into(),
        );
    }
    // The images' size in elements per draw (the larger side's, when they differ).
    let elements = match (a.draw_elements(), b.draw_elements()) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let size_text = |e: u64| {
        let (w, h) = a.size.or(b.size).unwrap_or((0, 0));
        format!("{w}x{h} ({} elements per draw)", thousands(e))
    };
    let mut card_table = Vec::new();
    let mut rng_differs = false;
    match (&spec_a, &spec_b) {
        (Some(x), Some(y)) => match agreement(x, y) {
            Agreement::Always { exact } => noise.push(format!(
                "A and B draw with the same generator{}: the same noise at every size{}",
                match (x.wave(), y.wave()) {
                    (Some(w), Some(_)) if x != y =>
                        format!(" layout (equal waves of {} elements)", thousands(w)),
                    _ => format!(" ({})", x.label()),
                },
                if exact { "" } else { " (to rounding)" }
            )),
            Agreement::UpTo { elements: k, exact } => {
                let (n, m) = square_sizes(k);
                noise.push(format!(
                    "{} and {} {} up to {n}x{n} and differ from {m}x{m} on: the first {} elements of a draw {}, the rest does not",
                    x.label(),
                    y.label(),
                    if exact { "agree" } else { "give the same values" },
                    thousands(k),
                    if exact { "agree bit for bit" } else { "agree to rounding" },
                ));
                match elements {
                    Some(e) if e <= k => noise.push(format!(
                        "the images' {} is within it: the same noise",
                        size_text(e)
                    )),
                    Some(e) => {
                        noise.push(format!(
                            "the images' {} is past it: the noise differs from flat index {} on ({:.0} % of it)",
                            size_text(e),
                            thousands(k),
                            100.0 * (e - k) as f64 / e as f64
                        ));
                        worse(NoiseVerdict::Differ);
                        rng_differs = true;
                    }
                    None => {
                        noise.push("the images' size is unknown".into());
                        worse(NoiseVerdict::Depends);
                    }
                }
            }
            Agreement::Never => {
                noise.push(format!(
                    "{} and {} are different generators: the noise differs at every size",
                    x.label(),
                    y.label()
                ));
                worse(NoiseVerdict::Differ);
                rng_differs = true;
            }
            Agreement::Unknown => {
                noise.push(format!(
                    "{} and {}: sdtrace cannot tell whether these agree",
                    x.label(),
                    y.label()
                ));
                worse(NoiseVerdict::Depends);
            }
        },
        (known, other) => {
            // At least one GPU whose card is unknown.
            let k = known.as_ref().or(other.as_ref());
            match k {
                Some(s @ (RngSpec::TorchCpu | RngSpec::Sdtrace)) => {
                    noise.push(format!(
                        "GPU noise and {} noise never agree, on any card (different generators)",
                        if *s == RngSpec::TorchCpu {
                            "CPU"
                        } else {
                            "sdtrace's"
                        }
                    ));
                    worse(NoiseVerdict::Differ);
                    rng_differs = true;
                }
                _ => {
                    card_table = COMMON_CARDS
                        .iter()
                        .filter_map(|n| presets::find(n))
                        .map(|p| CardRow {
                            name: p.name.into(),
                            sms: p.sms,
                            threads: p.threads_per_sm,
                            wave: p.wave(),
                            max_square: max_square(p.wave()),
                            agrees_at_size: elements.map(|e| e <= p.wave()),
                        })
                        .collect();
                    card_table.sort_by_key(|c| c.wave);
                    let known_wave = k.and_then(RngSpec::wave);
                    match elements {
                        Some(e) => {
                            let all = card_table.iter().all(|c| c.agrees_at_size == Some(true))
                                && known_wave.is_none_or(|w| e <= w)
                                && k.is_none_or(|s| {
                                    !matches!(s, RngSpec::File(_) | RngSpec::Device)
                                });
                            if all {
                                noise.push(format!(
                                    "the card is not named, but at {} every card in the table draws the same noise (cards whose wave is below {} elements would not)",
                                    size_text(e),
                                    thousands(e)
                                ));
                            } else {
                                noise.push(format!(
                                    "the card is not named: at {} two GPUs draw the same noise only when both waves hold at least {} elements or the waves are equal; the table shows each card; name them with --cards A,B",
                                    size_text(e),
                                    thousands(e)
                                ));
                                worse(NoiseVerdict::Depends);
                                rng_differs = true;
                            }
                        }
                        None => {
                            noise.push("the images' size is unknown: the table shows where each card parts".into());
                            worse(NoiseVerdict::Depends);
                        }
                    }
                }
            }
        }
    }
    if rng_differs {
        let comfy = a.tool == Tool::ComfyUi || b.tool == Tool::ComfyUi;
        let webui = [a, b].iter().any(|g| {
            g.tool != Tool::ComfyUi
                && matches!(
                    g.noise,
                    NoiseSource::Gpu | NoiseSource::Known(RngSpec::TorchCuda { .. })
                )
        });
        if comfy {
            fix.push("ComfyUI already draws the noise on the CPU: set the webui's generator to CPU (Settings → Sampler parameters → Random number generator source: CPU) and generate again".into());
        } else if webui {
            fix.push("in A1111/Forge: Settings → Sampler parameters → Random number generator source: CPU (or NV, which does not depend on the card), on both machines, and generate again".into());
        } else {
            fix.push(
                "draw the noise with one generator on both (CPU is the one every tool has)".into(),
            );
        }
        fix.push("to record either image with sdtrace: `sdtrace record --from-png IMAGE.png --rng torch-cpu` for the CPU, or `--card NAME` to emulate the GPU that made it".into());
    }
    Explanation {
        tools: (a.tool, b.tool),
        rows,
        notes: (a.notes.clone(), b.notes.clone()),
        sources: (a.noise_how.clone(), b.noise_how.clone()),
        noise,
        card_table,
        verdict,
        fix,
    }
}

/// One line, at most `max` characters.
fn cell(v: &str, max: usize) -> String {
    let one = v.replace('\n', " ");
    if one.chars().count() > max {
        format!("{}…", one.chars().take(max - 1).collect::<String>())
    } else {
        one
    }
}

/// Where two long values first differ, for rows the table cuts short.
fn first_difference(a: &str, b: &str) -> Option<String> {
    let i = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let around = |s: &str| {
        let start = i.saturating_sub(10);
        cell(&s.chars().skip(start).collect::<String>(), 30)
    };
    (a.chars().count() > 30 || b.chars().count() > 30).then(|| {
        format!(
            "from character {}: '{}' / '{}'",
            i + 1,
            around(a),
            around(b)
        )
    })
}

/// The explanation as text: the settings table (differing rows marked `≠`, rows only one
/// image gives `?`), each image's notes, the noise prediction, the fix and the result.
pub fn render(e: &Explanation, name_a: &str, name_b: &str) -> String {
    let mut s = String::new();
    let (wa, wb) = (30usize, 30usize);
    let _ = writeln!(
        s,
        "A: {name_a} ({})\nB: {name_b} ({})\n",
        e.tools.0.name(),
        e.tools.1.name()
    );
    let _ = writeln!(s, "  {:<20} {:<wa$} {:<wb$}", "setting", "A", "B");
    for r in &e.rows {
        let mark = match r.mark {
            Mark::Same => ' ',
            Mark::Differs => '≠',
            Mark::OneSide => '?',
        };
        let show = |v: &Option<String>, w: usize| v.as_deref().map_or("—".into(), |v| cell(v, w));
        let _ = writeln!(
            s,
            "{mark} {:<20} {:<wa$} {}",
            cell(&r.key, 20),
            show(&r.a, wa),
            show(&r.b, wb)
        );
        if r.mark == Mark::Differs
            && let (Some(a), Some(b)) = (&r.a, &r.b)
            && let Some(d) = first_difference(a, b)
        {
            let _ = writeln!(s, "  {:<20} {d}", "");
        }
    }
    let _ = writeln!(
        s,
        "(≠ differs, ? only one image says; {} differing)",
        e.differing()
    );
    for (label, notes) in [("A", &e.notes.0), ("B", &e.notes.1)] {
        for n in notes {
            let _ = writeln!(s, "note ({label}): {n}");
        }
    }
    let _ = writeln!(s, "\nnoise:\n  A: {}\n  B: {}", e.sources.0, e.sources.1);
    for line in &e.noise {
        let _ = writeln!(s, "  {line}");
    }
    if !e.card_table.is_empty() {
        let _ = writeln!(
            s,
            "\n  {:<10} {:>15} {:>9}  {:<12} {:<12} at the images' size",
            "card", "SMs × threads", "wave", "agrees up to", "differs from"
        );
        for c in &e.card_table {
            let n = c.max_square;
            let _ = writeln!(
                s,
                "  {:<10} {:>15} {:>9}  {:<12} {:<12} {}",
                c.name,
                format!("{} × {}", c.sms, c.threads),
                thousands(c.wave),
                format!("{n}x{n}"),
                format!("{m}x{m}", m = n + 8),
                match c.agrees_at_size {
                    Some(true) => "the same as every larger card".to_string(),
                    Some(false) => format!("its own from index {}", thousands(c.wave)),
                    None => "?".to_string(),
                }
            );
        }
        let _ = writeln!(
            s,
            "  (one image per draw; larger cards and the webui's NV draw the same noise up to a card's wave)"
        );
    }
    if !e.fix.is_empty() {
        let _ = writeln!(s, "\nthe fix:");
        for f in &e.fix {
            let _ = writeln!(s, "  - {f}");
        }
    }
    let noise = match e.verdict {
        NoiseVerdict::Agree => "the noise agrees",
        NoiseVerdict::Differ => "the noise differs",
        NoiseVerdict::Depends => "the noise may differ (depends on the cards)",
    };
    let settings = match e.differing() {
        0 => "the settings agree".to_string(),
        1 => "1 setting differs".to_string(),
        n => format!("{n} settings differ"),
    };
    let _ = writeln!(s, "\nresult: {settings}; {noise}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A1111: &str = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1744694513, Size: 832x832, Model hash: 2700c435, Model: anything-v3, Version: v1.10.1";

    fn comfy(seed: u64, w: u32) -> String {
        serde_json::json!({
            "3": {"class_type": "KSampler", "inputs": {
                "seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "dpmpp_2m",
                "scheduler": "karras", "denoise": 1.0, "model": ["10", 0],
                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd/Anything-V3.safetensors"}},
            "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 0.8, "model": ["4", 0], "clip": ["4", 1]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": w, "height": w, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["11", 0], "clip": ["12", 0]}},
            "11": {"class_type": "PrimitiveString", "inputs": {"value": "a cat"}},
            "12": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        })
        .to_string()
    }

    #[test]
    fn webui_infotext_settings_and_source() {
        let g = from_infotext(A1111).unwrap();
        assert_eq!(g.tool, Tool::Webui);
        assert_eq!(g.noise, NoiseSource::Gpu);
        assert!(g.noise_how.contains("no RNG field"), "{}", g.noise_how);
        assert_eq!(g.get("Sampler").unwrap().canon, "dpmpp-2m-karras");
        assert_eq!(g.get("Model").unwrap().canon, "anything-v3");
        assert_eq!(g.get("Version").unwrap().shown, "v1.10.1");
        assert_eq!(g.draw_elements(), Some(43_264));
        let cpu = from_infotext(&format!("{A1111}, RNG: CPU")).unwrap();
        assert_eq!(cpu.noise, NoiseSource::Known(RngSpec::TorchCpu));
        let ours = from_infotext(&format!(
            "{A1111}, sdtrace RNG: \"torch-cuda:t4 (the webui's GPU source, as drawn on a Tesla T4)\", Recorded by: sdtrace 0.1.0"
        ))
        .unwrap();
        assert_eq!(ours.tool, Tool::Sdtrace);
        assert_eq!(
            ours.noise,
            NoiseSource::Known(RngSpec::parse_card("--card", "t4").unwrap())
        );
        assert!(ours.get("Recorded by").is_none());
    }

    #[test]
    fn comfy_graph_is_followed_through_links() {
        let g = from_comfy_prompt(&comfy(1_744_694_513, 832)).unwrap();
        assert_eq!(g.tool, Tool::ComfyUi);
        assert_eq!(g.noise, NoiseSource::Known(RngSpec::TorchCpu));
        assert_eq!(g.seed, Some(1_744_694_513));
        assert_eq!(g.size, Some((832, 832)));
        assert_eq!(g.get("Prompt").unwrap().shown, "a cat");
        assert_eq!(g.get("Negative prompt").unwrap().shown, "blurry");
        assert_eq!(g.get("Clip skip").unwrap().canon, "2");
        assert_eq!(g.get("Model").unwrap().canon, "anything-v3");
        assert_eq!(g.get("LoRA").unwrap().shown, "detail:0.8");
        assert_eq!(g.get("Sampler").unwrap().canon, "dpmpp-2m-karras");
        assert_eq!(g.get("CFG scale").unwrap().canon, "7");
        assert!(g.get("Denoising strength").is_none());
        assert!(g.notes.is_empty(), "{:?}", g.notes);
        // An unknown graph gives what can be found, and says so.
        let odd = from_comfy_prompt(
            r#"{"1": {"class_type": "SamplerCustom", "inputs": {}}, "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}}"#,
        )
        .unwrap();
        assert_eq!(odd.get("Model").unwrap().canon, "x");
        assert!(odd.notes[0].contains("no KSampler"), "{:?}", odd.notes);
        assert!(from_comfy_prompt("[1, 2]").is_err());
        assert!(from_comfy_prompt("{").is_err());
        // The editor workflow, by widget position.
        let wf = serde_json::json!({
            "nodes": [
                {"id": 3, "type": "KSampler", "widgets_values": [42, "fixed", 25, 6.5, "euler", "normal", 1.0],
                 "inputs": [{"name": "positive", "link": 1}, {"name": "latent_image", "link": 2}]},
                {"id": 5, "type": "EmptyLatentImage", "widgets_values": [512, 768, 2]},
                {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["a dog"]},
            ],
            "links": [[1, 6, 0, 3, 1, "CONDITIONING"], [2, 5, 0, 3, 3, "LATENT"]],
        })
        .to_string();
        let w = from_comfy_workflow(&wf).unwrap();
        assert_eq!((w.seed, w.size, w.batch), (Some(42), Some((512, 768)), 2));
        assert_eq!(w.get("Sampler").unwrap().canon, "euler");
        assert_eq!(w.get("Prompt").unwrap().shown, "a dog");
        assert_eq!(w.draw_elements(), Some(2 * 4 * 96 * 64));
    }

    #[test]
    fn two_gpus_with_cards_part_at_their_smaller_wave() {
        let a = from_infotext(A1111).unwrap();
        let b = a.clone();
        let cards = (
            RngSpec::parse_card("--cards", "gtx1070").unwrap(),
            RngSpec::parse_card("--cards", "t4").unwrap(),
        );
        let e = explain(&a, &b, Some(&cards));
        assert_eq!(e.differing(), 0);
        assert_eq!(e.verdict, NoiseVerdict::Differ);
        assert_eq!(e.status(), ExitStatus::Diverged);
        let text = render(&e, "a.png", "b.png");
        assert!(
            text.contains("gtx1070 and t4 agree up to 696x696 and differ from 704x704"),
            "{text}"
        );
        assert!(
            text.contains("gtx1070: 15 SMs × 2048 threads/SM = a wave of 30 720 elements"),
            "{text}"
        );
        assert!(
            text.contains("is past it: the noise differs from flat index 30 720"),
            "{text}"
        );
        assert!(
            text.contains("Random number generator source: CPU (or NV"),
            "{text}"
        );
        assert!(
            text.contains("result: the settings agree; the noise differs"),
            "{text}"
        );
        // At 640×640 they agree: exit 0.
        let small = from_infotext(&A1111.replace("832x832", "640x640")).unwrap();
        let e = explain(&small, &small, Some(&cards));
        assert_eq!(
            (e.verdict, e.status()),
            (NoiseVerdict::Agree, ExitStatus::Success)
        );
        // Equal waves agree at every size.
        let same = (
            RngSpec::parse_card("--cards", "gtx1070").unwrap(),
            RngSpec::parse_card("--cards", "rtx2060").unwrap(),
        );
        assert_eq!(explain(&a, &b, Some(&same)).verdict, NoiseVerdict::Agree);
    }

    #[test]
    fn unknown_cards_give_the_table_and_cpu_never_agrees_with_gpu() {
        let a = from_infotext(A1111).unwrap();
        let e = explain(&a, &a, None);
        assert_eq!(e.verdict, NoiseVerdict::Depends);
        assert_eq!(e.card_table.len(), COMMON_CARDS.len());
        let t4 = e.card_table.iter().find(|c| c.name == "t4").unwrap();
        assert_eq!(
            (t4.wave, t4.max_square, t4.agrees_at_size),
            (40_960, 808, Some(false))
        );
        let text = render(&e, "a.png", "b.png");
        assert!(
            text.contains("gtx1070          15 × 2048    30 720  696x696      704x704      its own from index 30 720"),
            "{text}"
        );
        assert!(text.contains("--cards A,B"), "{text}");
        // 512×512: every common card draws the same noise.
        let small = from_infotext(&A1111.replace("832x832", "512x512")).unwrap();
        assert_eq!(explain(&small, &small, None).verdict, NoiseVerdict::Agree);
        // The webui's GPU against ComfyUI's CPU: never, and the fix is the webui's CPU source.
        let c = from_comfy_prompt(&comfy(1_744_694_513, 832)).unwrap();
        let e = explain(&a, &c, None);
        assert_eq!(e.verdict, NoiseVerdict::Differ);
        let text = render(&e, "webui.png", "comfy.png");
        assert!(
            text.contains("GPU noise and CPU noise never agree"),
            "{text}"
        );
        assert!(
            text.contains("ComfyUI already draws the noise on the CPU"),
            "{text}"
        );
        assert!(text.contains("? Version"), "{text}");
        assert!(text.contains("? LoRA"), "{text}");
        assert!(text.contains("≠ Clip skip"), "{text}");
        // The webui on the CPU against ComfyUI: the same generator.
        let w = from_infotext(&format!("{A1111}, RNG: CPU, Clip skip: 2")).unwrap();
        let e = explain(&w, &c, None);
        assert_eq!(e.verdict, NoiseVerdict::Agree);
        assert_eq!(e.differing(), 0, "{:?}", e.rows);
        assert_eq!(e.status(), ExitStatus::Success);
        // Seeds that differ are named, with the fix.
        let other = from_comfy_prompt(&comfy(7, 832)).unwrap();
        let e = explain(&w, &other, None);
        assert_eq!(e.verdict, NoiseVerdict::Differ);
        assert!(e.fix[0].contains("one seed"), "{:?}", e.fix);
    }

    #[test]
    fn long_values_show_where_they_differ() {
        assert_eq!(
            first_difference(
                "a very long prompt about a house on a hill, blue sky",
                "a very long prompt about a house on a hill, red sky"
            )
            .unwrap(),
            "from character 45: 'n a hill, blue sky' / 'n a hill, red sky'"
        );
        assert_eq!(first_difference("short", "shirt"), None);
        assert_eq!(thousands(1_234_567), "1 234 567");
        assert_eq!(model_canon("C:\\models\\Anything-V3.CKPT"), "anything-v3");
    }
}
