//! The LDM module map: the one table that says which module of an LDM/CompVis-structured Stable
//! Diffusion model (what AUTOMATIC1111, Forge and ComfyUI run, and what single-file checkpoints
//! are named after: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`, and
//! SDXL's `conditioner.embedders.0/1.*`) is which sdtrace key (diffusers names: `unet.*`,
//! `vae.*`, `text_encoder.*`, `text_encoder_2.*`), for SD 1.x, 2.x and SDXL (base) and any model
//! of the same structure (sdtrace's tiny synthetic ones).
//!
//! [`LdmMap::new`] builds the table ([`Entry`] rows) from an [`LdmArch`] — the few numbers the
//! names depend on: the UNet's levels and which have cross-attention, its layers per level,
//! whether it has SDXL's `label_emb` (diffusers' `add_embedding`), the VAE's levels and layers,
//! the text tower(s). Transformer depths do not enter: a UNet attention's insides have the same
//! names on both sides. Three lookups read the same rows: [`LdmMap::to_ldm`]
//! (sdtrace key → LDM module path), [`LdmMap::from_ldm`] (the reverse; hosts hook the modules
//! it names) and [`LdmMap::weight`] (a diffusers weight name → the key it is stored under in a
//! single-file checkpoint, which `sdtrace`'s checkpoint loader uses). A row maps a module and,
//! by its [`Inner`] rule, what lies inside it: the same names (UNet attentions, OpenAI CLIP),
//! a short list of renamed children (resnets: `conv1` ↔ `in_layers.2`; OpenCLIP's fused
//! `in_proj` holds q, k and v as row blocks; the VAE attention stores linear weights as 1×1
//! convolutions; SDXL's OpenCLIP `text_projection` is a matrix applied as `x @ P`, so the
//! `Linear` weight is its transpose), or nothing (level outputs such as `unet.down_blocks.1` ↔
//! `input_blocks.6`, whose children have rows of their own). Lookups take the row with the
//! longest matching prefix, on whole dotted segments.
//!
//! The index arithmetic (documented in `research/domain-facts.md` §5.1), with P = layers per
//! level + 1: `down_blocks.b.{resnets|attentions}.l` ↔ `input_blocks.(1+Pb+l).{0|1}`,
//! `down_blocks.b.downsamplers.0` ↔ `input_blocks.(P(b+1)).0` (the level's output is
//! `input_blocks.(P(b+1))`, the last level's is `input_blocks.(Pb+P−1)`), `mid_block` ↔
//! `middle_block.{0,1,2}`, `up_blocks.b.{resnets|attentions}.l` ↔
//! `output_blocks.(Pb+l).{0|1}`, the up-sampler after the level's attention (`.2`) or resnet
//! (`.1`) in its last output block `output_blocks.(Pb+P−1)`, which is also the level's output;
//! the VAE decoder's levels run the other way (`decoder.up_blocks.i` ↔ `decoder.up.(n−1−i)`).
//! LDM's VAE level and mid containers (`decoder.up.i`, `decoder.mid`) have no `forward` of
//! their own, so a hook there never fires; they are in the table for the names only.

use std::collections::{BTreeMap, BTreeSet};

/// Where the UNet lives in an LDM model (and checkpoint).
pub const UNET_ROOT: &str = "model.diffusion_model";
/// Where the VAE lives.
pub const VAE_ROOT: &str = "first_stage_model";
/// SD 1.x's text encoder (HF `CLIPTextModel` names inside).
pub const OPENAI_CLIP_ROOT: &str = "cond_stage_model.transformer.text_model";
/// The same in checkpoints saved before transformers 4.x added the `text_model` level.
pub const OPENAI_CLIP_OLD_ROOT: &str = "cond_stage_model.transformer";
/// SD 2.x's text encoder (OpenCLIP names inside).
pub const OPENCLIP_ROOT: &str = "cond_stage_model.model";
/// SDXL's first text encoder, CLIP ViT-L (HF `CLIPTextModel` names inside): `text_encoder`.
pub const SDXL_CLIP_ROOT: &str = "conditioner.embedders.0.transformer.text_model";
/// The same as hosts with transformers 5 name it (no `text_model` level).
pub const SDXL_CLIP_OLD_ROOT: &str = "conditioner.embedders.0.transformer";
/// SDXL's second text encoder, OpenCLIP ViT-bigG with its projection: `text_encoder_2`.
pub const SDXL_OPENCLIP_ROOT: &str = "conditioner.embedders.1.model";
/// The SDXL refiner's only text encoder (OpenCLIP ViT-bigG), which sdtrace does not support.
pub const SDXL_REFINER_OPENCLIP_ROOT: &str = "conditioner.embedders.0.model";

/// HF CLIP roots with and without the `text_model` level, per family.
const OPENAI_ROOT_PAIRS: [(&str, &str); 2] = [
    (OPENAI_CLIP_ROOT, OPENAI_CLIP_OLD_ROOT),
    (SDXL_CLIP_ROOT, SDXL_CLIP_OLD_ROOT),
];

/// Which text encoder a model has, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextTower {
    /// OpenAI CLIP in HF `CLIPTextModel` names under `root`: [`OPENAI_CLIP_ROOT`] or
    /// [`OPENAI_CLIP_OLD_ROOT`] (SD 1.x), [`SDXL_CLIP_ROOT`] (SDXL's first encoder).
    OpenAi { root: &'static str },
    /// OpenCLIP under [`OPENCLIP_ROOT`] (SD 2.x): fused attention projections, `resblocks`.
    OpenClip,
}

/// What the names of an SD-structured model depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdmArch {
    /// Per UNet level, from the top: whether it has cross-attention (SD: true, true, true, false).
    pub unet_attention: Vec<bool>,
    /// Resnets per down level (SD: 2); up levels have one more.
    pub unet_layers_per_block: usize,
    /// SDXL's added conditioning: LDM's `label_emb.0` is diffusers' `add_embedding`.
    pub unet_label_emb: bool,
    /// The VAE's levels (SD: 4).
    pub vae_levels: usize,
    /// Resnets per encoder level (SD: 2); decoder levels have one more.
    pub vae_layers_per_block: usize,
    pub text: TextTower,
    /// Text-encoder layers the model runs (SD 1.x: 12; SD 2.x: 23 of OpenCLIP's 24).
    pub text_layers: usize,
    /// SDXL's second text encoder (OpenCLIP under [`SDXL_OPENCLIP_ROOT`], every layer used, with
    /// its `text_projection`): its layers (SDXL: 32); `None` without one.
    pub text2_layers: Option<usize>,
}

impl LdmArch {
    /// SD 1.x (and the SD 1.5-sized synthetic model).
    pub fn sd1() -> Self {
        LdmArch {
            unet_attention: vec![true, true, true, false],
            unet_layers_per_block: 2,
            unet_label_emb: false,
            vae_levels: 4,
            vae_layers_per_block: 2,
            text: TextTower::OpenAi {
                root: OPENAI_CLIP_ROOT,
            },
            text_layers: 12,
            text2_layers: None,
        }
    }

    /// SD 2.x (the same UNet and VAE names, OpenCLIP's 23 used layers).
    pub fn sd2() -> Self {
        LdmArch {
            text: TextTower::OpenClip,
            text_layers: 23,
            ..LdmArch::sd1()
        }
    }

    /// SDXL base: three UNet levels, the first without attention, `label_emb`; CLIP ViT-L under
    /// `conditioner.embedders.0` and OpenCLIP ViT-bigG under `conditioner.embedders.1`.
    pub fn sdxl() -> Self {
        LdmArch {
            unet_attention: vec![false, true, true],
            unet_label_emb: true,
            text: TextTower::OpenAi {
                root: SDXL_CLIP_ROOT,
            },
            text2_layers: Some(32),
            ..LdmArch::sd1()
        }
    }

    /// Read the architecture off LDM names: a checkpoint's keys or a host model's
    /// `named_modules()`/`state_dict()` names, rooted as in a checkpoint
    /// (`model.diffusion_model.…`, `first_stage_model.…`, `cond_stage_model.…`,
    /// `conditioner.embedders.N.…`). Each component is read off its own names, and one that is
    /// absent keeps SD's values — SDXL's when the names are SDXL's (a UNet with `label_emb`, or
    /// text towers under `conditioner.embedders`; a host may hook its UNet and its VAE at
    /// different times). `None` when no component is there, when one that is there does not
    /// have this structure, when a UNet with a label embedding comes with an SD 1.x/2.x text
    /// tower (a class-conditioned model such as SD 2.x unCLIP), or for the SDXL refiner's text
    /// tower (OpenCLIP under `conditioner.embedders.0.model`); what is unsupported is for the
    /// caller to say.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let names: BTreeSet<&str> = names.into_iter().collect();
        let has = |p: &str| {
            names
                .range(p..)
                .take_while(|n| n.starts_with(p))
                .any(|n| n.len() == p.len() || n.as_bytes()[p.len()] == b'.')
        };
        let indices = |p: &str| -> BTreeSet<usize> {
            let p = format!("{p}.");
            names
                .range(p.as_str()..)
                .take_while(|n| n.starts_with(p.as_str()))
                .filter_map(|n| n[p.len()..].split('.').next()?.parse().ok())
                .collect()
        };
        if has(SDXL_REFINER_OPENCLIP_ROOT) {
            return None;
        }
        let label_emb = has(&format!("{UNET_ROOT}.label_emb"));
        let sdxl = label_emb || has("conditioner.embedders");
        let mut arch = if sdxl {
            LdmArch::sdxl()
        } else {
            LdmArch::sd1()
        };
        let mut found = false;
        if has(UNET_ROOT) {
            let inputs = indices(&format!("{UNET_ROOT}.input_blocks"));
            let last = *inputs.last()?;
            let per = (1..=last)
                .find(|i| has(&format!("{UNET_ROOT}.input_blocks.{i}.0.op")))
                .unwrap_or(last + 1);
            if per < 2
                || !(last + 1).is_multiple_of(per)
                || !has(&format!("{UNET_ROOT}.middle_block"))
            {
                return None;
            }
            arch.unet_attention = (0..(last + 1) / per)
                .map(|b| has(&format!("{UNET_ROOT}.input_blocks.{}.1", 1 + per * b)))
                .collect();
            arch.unet_layers_per_block = per - 1;
            arch.unet_label_emb = label_emb;
            found = true;
        }
        if has(VAE_ROOT) {
            arch.vae_levels = indices(&format!("{VAE_ROOT}.decoder.up")).len();
            let encoder = indices(&format!("{VAE_ROOT}.encoder.down.0.block")).len();
            // A decoder alone (hosts may drop the encoder): its levels hold one more resnet.
            let decoder = indices(&format!("{VAE_ROOT}.decoder.up.0.block")).len();
            arch.vae_layers_per_block = if encoder > 0 {
                encoder
            } else {
                decoder.checked_sub(1)?
            };
            if arch.vae_levels == 0 || arch.vae_layers_per_block == 0 {
                return None;
            }
            found = true;
        }
        let sd_text = [OPENAI_CLIP_ROOT, OPENAI_CLIP_OLD_ROOT]
            .into_iter()
            .any(|r| has(&format!("{r}.encoder.layers")))
            || has(&format!("{OPENCLIP_ROOT}.transformer.resblocks"));
        if sdxl && sd_text {
            return None;
        }
        let openai = [
            OPENAI_CLIP_ROOT,
            OPENAI_CLIP_OLD_ROOT,
            SDXL_CLIP_ROOT,
            SDXL_CLIP_OLD_ROOT,
        ]
        .into_iter()
        .find(|r| has(&format!("{r}.encoder.layers")));
        if let Some(root) = openai {
            arch.text = TextTower::OpenAi { root };
            arch.text_layers = indices(&format!("{root}.encoder.layers")).len();
            found = true;
        } else if has(&format!("{OPENCLIP_ROOT}.transformer.resblocks")) {
            let n = indices(&format!("{OPENCLIP_ROOT}.transformer.resblocks")).len();
            arch.text = TextTower::OpenClip;
            arch.text_layers = n.checked_sub(1).filter(|n| *n > 0)?;
            found = true;
        }
        if has(&format!("{SDXL_OPENCLIP_ROOT}.transformer.resblocks")) {
            let n = indices(&format!("{SDXL_OPENCLIP_ROOT}.transformer.resblocks")).len();
            arch.text2_layers = Some(n);
            found = true;
        }
        found.then_some(arch)
    }
}

/// How a row's children are named on the two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// The same names inside (UNet attentions, convolutions, OpenAI CLIP).
    Same,
    /// Only the listed children, renamed.
    Rules(&'static [Rule]),
    /// Nothing maps through this row: its children have rows of their own (level outputs).
    Opaque,
}

/// One renamed child: sdtrace's relative name, the LDM one, and what kind of thing it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub ours: &'static str,
    pub ldm: &'static str,
    pub kind: RuleKind,
}

/// What a [`Rule`] renames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// A module (and everything in it, under the same names).
    Module,
    /// A linear module stored as a 1×1 convolution: its `weight` is `[a, b, 1, 1]` in LDM.
    Module1x1,
    /// Part `i` of 3 (q, k, v) of a fused projection: `weight`/`bias` are rows of LDM's
    /// `{ldm}_weight`/`{ldm}_bias`; no module of its own.
    Fused(usize),
    /// A parameter, not a module: the full relative weight name on each side.
    Param,
    /// A parameter stored transposed: LDM's matrix `P` applied as `x @ P` (OpenCLIP's
    /// `text_projection`) is our linear weight `Pᵀ`.
    ParamTransposed,
}

const fn rule(ours: &'static str, ldm: &'static str) -> Rule {
    Rule {
        ours,
        ldm,
        kind: RuleKind::Module,
    }
}

const UNET_RESNET: &[Rule] = &[
    rule("norm1", "in_layers.0"),
    rule("conv1", "in_layers.2"),
    rule("time_emb_proj", "emb_layers.1"),
    rule("norm2", "out_layers.0"),
    rule("conv2", "out_layers.3"),
    rule("conv_shortcut", "skip_connection"),
];
const TIME_EMBED: &[Rule] = &[rule("linear_1", "0"), rule("linear_2", "2")];
/// The UNet's down-samplers: `conv` is LDM's `op`.
const DOWNSAMPLER: &[Rule] = &[rule("conv", "op")];
/// Up-samplers (UNet and VAE) and the VAE's down-samplers: `conv` on both sides.
const RESAMPLE_CONV: &[Rule] = &[rule("conv", "conv")];
const VAE_SIDE: &[Rule] = &[
    rule("conv_in", "conv_in"),
    rule("conv_out", "conv_out"),
    rule("conv_norm_out", "norm_out"),
];
const VAE_RESNET: &[Rule] = &[
    rule("norm1", "norm1"),
    rule("conv1", "conv1"),
    rule("norm2", "norm2"),
    rule("conv2", "conv2"),
    rule("conv_shortcut", "nin_shortcut"),
];
const fn squeezed(ours: &'static str, ldm: &'static str) -> Rule {
    Rule {
        ours,
        ldm,
        kind: RuleKind::Module1x1,
    }
}
/// diffusers' current names first (the reverse lookup takes the first), then its legacy ones.
const VAE_ATTENTION: &[Rule] = &[
    rule("group_norm", "norm"),
    squeezed("to_q", "q"),
    squeezed("to_k", "k"),
    squeezed("to_v", "v"),
    squeezed("to_out.0", "proj_out"),
    squeezed("query", "q"),
    squeezed("key", "k"),
    squeezed("value", "v"),
    squeezed("proj_attn", "proj_out"),
];
const OPENCLIP_ROOT_RULES: &[Rule] = &[
    rule("embeddings.token_embedding", "token_embedding"),
    Rule {
        ours: "embeddings.position_embedding.weight",
        ldm: "positional_embedding",
        kind: RuleKind::Param,
    },
    rule("final_layer_norm", "ln_final"),
];
/// SDXL's second encoder: the same, and the projection (our `text_projection.weight`, HF's
/// `CLIPTextModelWithProjection` name, outside its `text_model`).
const OPENCLIP_PROJECTED_ROOT_RULES: &[Rule] = &[
    rule("embeddings.token_embedding", "token_embedding"),
    Rule {
        ours: "embeddings.position_embedding.weight",
        ldm: "positional_embedding",
        kind: RuleKind::Param,
    },
    rule("final_layer_norm", "ln_final"),
    Rule {
        ours: "text_projection.weight",
        ldm: "text_projection",
        kind: RuleKind::ParamTransposed,
    },
];
const OPENCLIP_LAYER: &[Rule] = &[
    rule("layer_norm1", "ln_1"),
    rule("layer_norm2", "ln_2"),
    rule("self_attn", "attn"),
    rule("self_attn.out_proj", "attn.out_proj"),
    Rule {
        ours: "self_attn.q_proj",
        ldm: "attn.in_proj",
        kind: RuleKind::Fused(0),
    },
    Rule {
        ours: "self_attn.k_proj",
        ldm: "attn.in_proj",
        kind: RuleKind::Fused(1),
    },
    Rule {
        ours: "self_attn.v_proj",
        ldm: "attn.in_proj",
        kind: RuleKind::Fused(2),
    },
    rule("mlp.fc1", "mlp.c_fc"),
    rule("mlp.fc2", "mlp.c_proj"),
];

/// One row of the table: an sdtrace key, the LDM module path, and how their children map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ours: String,
    pub ldm: String,
    pub inner: Inner,
}

/// Where a diffusers-named weight is stored in a single-file checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightKey {
    pub key: String,
    /// Part `i` of 3 (q, k, v) of the first dimension of a fused tensor.
    pub fused: Option<usize>,
    /// Stored as a 1×1 convolution `[a, b, 1, 1]`, read as a linear weight `[a, b]`.
    pub squeeze_1x1: bool,
    /// Stored transposed (`[b, a]` for our `[a, b]`).
    pub transpose: bool,
}

/// The table for one architecture, indexed both ways.
#[derive(Clone, Debug)]
pub struct LdmMap {
    entries: Vec<Entry>,
    by_ours: BTreeMap<String, usize>,
    by_ldm: BTreeMap<String, usize>,
    /// Where the OpenAI text tower's rows are rooted, if the map has one.
    openai_root: Option<&'static str>,
}

/// `a` == `b`, or `a` starts with `b` followed by a dot: the rest after the dot.
fn strip_segments<'a>(a: &'a str, b: &str) -> Option<&'a str> {
    if b.is_empty() {
        return Some(a);
    }
    let rest = a.strip_prefix(b)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('.')
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        _ => format!("{a}.{b}"),
    }
}

/// The longest segment prefix of `path` that `index` holds, and the rest after it.
fn longest<'a>(index: &BTreeMap<String, usize>, path: &'a str) -> Option<(usize, &'a str)> {
    let mut end = path.len();
    loop {
        if let Some(&i) = index.get(&path[..end]) {
            let rest = path.get(end + 1..).unwrap_or("");
            return Some((i, rest));
        }
        end = path[..end].rfind('.')?;
    }
}

/// The rule whose `side` name is the longest segment prefix of `rest`, and what follows it.
fn find_rule<'a>(
    rules: &'static [Rule],
    rest: &'a str,
    side: impl Fn(&Rule) -> &'static str,
) -> Option<(&'static Rule, &'a str)> {
    rules
        .iter()
        .filter_map(|r| strip_segments(rest, side(r)).map(|x| (r, x)))
        .fold(None, |best: Option<(&Rule, &str)>, (r, x)| match best {
            Some((b, _)) if side(b).len() >= side(r).len() => best,
            _ => Some((r, x)),
        })
}

/// Which side of the table a path is named on: sdtrace's (diffusers') keys or the LDM paths.
#[derive(Clone, Copy)]
enum Side {
    Ours,
    Ldm,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Ours => Side::Ldm,
            Side::Ldm => Side::Ours,
        }
    }

    fn of_entry(self, e: &Entry) -> &str {
        match self {
            Side::Ours => &e.ours,
            Side::Ldm => &e.ldm,
        }
    }

    fn of_rule(self, r: &Rule) -> &'static str {
        match self {
            Side::Ours => r.ours,
            Side::Ldm => r.ldm,
        }
    }
}

impl LdmMap {
    /// The table for `arch`.
    pub fn new(arch: &LdmArch) -> Self {
        let mut rows = Vec::new();
        unet_rows(arch, &mut rows);
        vae_rows(arch, &mut rows);
        text_rows(arch.text, arch.text_layers, &mut rows);
        if let Some(layers) = arch.text2_layers {
            openclip_rows(
                "text_encoder_2",
                SDXL_OPENCLIP_ROOT,
                layers,
                OPENCLIP_PROJECTED_ROOT_RULES,
                &mut rows,
            );
        }
        let n = rows.len();
        LdmMap::from_rows(rows, n)
    }

    /// SD 1.x and 2.x at once: their UNet and VAE names are the same and their text towers live
    /// under different roots, so [`LdmMap::from_ldm`] answers for either; [`LdmMap::to_ldm`]
    /// gives SD 1.x's text-encoder paths.
    pub fn sd() -> Self {
        let sd2 = LdmArch::sd2();
        let mut rows = LdmMap::new(&LdmArch::sd1()).entries;
        let sd1 = rows.len();
        text_rows(sd2.text, sd2.text_layers, &mut rows);
        LdmMap::from_rows(rows, sd1)
    }

    /// Index `entries`; only the first `forward` rows answer [`LdmMap::to_ldm`] and
    /// [`LdmMap::weight`].
    fn from_rows(entries: Vec<Entry>, forward: usize) -> Self {
        let mut by_ours = BTreeMap::new();
        let mut by_ldm = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            if i < forward {
                by_ours.entry(e.ours.clone()).or_insert(i);
            }
            by_ldm.entry(e.ldm.clone()).or_insert(i);
        }
        let openai_root = entries.iter().find_map(|e| {
            OPENAI_ROOT_PAIRS
                .into_iter()
                .flat_map(|(a, b)| [a, b])
                .find(|r| e.ours == "text_encoder" && e.ldm == *r)
        });
        LdmMap {
            entries,
            by_ours,
            by_ldm,
            openai_root,
        }
    }

    /// The rows, UNet then VAE then text encoder.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The LDM module path of sdtrace key `key` (`unet.mid_block.attentions.0` →
    /// `model.diffusion_model.middle_block.1`), or `None` if it has none (a fused projection, a
    /// pipeline point such as `noise.initial`, an unknown key).
    pub fn to_ldm(&self, key: &str) -> Option<String> {
        self.translate(key, Side::Ours)
    }

    /// The sdtrace key of LDM module path `path`, or `None`. Rooted as in a checkpoint
    /// (`model.diffusion_model.input_blocks.4.1`, `first_stage_model.decoder.up.1`,
    /// `cond_stage_model.transformer.text_model.encoder.layers.3`, also without the
    /// `text_model` level as transformers 5 names it; SDXL's `conditioner.embedders.0/1.…`); also
    /// taken: ComfyUI's `diffusion_model.…`, paths inside the UNet (`middle_block.1`,
    /// `output_blocks.5.2`, `time_embed`, `out.0`), and the webui's wrapped text encoders
    /// (`cond_stage_model.wrapped.…`, `conditioner.embedders.N.wrapped.…`).
    pub fn from_ldm(&self, path: &str) -> Option<String> {
        let mut path = normalize(path);
        // HF CLIP with or without its `text_model` level (transformers 5 dropped it from
        // `CLIPTextModel`): re-rooted where this map has the OpenAI tower (of the same family).
        if let Some(root) = self.openai_root
            && let Some((with, without)) = OPENAI_ROOT_PAIRS
                .into_iter()
                .find(|(a, b)| root == *a || root == *b)
        {
            let rest = strip_segments(&path, with).or_else(|| strip_segments(&path, without));
            if let Some(rest) = rest {
                path = join(root, rest);
            }
        }
        self.translate(&path, Side::Ldm)
    }

    /// The module path `path`, named on side `from`, named on the other side: the entry with
    /// the longest matching prefix, then its inner rules (modules only; a fused or opaque part
    /// has no module of its own on the other side).
    fn translate(&self, path: &str, from: Side) -> Option<String> {
        let index = match from {
            Side::Ours => &self.by_ours,
            Side::Ldm => &self.by_ldm,
        };
        let to = from.other();
        let (i, rest) = longest(index, path)?;
        let e = &self.entries[i];
        if rest.is_empty() {
            return Some(to.of_entry(e).to_string());
        }
        match e.inner {
            Inner::Same => Some(join(to.of_entry(e), rest)),
            Inner::Opaque => None,
            Inner::Rules(rules) => {
                let (r, x) = find_rule(rules, rest, |r| from.of_rule(r))?;
                matches!(r.kind, RuleKind::Module | RuleKind::Module1x1)
                    .then(|| join(&join(to.of_entry(e), to.of_rule(r)), x))
            }
        }
    }

    /// Where the diffusers-named weight `name` (with its component: `unet.conv_in.weight`,
    /// `vae.decoder.mid_block.attentions.0.to_q.weight`, `text_encoder.encoder.layers.0.…`) is
    /// stored in a single-file checkpoint, or `None` if nowhere.
    pub fn weight(&self, name: &str) -> Option<WeightKey> {
        let (i, rest) = longest(&self.by_ours, name)?;
        let e = &self.entries[i];
        let plain = |key| WeightKey {
            key,
            fused: None,
            squeeze_1x1: false,
            transpose: false,
        };
        if rest.is_empty() {
            return None;
        }
        match e.inner {
            Inner::Same => Some(plain(join(&e.ldm, rest))),
            Inner::Opaque => None,
            Inner::Rules(rules) => {
                let (r, x) = find_rule(rules, rest, |r| r.ours)?;
                let base = join(&e.ldm, r.ldm);
                match r.kind {
                    RuleKind::Module if !x.is_empty() => Some(plain(join(&base, x))),
                    RuleKind::Module1x1 if !x.is_empty() => Some(WeightKey {
                        squeeze_1x1: x == "weight",
                        ..plain(join(&base, x))
                    }),
                    RuleKind::Fused(part) if x == "weight" || x == "bias" => Some(WeightKey {
                        fused: Some(part),
                        ..plain(format!("{base}_{x}"))
                    }),
                    RuleKind::Param if x.is_empty() => Some(plain(base)),
                    RuleKind::ParamTransposed if x.is_empty() => Some(WeightKey {
                        transpose: true,
                        ..plain(base)
                    }),
                    _ => None,
                }
            }
        }
    }
}

/// A host's module path in checkpoint rooting (see [`LdmMap::from_ldm`]).
fn normalize(path: &str) -> String {
    const UNET_TOP: [&str; 5] = [
        "input_blocks",
        "middle_block",
        "output_blocks",
        "time_embed",
        "out",
    ];
    if path.starts_with("diffusion_model.") || path == "diffusion_model" {
        return format!("model.{path}");
    }
    let first = path.split('.').next().unwrap_or("");
    if UNET_TOP.contains(&first) {
        return format!("{UNET_ROOT}.{path}");
    }
    if let Some(rest) = strip_segments(path, "cond_stage_model.wrapped") {
        return join("cond_stage_model", rest);
    }
    // The webui wraps each SDXL embedder as `conditioner.embedders.N.wrapped`.
    let segments: Vec<&str> = path.split('.').collect();
    if let ["conditioner", "embedders", n, "wrapped", ..] = segments.as_slice() {
        let mut out = vec!["conditioner", "embedders", *n];
        out.extend(&segments[4..]);
        return out.join(".");
    }
    path.to_string()
}

fn push(rows: &mut Vec<Entry>, ours: String, ldm: String, inner: Inner) {
    rows.push(Entry { ours, ldm, inner });
}

fn unet_rows(arch: &LdmArch, rows: &mut Vec<Entry>) {
    let (u, l) = ("unet", UNET_ROOT);
    let layers = arch.unet_layers_per_block;
    let per = layers + 1;
    let n = arch.unet_attention.len();
    let mut add = |ours: &str, ldm: &str, inner| push(rows, join(u, ours), join(l, ldm), inner);
    add("time_embedding", "time_embed", Inner::Rules(TIME_EMBED));
    if arch.unet_label_emb {
        // LDM's `label_emb` is a Sequential around the Sequential(linear, SiLU, linear).
        add("add_embedding", "label_emb.0", Inner::Rules(TIME_EMBED));
    }
    add("conv_in", "input_blocks.0.0", Inner::Same);
    for (b, &attn) in arch.unet_attention.iter().enumerate() {
        for j in 0..layers {
            let k = 1 + per * b + j;
            add(
                &format!("down_blocks.{b}.resnets.{j}"),
                &format!("input_blocks.{k}.0"),
                Inner::Rules(UNET_RESNET),
            );
            if attn {
                add(
                    &format!("down_blocks.{b}.attentions.{j}"),
                    &format!("input_blocks.{k}.1"),
                    Inner::Same,
                );
            }
        }
        let out = if b + 1 < n {
            add(
                &format!("down_blocks.{b}.downsamplers.0"),
                &format!("input_blocks.{}.0", per * (b + 1)),
                Inner::Rules(DOWNSAMPLER),
            );
            per * (b + 1)
        } else {
            per * b + layers
        };
        add(
            &format!("down_blocks.{b}"),
            &format!("input_blocks.{out}"),
            Inner::Opaque,
        );
    }
    add(
        "mid_block.resnets.0",
        "middle_block.0",
        Inner::Rules(UNET_RESNET),
    );
    add("mid_block.attentions.0", "middle_block.1", Inner::Same);
    add(
        "mid_block.resnets.1",
        "middle_block.2",
        Inner::Rules(UNET_RESNET),
    );
    add("mid_block", "middle_block", Inner::Opaque);
    for b in 0..n {
        let attn = arch.unet_attention[n - 1 - b];
        for j in 0..per {
            let k = per * b + j;
            add(
                &format!("up_blocks.{b}.resnets.{j}"),
                &format!("output_blocks.{k}.0"),
                Inner::Rules(UNET_RESNET),
            );
            if attn {
                add(
                    &format!("up_blocks.{b}.attentions.{j}"),
                    &format!("output_blocks.{k}.1"),
                    Inner::Same,
                );
            }
        }
        let last = per * b + per - 1;
        if b + 1 < n {
            add(
                &format!("up_blocks.{b}.upsamplers.0"),
                &format!("output_blocks.{last}.{}", if attn { 2 } else { 1 }),
                Inner::Rules(RESAMPLE_CONV),
            );
        }
        add(
            &format!("up_blocks.{b}"),
            &format!("output_blocks.{last}"),
            Inner::Opaque,
        );
    }
    add("conv_norm_out", "out.0", Inner::Same);
    add("conv_out", "out.2", Inner::Same);
}

fn vae_rows(arch: &LdmArch, rows: &mut Vec<Entry>) {
    let (v, l) = ("vae", VAE_ROOT);
    let n = arch.vae_levels;
    let mut add = |ours: &str, ldm: &str, inner| push(rows, join(v, ours), join(l, ldm), inner);
    add("quant_conv", "quant_conv", Inner::Same);
    add("post_quant_conv", "post_quant_conv", Inner::Same);
    for side in ["encoder", "decoder"] {
        add(side, side, Inner::Rules(VAE_SIDE));
        for k in 0..2 {
            add(
                &format!("{side}.mid_block.resnets.{k}"),
                &format!("{side}.mid.block_{}", k + 1),
                Inner::Rules(VAE_RESNET),
            );
        }
        add(
            &format!("{side}.mid_block.attentions.0"),
            &format!("{side}.mid.attn_1"),
            Inner::Rules(VAE_ATTENTION),
        );
        add(
            &format!("{side}.mid_block"),
            &format!("{side}.mid"),
            Inner::Opaque,
        );
        let (ours_level, resnets) = match side {
            "encoder" => ("down_blocks", arch.vae_layers_per_block),
            _ => ("up_blocks", arch.vae_layers_per_block + 1),
        };
        for i in 0..n {
            let (level, sampler) = match side {
                "encoder" => (format!("{side}.down.{i}"), "downsample"),
                _ => (format!("{side}.up.{}", n - 1 - i), "upsample"),
            };
            let ours = format!("{side}.{ours_level}.{i}");
            for j in 0..resnets {
                add(
                    &format!("{ours}.resnets.{j}"),
                    &format!("{level}.block.{j}"),
                    Inner::Rules(VAE_RESNET),
                );
            }
            if i + 1 < n {
                let s = if side == "encoder" {
                    "downsamplers.0"
                } else {
                    "upsamplers.0"
                };
                add(
                    &format!("{ours}.{s}"),
                    &format!("{level}.{sampler}"),
                    Inner::Rules(RESAMPLE_CONV),
                );
            }
            add(&ours, &level, Inner::Opaque);
        }
    }
}

fn text_rows(tower: TextTower, layers: usize, rows: &mut Vec<Entry>) {
    match tower {
        TextTower::OpenAi { root } => push(rows, "text_encoder".into(), root.into(), Inner::Same),
        TextTower::OpenClip => openclip_rows(
            "text_encoder",
            OPENCLIP_ROOT,
            layers,
            OPENCLIP_ROOT_RULES,
            rows,
        ),
    }
}

/// An OpenCLIP text tower under `root` as our `ours`: its first `layers` resblocks, then the
/// root with `root_rules` for what lies outside the layers.
fn openclip_rows(
    ours: &str,
    root: &str,
    layers: usize,
    root_rules: &'static [Rule],
    rows: &mut Vec<Entry>,
) {
    for k in 0..layers {
        push(
            rows,
            format!("{ours}.encoder.layers.{k}"),
            format!("{root}.transformer.resblocks.{k}"),
            Inner::Rules(OPENCLIP_LAYER),
        );
    }
    push(rows, ours.into(), root.into(), Inner::Rules(root_rules));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs named in the issue and in research/pytorch-recorder.md §4, SD 1.x.
    #[test]
    fn sd15_module_paths_both_ways() {
        let m = LdmMap::new(&LdmArch::sd1());
        for (ours, ldm) in [
            (
                "unet.down_blocks.1.attentions.1.transformer_blocks.0.attn1",
                "model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn1",
            ),
            (
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1",
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1",
            ),
            (
                "unet.mid_block.attentions.0",
                "model.diffusion_model.middle_block.1",
            ),
            (
                "unet.up_blocks.1.upsamplers.0",
                "model.diffusion_model.output_blocks.5.2",
            ),
            (
                "unet.up_blocks.0.upsamplers.0",
                "model.diffusion_model.output_blocks.2.1",
            ),
            ("unet.up_blocks.1", "model.diffusion_model.output_blocks.5"),
            ("unet.down_blocks.0", "model.diffusion_model.input_blocks.3"),
            (
                "unet.down_blocks.3",
                "model.diffusion_model.input_blocks.11",
            ),
            (
                "unet.down_blocks.2.downsamplers.0",
                "model.diffusion_model.input_blocks.9.0",
            ),
            ("unet.time_embedding", "model.diffusion_model.time_embed"),
            ("unet.conv_in", "model.diffusion_model.input_blocks.0.0"),
            ("unet.conv_norm_out", "model.diffusion_model.out.0"),
            ("unet.conv_out", "model.diffusion_model.out.2"),
            ("unet.mid_block", "model.diffusion_model.middle_block"),
            (
                "unet.down_blocks.0.resnets.1.conv1",
                "model.diffusion_model.input_blocks.2.0.in_layers.2",
            ),
            ("vae.decoder.up_blocks.2", "first_stage_model.decoder.up.1"),
            ("vae.decoder", "first_stage_model.decoder"),
            ("vae.post_quant_conv", "first_stage_model.post_quant_conv"),
            (
                "vae.decoder.mid_block.attentions.0.to_q",
                "first_stage_model.decoder.mid.attn_1.q",
            ),
            (
                "text_encoder.encoder.layers.3",
                "cond_stage_model.transformer.text_model.encoder.layers.3",
            ),
            (
                "text_encoder.final_layer_norm",
                "cond_stage_model.transformer.text_model.final_layer_norm",
            ),
        ] {
            assert_eq!(m.to_ldm(ours).as_deref(), Some(ldm), "{ours}");
            assert_eq!(m.from_ldm(ldm).as_deref(), Some(ours), "{ldm}");
        }
        // Host spellings of the same modules.
        for (host, ours) in [
            ("middle_block.1", "unet.mid_block.attentions.0"),
            ("output_blocks.5.2", "unet.up_blocks.1.upsamplers.0"),
            (
                "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2",
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2",
            ),
            (
                "cond_stage_model.wrapped.transformer.text_model.encoder.layers.11",
                "text_encoder.encoder.layers.11",
            ),
            // transformers 5's CLIPTextModel has no `text_model` level.
            (
                "cond_stage_model.transformer.encoder.layers.2",
                "text_encoder.encoder.layers.2",
            ),
            (
                "cond_stage_model.wrapped.transformer.final_layer_norm",
                "text_encoder.final_layer_norm",
            ),
        ] {
            assert_eq!(m.from_ldm(host).as_deref(), Some(ours), "{host}");
        }
        // Modules with no sdtrace counterpart, and keys with no LDM module.
        for ldm in [
            "model.diffusion_model.input_blocks.0",
            "model.diffusion_model.input_blocks.1.0.in_layers",
            "model.diffusion_model.input_blocks.1.0.in_layers.1",
            "model.diffusion_model.out.1",
            "model.diffusion_model.input_blocks.12.0",
            "model.diffusion_model.label_emb",
            "model_ema.decay",
            "",
        ] {
            assert_eq!(m.from_ldm(ldm), None, "{ldm}");
        }
        for ours in [
            "noise.initial",
            "unet.down_blocks.0.nonsense",
            "unet.down_blocks.9.resnets.0",
            "vae.decoder.up_blocks.0.resnets.7",
        ] {
            assert_eq!(m.to_ldm(ours), None, "{ours}");
        }
    }

    #[test]
    fn sd2_text_encoder_and_the_combined_map() {
        let m = LdmMap::new(&LdmArch::sd2());
        assert_eq!(
            m.to_ldm("text_encoder.encoder.layers.22.mlp.fc1")
                .as_deref(),
            Some("cond_stage_model.model.transformer.resblocks.22.mlp.c_fc")
        );
        assert_eq!(
            m.to_ldm("text_encoder.encoder.layers.22.self_attn.q_proj"),
            None
        );
        assert_eq!(
            m.weight("text_encoder.encoder.layers.3.self_attn.k_proj.weight"),
            Some(WeightKey {
                key: "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight".into(),
                fused: Some(1),
                squeeze_1x1: false,
                transpose: false,
            })
        );
        assert_eq!(
            m.weight("text_encoder.embeddings.position_embedding.weight")
                .map(|w| w.key),
            Some("cond_stage_model.model.positional_embedding".into())
        );
        // The 24th OpenCLIP layer is not run by SD 2.x.
        assert_eq!(
            m.from_ldm("cond_stage_model.model.transformer.resblocks.23"),
            None
        );
        let both = LdmMap::sd();
        assert_eq!(
            both.from_ldm("cond_stage_model.model.ln_final").as_deref(),
            Some("text_encoder.final_layer_norm")
        );
        assert_eq!(
            both.from_ldm("cond_stage_model.transformer.text_model.final_layer_norm")
                .as_deref(),
            Some("text_encoder.final_layer_norm")
        );
        assert_eq!(
            both.to_ldm("text_encoder.encoder.layers.11").as_deref(),
            Some("cond_stage_model.transformer.text_model.encoder.layers.11")
        );
        assert_eq!(
            both.from_ldm("cond_stage_model.model.transformer.resblocks.11")
                .as_deref(),
            Some("text_encoder.encoder.layers.11")
        );
        assert_eq!(
            both.to_ldm("text_encoder.final_layer_norm").as_deref(),
            Some("cond_stage_model.transformer.text_model.final_layer_norm")
        );
    }

    /// SDXL base's pairs, checked against diffusers' single-file converter
    /// (`convert_ldm_unet_checkpoint`, `convert_open_clip_checkpoint`): three levels with a
    /// plain first one, `label_emb`, both text towers under `conditioner.embedders`.
    #[test]
    fn sdxl_module_paths_and_weights() {
        let m = LdmMap::new(&LdmArch::sdxl());
        let u = |s: &str| format!("{UNET_ROOT}.{s}");
        for (ours, ldm) in [
            ("unet.add_embedding", u("label_emb.0")),
            ("unet.time_embedding", u("time_embed")),
            ("unet.down_blocks.0.resnets.1", u("input_blocks.2.0")),
            ("unet.down_blocks.0.downsamplers.0", u("input_blocks.3.0")),
            (
                "unet.down_blocks.1.attentions.1.transformer_blocks.1.attn2",
                u("input_blocks.5.1.transformer_blocks.1.attn2"),
            ),
            ("unet.down_blocks.2.attentions.0", u("input_blocks.7.1")),
            ("unet.down_blocks.2", u("input_blocks.8")),
            (
                "unet.mid_block.attentions.0.transformer_blocks.9.ff",
                u("middle_block.1.transformer_blocks.9.ff"),
            ),
            ("unet.up_blocks.0.attentions.2", u("output_blocks.2.1")),
            ("unet.up_blocks.0.upsamplers.0", u("output_blocks.2.2")),
            ("unet.up_blocks.1.upsamplers.0", u("output_blocks.5.2")),
            ("unet.up_blocks.2.resnets.2", u("output_blocks.8.0")),
            ("unet.up_blocks.2", u("output_blocks.8")),
            (
                "vae.decoder.up_blocks.0",
                "first_stage_model.decoder.up.3".into(),
            ),
            (
                "text_encoder.encoder.layers.11",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.11".into(),
            ),
            (
                "text_encoder.final_layer_norm",
                "conditioner.embedders.0.transformer.text_model.final_layer_norm".into(),
            ),
            (
                "text_encoder_2.encoder.layers.31",
                "conditioner.embedders.1.model.transformer.resblocks.31".into(),
            ),
            (
                "text_encoder_2.encoder.layers.30.mlp.fc1",
                "conditioner.embedders.1.model.transformer.resblocks.30.mlp.c_fc".into(),
            ),
            (
                "text_encoder_2.final_layer_norm",
                "conditioner.embedders.1.model.ln_final".into(),
            ),
        ] {
            assert_eq!(m.to_ldm(ours).as_deref(), Some(ldm.as_str()), "{ours}");
            assert_eq!(m.from_ldm(&ldm).as_deref(), Some(ours), "{ldm}");
        }
        for (host, ours) in [
            (
                "conditioner.embedders.0.wrapped.transformer.text_model.encoder.layers.3",
                "text_encoder.encoder.layers.3",
            ),
            (
                "conditioner.embedders.0.transformer.encoder.layers.3",
                "text_encoder.encoder.layers.3",
            ),
            (
                "conditioner.embedders.1.wrapped.model.transformer.resblocks.5",
                "text_encoder_2.encoder.layers.5",
            ),
            ("diffusion_model.label_emb.0", "unet.add_embedding"),
            ("output_blocks.2.2", "unet.up_blocks.0.upsamplers.0"),
        ] {
            assert_eq!(m.from_ldm(host).as_deref(), Some(ours), "{host}");
        }
        for ldm in [
            "cond_stage_model.transformer.text_model.encoder.layers.3",
            "cond_stage_model.model.transformer.resblocks.3",
            "model.diffusion_model.input_blocks.1.1",
            "model.diffusion_model.input_blocks.9.0",
            "model.diffusion_model.label_emb",
            "conditioner.embedders.1.model.transformer.resblocks.32",
        ] {
            assert_eq!(m.from_ldm(ldm), None, "{ldm}");
        }
        assert_eq!(m.to_ldm("text_encoder_2.text_projection"), None);
        assert_eq!(m.to_ldm("unet.down_blocks.0.attentions.0"), None);
        let w = |name: &str| m.weight(name).unwrap();
        assert_eq!(
            w("unet.add_embedding.linear_2.bias").key,
            u("label_emb.0.2.bias")
        );
        assert_eq!(
            w("text_encoder_2.text_projection.weight"),
            WeightKey {
                key: "conditioner.embedders.1.model.text_projection".into(),
                fused: None,
                squeeze_1x1: false,
                transpose: true,
            }
        );
        assert_eq!(
            w("text_encoder_2.encoder.layers.0.self_attn.v_proj.bias"),
            WeightKey {
                key: "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias"
                    .into(),
                fused: Some(2),
                squeeze_1x1: false,
                transpose: false,
            }
        );
        assert_eq!(
            w("text_encoder_2.embeddings.position_embedding.weight").key,
            "conditioner.embedders.1.model.positional_embedding"
        );
        assert_eq!(
            w("text_encoder.embeddings.token_embedding.weight").key,
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
        );
        // SD 2.x's OpenCLIP has no projection rule: SD 2.x does not use it.
        assert_eq!(
            LdmMap::new(&LdmArch::sd2()).weight("text_encoder.text_projection.weight"),
            None
        );
    }

    #[test]
    fn every_row_round_trips() {
        for arch in [LdmArch::sd1(), LdmArch::sd2(), LdmArch::sdxl()] {
            let m = LdmMap::new(&arch);
            for e in m.entries() {
                assert_eq!(m.to_ldm(&e.ours).as_deref(), Some(e.ldm.as_str()), "{e:?}");
                assert_eq!(
                    m.from_ldm(&e.ldm).as_deref(),
                    Some(e.ours.as_str()),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn the_architecture_is_read_off_names() {
        let mut names: Vec<String> = Vec::new();
        for arch in [LdmArch::sd1(), LdmArch::sd2()] {
            let m = LdmMap::new(&arch);
            names.clear();
            names.extend(m.entries().iter().map(|e| format!("{}.weight", e.ldm)));
            // Module names from the map alone miss what only weights name: the samplers' convs.
            names.extend(
                m.entries()
                    .iter()
                    .filter(|e| e.inner == Inner::Rules(DOWNSAMPLER))
                    .map(|e| format!("{}.op.weight", e.ldm)),
            );
            match arch.text {
                TextTower::OpenClip => names.push(format!(
                    "{OPENCLIP_ROOT}.transformer.resblocks.23.ln_1.weight"
                )),
                TextTower::OpenAi { root } => names
                    .extend((0..12).map(|k| format!("{root}.encoder.layers.{k}.mlp.fc1.weight"))),
            }
            let got = LdmArch::from_names(names.iter().map(String::as_str));
            assert_eq!(got, Some(arch));
        }
        // A label embedding beside SD 2.x's text tower: a class-conditioned model (unCLIP).
        names.push(format!("{UNET_ROOT}.label_emb.0.0.weight"));
        assert_eq!(LdmArch::from_names(names.iter().map(String::as_str)), None);
        // SDXL base: every weight name of its table, and the samplers' convs.
        let xl = LdmMap::new(&LdmArch::sdxl());
        let mut names: Vec<String> = xl
            .entries()
            .iter()
            .filter(|e| e.inner != Inner::Opaque)
            .map(|e| format!("{}.weight", e.ldm))
            .collect();
        names.extend(
            xl.entries()
                .iter()
                .filter(|e| e.inner == Inner::Rules(DOWNSAMPLER))
                .map(|e| format!("{}.op.weight", e.ldm)),
        );
        names
            .extend((0..12).map(|k| format!("{SDXL_CLIP_ROOT}.encoder.layers.{k}.mlp.fc1.weight")));
        let got = LdmArch::from_names(names.iter().map(String::as_str));
        assert_eq!(got, Some(LdmArch::sdxl()));
        // An SDXL UNet alone (ComfyUI hooks it apart from the text encoders): SDXL's towers.
        let unet: Vec<&String> = names.iter().filter(|n| n.starts_with(UNET_ROOT)).collect();
        let got = LdmArch::from_names(unet.iter().map(|s| s.as_str()));
        assert_eq!(got, Some(LdmArch::sdxl()));
        // The refiner's text tower is not SDXL base's.
        names.push(format!(
            "{SDXL_REFINER_OPENCLIP_ROOT}.transformer.resblocks.0.ln_1.weight"
        ));
        assert_eq!(LdmArch::from_names(names.iter().map(String::as_str)), None);
        assert_eq!(LdmArch::from_names(["foo.bar"]), None);
        // One component alone: the others keep SD's values.
        let unet_only = LdmMap::new(&LdmArch {
            unet_attention: vec![true, false],
            ..LdmArch::sd1()
        });
        let names: Vec<String> = unet_only
            .entries()
            .iter()
            .filter(|e| e.ldm.starts_with(UNET_ROOT))
            .map(|e| format!("{}.weight", e.ldm))
            .chain(["model.diffusion_model.input_blocks.3.0.op.weight".to_string()])
            .collect();
        let got = LdmArch::from_names(names.iter().map(String::as_str));
        assert_eq!(
            got.map(|a| (a.unet_attention, a.vae_levels)),
            Some((vec![true, false], 4))
        );
        // A UNet without a middle block is not this structure.
        assert_eq!(
            LdmArch::from_names(["model.diffusion_model.input_blocks.0.0.weight"]),
            None
        );
    }
}
