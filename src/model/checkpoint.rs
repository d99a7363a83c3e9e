//! Single-file LDM checkpoints (`model.safetensors` as A1111 loads them): open, check, load into
//! our modules, and write.
//!
//! [`Checkpoint::open`] memory-maps the file and reads its safetensors header (the header is
//! bounded and every offset checked against the file by the `safetensors` crate before anything
//! is read); pickled `.ckpt`/`.pt` files are refused by their first bytes, whatever their name.
//! [`Checkpoint::check`] compares the weights our modules ask for (enumerated by building them
//! over a backend that hands out one-element broadcast tensors, so nothing is allocated) with
//! what the file holds, through [`LdmLayout`]'s key rules, and reports every missing,
//! misshapen and unknown key at once (the first few of each, with counts). [`Checkpoint::
//! var_builder`] then serves each weight straight from the mapping: the bytes are copied into
//! a tensor, converted to the model dtype, and the mapped pages are dropped from the process
//! (`MADV_DONTNEED`; the file stays in the page cache), so loading costs about the weights in
//! the model dtype plus one tensor, not the file on top. [`write_checkpoint`] writes our
//! diffusers-named weights in the LDM layout (the inverse mapping: 1×1 convolutions for the
//! VAE's attention, OpenCLIP's fused q/k/v, SD 2.x's unused last layer, SDXL's transposed
//! `text_projection`), which `sdtrace synth --format ldm` and the tests use. SDXL checkpoints
//! have a fourth component, the second text encoder ([`Component::TextEncoder2`]);
//! [`Checkpoint::load_sdxl_models`] builds all four.

use super::attention::{AttentionImpl, Numerics};
use super::clip::ClipTextModel;
use super::ldm::{
    CheckpointError, KeyProblems, LdmLayout, OPENCLIP_PREFIX, Result, SDXL_OPENCLIP_PREFIX, Shapes,
    Source, TextTower,
};
use super::unet::UNet;
use super::vae::Vae;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The models of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG with its projection).
    TextEncoder2,
    Vae,
}

impl Component {
    /// The three of an SD 1.x/2.x checkpoint.
    pub const ALL: [Component; 3] = [Component::Unet, Component::TextEncoder, Component::Vae];
    /// The four of an SDXL checkpoint.
    pub const SDXL: [Component; 4] = [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
        Component::Vae,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::Vae => "vae",
        }
    }
}

impl LdmLayout {
    /// Where `component`'s weight `name` is stored.
    pub fn source(&self, component: Component, name: &str) -> Option<Source> {
        match component {
            Component::Unet => self.unet_source(name),
            Component::TextEncoder => self.clip_source(name),
            Component::TextEncoder2 => self.clip2_source(name),
            Component::Vae => self.vae_source(name),
        }
    }

    /// The components of this layout's model.
    pub fn components(&self) -> &'static [Component] {
        if self.is_sdxl() {
            &Component::SDXL
        } else {
            &Component::ALL
        }
    }
}

/// The four models of an SDXL checkpoint, as the diffusers folder's loaders build them.
pub struct SdxlModels {
    pub unet: UNet,
    /// CLIP ViT-L (`text_encoder`).
    pub text_encoder: ClipTextModel,
    /// OpenCLIP ViT-bigG with its projection (`text_encoder_2`).
    pub text_encoder_2: ClipTextModel,
    pub vae: Vae,
}

/// One tensor of the file.
#[derive(Clone, Debug)]
struct Entry {
    /// `None` for element types no model weight has (e.g. the I64 `position_ids`).
    dtype: Option<DType>,
    /// The dtype as the file names it (also for ones we cannot load).
    dtype_name: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// What [`Checkpoint::check`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyReport {
    /// Tensors our modules use.
    pub used: usize,
    /// EMA copies skipped.
    pub ema: usize,
    /// Other tensors skipped (schedule buffers, `position_ids`, OpenCLIP extras).
    pub ignored: usize,
    /// Tensors nothing reads (only with `allow_unknown`).
    pub unknown: Vec<String>,
    /// Element dtypes of the used tensors, with counts.
    pub dtypes: BTreeMap<String, usize>,
    /// Bytes of the used tensors in the file.
    pub bytes: u64,
}

/// An open single-file checkpoint.
pub struct Checkpoint {
    path: PathBuf,
    map: memmap2::Mmap,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// The kind of pickle `head` starts, if it is one.
fn pickle_kind(head: &[u8]) -> Option<&'static str> {
    match head {
        [b'P', b'K', 3, 4, ..] => Some("PyTorch zip (.ckpt/.pt)"),
        [0x80, 2..=5, ..] => Some("pickled PyTorch (.ckpt/.pt)"),
        _ => None,
    }
}

fn dtype_of(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F32 => Some(DType::F32),
        _ => None,
    }
}

impl Checkpoint {
    /// Map `path` and read its header. Refuses pickles and anything that is not safetensors.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |op, source| CheckpointError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        crate::files::require_regular(path).map_err(|e| io("cannot open", e))?;
        let file = std::fs::File::open(path).map_err(|e| io("cannot open", e))?;
        let mut head = [0u8; 8];
        {
            use std::io::Read;
            let mut f = &file;
            let n = f.read(&mut head).map_err(|e| io("cannot read", e))?;
            if let Some(kind) = pickle_kind(&head[..n]) {
                return Err(CheckpointError::Pickle {
                    path: path.to_path_buf(),
                    kind,
                });
            }
        }
        // SAFETY: the file is mapped read-only; like every safetensors loader we rely on it not
        // being truncated or rewritten while mapped.
        let map =
            unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| io("cannot map", e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            match ext.as_deref() {
                Some("ckpt" | "pt" | "pth" | "bin") => CheckpointError::Pickle {
                    path: path.to_path_buf(),
                    kind: "PyTorch (.ckpt/.pt)",
                },
                _ => CheckpointError::NotSafetensors {
                    path: path.to_path_buf(),
                    what: format!(
                        "{e:?} (a .safetensors file starts with its header's length and a JSON header)"
                    ),
                },
            }
        })?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            entries.insert(
                name,
                Entry {
                    dtype: dtype_of(info.dtype),
                    dtype_name: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    start: data_start + s,
                    end: data_start + e,
                },
            );
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            map,
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The safetensors `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Every tensor's shape.
    pub fn shapes(&self) -> Shapes {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.shape.clone()))
            .collect()
    }

    /// The model the shapes describe (see [`LdmLayout::infer`]).
    pub fn layout(&self, prediction: Option<super::config::Prediction>) -> Result<LdmLayout> {
        LdmLayout::infer(&self.shapes(), &self.metadata, prediction, &self.path)
    }

    /// Compare what our modules need with what the file holds. Errors list missing and
    /// misshapen keys and, unless `allow_unknown`, keys nothing reads.
    pub fn check(&self, layout: &LdmLayout, allow_unknown: bool) -> Result<KeyReport> {
        let mut missing = Vec::new();
        let mut misshapen = Vec::new();
        let mut used = BTreeSet::new();
        let mut report = KeyReport::default();
        for &c in layout.components() {
            for (name, want) in required_weights(layout, c)? {
                let Some(src) = layout.source(c, &name) else {
                    missing.push(format!("{} weight '{name}' (no LDM name)", c.name()));
                    continue;
                };
                let Some(e) = self.entries.get(&src.key) else {
                    missing.push(src.key.clone());
                    continue;
                };
                match src.shape_from(&e.shape) {
                    Ok(s) if s == want => {}
                    Ok(s) => misshapen.push(format!("{} is {s:?}, expected {want:?}", src.key)),
                    Err(what) => misshapen.push(format!("{}: expected {what}", src.key)),
                }
                if used.insert(src.key.clone()) {
                    *report.dtypes.entry(e.dtype_name.clone()).or_default() += 1;
                    report.bytes += (e.end - e.start) as u64;
                }
            }
        }
        let mut unknown = Vec::new();
        for k in self.entries.keys() {
            if used.contains(k) {
                continue;
            }
            if k.starts_with(super::ldm::EMA_PREFIX) {
                report.ema += 1;
            } else if layout.is_ignored(k) {
                report.ignored += 1;
            } else {
                unknown.push(k.clone());
            }
        }
        report.used = used.len();
        for k in &used {
            if let Some(e) = self.entries.get(k)
                && e.dtype.is_none()
            {
                return Err(CheckpointError::Dtype {
                    path: self.path.clone(),
                    key: k.clone(),
                    dtype: e.dtype_name.clone(),
                });
            }
        }
        if !missing.is_empty() || !misshapen.is_empty() || (!unknown.is_empty() && !allow_unknown) {
            let mut parts = Vec::new();
            for (what, list, hint) in [
                ("missing", &missing, ""),
                ("misshapen", &misshapen, ""),
                (
                    "unknown",
                    &unknown,
                    " (nothing reads them; pass --ignore-unknown-keys to load anyway)",
                ),
            ] {
                if list.is_empty() || (what == "unknown" && allow_unknown) {
                    continue;
                }
                parts.push(format!("{} {what}{hint}: {}", list.len(), first_few(list)));
            }
            return Err(CheckpointError::Keys {
                path: self.path.clone(),
                family: layout.family.name().into(),
                summary: parts.join("; "),
                keys: Box::new(KeyProblems {
                    missing,
                    misshapen,
                    unknown,
                }),
            });
        }
        report.unknown = unknown;
        Ok(report)
    }

    /// One weight as a tensor of `dtype` on `device`; the mapped pages it came from are
    /// released afterwards.
    fn load(&self, src: &Source, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let e = self.entries.get(&src.key).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: no tensor '{}'", self.path.display(), src.key))
        })?;
        let stored = e.dtype.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: '{}' has dtype {}; supported: F16, BF16, F32",
                self.path.display(),
                src.key,
                e.dtype_name
            ))
        })?;
        let shape = src
            .shape_from(&e.shape)
            .map_err(|w| candle_core::Error::Msg(format!("{}: expected {w}", src.key)))?;
        let (mut start, mut end) = (e.start, e.end);
        if let Some(r) = &src.rows {
            let row = stored.size_in_bytes() * e.shape.iter().skip(1).product::<usize>();
            (start, end) = (e.start + r.start * row, e.start + r.end * row);
        }
        let bytes = self.map.get(start..end).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: '{}' lies outside the file",
                self.path.display(),
                src.key
            ))
        })?;
        let t = if src.transpose {
            let (a, b) = (shape.first().copied(), shape.get(1).copied());
            let (Some(a), Some(b)) = (a, b) else {
                return Err(candle_core::Error::Msg(format!(
                    "{}: '{}' is not a matrix",
                    self.path.display(),
                    src.key
                )));
            };
            Tensor::from_raw_buffer(bytes, stored, &[b, a], &Device::Cpu)?
                .t()?
                .contiguous()?
        } else {
            Tensor::from_raw_buffer(bytes, stored, &shape, &Device::Cpu)?
        };
        let t = t.to_dtype(dtype)?.to_device(device)?;
        self.release(start, end);
        Ok(t)
    }

    /// Drop the mapped pages of `start..end` from this process (they stay in the page cache;
    /// a later read faults them in again from the file).
    fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        {
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops
            // pages that are re-read unchanged from the file on the next access; no reference
            // into them outlives `load`.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }

    /// A `VarBuilder` serving `component`'s weights (diffusers names) from this file.
    pub fn var_builder(
        self: &Arc<Self>,
        layout: &LdmLayout,
        component: Component,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        self.mapped(Some((layout.clone(), component)), dtype, device)
    }

    /// Open a plain (diffusers-layout) weights file and serve its tensors under their own
    /// names, each copied out and its pages released as for [`Checkpoint::var_builder`]: how
    /// the diffusers-folder loaders read their weights.
    pub fn open_plain(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        Ok(Arc::new(Checkpoint::open(path)?).mapped(None, dtype, device))
    }

    fn mapped(
        self: &Arc<Self>,
        layout: Option<(LdmLayout, Component)>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Mapped {
            ckpt: self.clone(),
            layout,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Build the three models of an SD 1.x/2.x-structured file (after [`Checkpoint::check`]);
    /// SDXL files have four ([`Checkpoint::load_sdxl_models`]).
    pub fn load_models(
        self: &Arc<Self>,
        layout: &LdmLayout,
        dtype: DType,
        device: &Device,
        numerics: Numerics,
        attention: AttentionImpl,
    ) -> super::Result<(UNet, ClipTextModel, Vae)> {
        if layout.is_sdxl() {
            return Err(CheckpointError::Layout {
                path: self.path.clone(),
                what: "an SDXL checkpoint has two text encoders; it loads with load_sdxl_models, and this pipeline runs SD 1.x/2.x".into(),
            }
            .into());
        }
        let (unet, clip, _, vae) = self.build(layout, dtype, device, numerics, attention)?;
        Ok((unet, clip, vae))
    }

    /// Build the four models of an SDXL file (after [`Checkpoint::check`]): the same modules,
    /// weights and probe keys (`text_encoder_2.…`) as the diffusers folder of the same model.
    pub fn load_sdxl_models(
        self: &Arc<Self>,
        layout: &LdmLayout,
        dtype: DType,
        device: &Device,
        numerics: Numerics,
        attention: AttentionImpl,
    ) -> super::Result<SdxlModels> {
        let (unet, text_encoder, text_encoder_2, vae) =
            self.build(layout, dtype, device, numerics, attention)?;
        let text_encoder_2 = text_encoder_2.ok_or_else(|| CheckpointError::Layout {
            path: self.path.clone(),
            what: "not an SDXL checkpoint: it has one text encoder (load it with load_models)"
                .into(),
        })?;
        Ok(SdxlModels {
            unet,
            text_encoder,
            text_encoder_2,
            vae,
        })
    }

    /// The models of `layout`, the second text encoder if it has one.
    fn build(
        self: &Arc<Self>,
        layout: &LdmLayout,
        dtype: DType,
        device: &Device,
        numerics: Numerics,
        attention: AttentionImpl,
    ) -> super::Result<(UNet, ClipTextModel, Option<ClipTextModel>, Vae)> {
        let wrap = |source| super::ModelError::Weights {
            file: self.path.clone(),
            error: source,
        };
        let unet = UNet::new(
            self.var_builder(layout, Component::Unet, dtype, device),
            &layout.unet,
            numerics,
            attention,
            "unet",
        )
        .map_err(wrap)?;
        let clip = ClipTextModel::new(
            self.var_builder(layout, Component::TextEncoder, dtype, device),
            &layout.clip,
            "text_encoder",
        )
        .map_err(wrap)?;
        let clip2 = match &layout.clip2 {
            Some(c) => Some(
                ClipTextModel::new(
                    self.var_builder(layout, Component::TextEncoder2, dtype, device),
                    c,
                    "text_encoder_2",
                )
                .map_err(wrap)?,
            ),
            None => None,
        };
        let vae = Vae::new(
            self.var_builder(layout, Component::Vae, dtype, device),
            layout.vae.clone(),
            &self.path,
        )?;
        Ok((unet, clip, clip2, vae))
    }
}

/// `a, b, c and 12 more`.
fn first_few(list: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = list
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        s += &format!(" and {} more", list.len() - SHOWN);
    }
    s
}

/// The backend behind [`Checkpoint::var_builder`] (`layout` names each weight's key in the file)
/// and [`Checkpoint::open_plain`] (`layout` is `None`: keys are the names asked for).
struct Mapped {
    ckpt: Arc<Checkpoint>,
    layout: Option<(LdmLayout, Component)>,
}

impl Mapped {
    fn source(&self, name: &str) -> candle_core::Result<Source> {
        match &self.layout {
            None => Ok(Source::plain(name.to_string())),
            Some((layout, c)) => layout.source(*c, name).ok_or_else(|| {
                candle_core::Error::Msg(format!("{} weight '{name}' has no LDM name", c.name()))
            }),
        }
    }
}

impl SimpleBackend for Mapped {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let src = self.source(name)?;
        let t = self.ckpt.load(&src, dtype, dev)?;
        if t.dims() != s.dims() {
            return Err(candle_core::Error::Msg(format!(
                "{}: '{}' has shape {:?}, expected {:?}",
                self.ckpt.path.display(),
                src.key,
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.ckpt.load(&self.source(name)?, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source(name)
            .is_ok_and(|s| self.ckpt.entries.contains_key(&s.key))
    }
}

/// A backend that records what is asked for and hands out one-element broadcast tensors.
struct ShapeOnly(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for ShapeOnly {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _d: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("'{name}' needs a shape")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A UNet of `config` whose weights are one-element broadcast tensors: nothing allocated, good
/// for shape questions such as [`UNet::attention_plan`] or [`UNet::probe_points`], not for
/// running. Only the tests ask such questions today.
#[cfg(test)]
pub fn unet_without_weights(
    config: &super::config::UNetConfig,
    dtype: DType,
    attention: AttentionImpl,
) -> super::Result<UNet> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly(seen)), dtype, Device::Cpu);
    Ok(UNet::new(vb, config, Numerics::PYTORCH, attention, "unet")?)
}

/// The weights (diffusers names and shapes) our `component` module asks for under `layout`.
pub fn required_weights(layout: &LdmLayout, c: Component) -> Result<BTreeMap<String, Vec<usize>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly(seen.clone())), DType::F32, Device::Cpu);
    let built = match c {
        Component::Unet => UNet::new(
            vb,
            &layout.unet,
            Numerics::PYTORCH,
            AttentionImpl::Full,
            "unet",
        )
        .map(drop)
        .map_err(|e| e.to_string()),
        Component::TextEncoder => ClipTextModel::new(vb, &layout.clip, "text_encoder")
            .map(drop)
            .map_err(|e| e.to_string()),
        Component::TextEncoder2 => match &layout.clip2 {
            Some(c) => ClipTextModel::new(vb, c, "text_encoder_2")
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err("the layout has no second text encoder (not SDXL)".into()),
        },
        Component::Vae => Vae::new(vb, layout.vae.clone(), Path::new("(checkpoint)"))
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    built.map_err(|what| CheckpointError::Layout {
        path: PathBuf::from("(inferred configuration)"),
        what: format!("the {} cannot be built: {what}", c.name()),
    })?;
    let out = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

/// Write diffusers-named weights (`parts`: each component's weights by name) as a single-file
/// LDM checkpoint in `dtype`, through a temporary file. `metadata` goes into the header.
/// OpenCLIP layouts also get the last transformer layer SD 2.x does not use (zeros) and the
/// text projection, as real SD 2.x files have them; SDXL layouts OpenCLIP's `logit_scale`.
pub fn write_checkpoint(
    path: &Path,
    layout: &LdmLayout,
    parts: &[(Component, &BTreeMap<String, Tensor>)],
    dtype: DType,
    metadata: BTreeMap<String, String>,
) -> super::Result<()> {
    let out = to_ldm(layout, parts, dtype).map_err(|e| match e {
        super::ModelError::Checkpoint(CheckpointError::Layout { what, .. }) => {
            CheckpointError::Layout {
                path: path.to_path_buf(),
                what,
            }
            .into()
        }
        e => e,
    })?;
    let tmp = path.with_extension("safetensors.partial");
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    safetensors::serialize_to_file(out.iter(), Some(meta), &tmp).map_err(|e| {
        super::ModelError::Io {
            path: tmp.clone(),
            op: "cannot write",
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|source| super::ModelError::Io {
        path: path.to_path_buf(),
        op: "cannot create",
        source,
    })
}

/// The tensors of [`write_checkpoint`], by LDM key.
pub fn to_ldm(
    layout: &LdmLayout,
    parts: &[(Component, &BTreeMap<String, Tensor>)],
    dtype: DType,
) -> super::Result<BTreeMap<String, Tensor>> {
    let bad = |what: String| CheckpointError::Layout {
        path: PathBuf::from("(checkpoint being written)"),
        what,
    };
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut fused: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
    for (c, weights) in parts {
        for (name, t) in weights.iter() {
            let src = layout
                .source(*c, name)
                .ok_or_else(|| bad(format!("{} weight '{name}' has no LDM name", c.name())))?;
            let t = t.to_dtype(dtype)?;
            let t = if src.squeeze_1x1 {
                let (a, b) = t.dims2()?;
                t.reshape((a, b, 1, 1))?
            } else if src.transpose {
                t.t()?.contiguous()?
            } else {
                t
            };
            match src.rows {
                Some(r) => fused.entry(src.key).or_default().push((r.start, t)),
                None => {
                    out.insert(src.key, t);
                }
            }
        }
    }
    for (key, mut pieces) in fused {
        pieces.sort_by_key(|(start, _)| *start);
        let ts: Vec<Tensor> = pieces.into_iter().map(|(_, t)| t).collect();
        out.insert(key, Tensor::cat(&ts, 0)?);
    }
    if layout.tower == TextTower::OpenClip {
        let (d, i) = (layout.clip.hidden_size, layout.clip.intermediate_size);
        let block = format!(
            "{OPENCLIP_PREFIX}transformer.resblocks.{}.",
            layout.clip.num_hidden_layers
        );
        let zeros = |shape: &[usize]| Tensor::zeros(shape, dtype, &Device::Cpu);
        for (name, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.in_proj_weight", vec![3 * d, d]),
            ("attn.in_proj_bias", vec![3 * d]),
            ("attn.out_proj.weight", vec![d, d]),
            ("attn.out_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![i, d]),
            ("mlp.c_fc.bias", vec![i]),
            ("mlp.c_proj.weight", vec![d, i]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            out.insert(format!("{block}{name}"), zeros(&shape)?);
        }
        out.insert(format!("{OPENCLIP_PREFIX}text_projection"), zeros(&[d, d])?);
    }
    if layout.is_sdxl() {
        // OpenCLIP's contrastive temperature, which nothing here runs: ln(1/0.07).
        let t = Tensor::new(&[(1.0f32 / 0.07).ln()], &Device::Cpu)?
            .reshape(())?
            .to_dtype(dtype)?;
        out.insert(format!("{SDXL_OPENCLIP_PREFIX}logit_scale"), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clip::{ClipActivation, ClipConfig};
    use crate::model::config::{Prediction, UNetConfig};
    use crate::model::ldm::{Family, OPENAI_CLIP_PREFIX};
    use crate::model::synth::{self, SynthSize};

    /// The LDM shapes a model of `layout` has (no tensor allocated).
    fn ldm_shapes(layout: &LdmLayout) -> Shapes {
        let mut out = Shapes::new();
        for &c in layout.components() {
            for (name, shape) in required_weights(layout, c).unwrap() {
                let src = layout.source(c, &name).unwrap();
                let mut shape = shape;
                if src.squeeze_1x1 {
                    shape.extend([1, 1]);
                }
                if src.transpose {
                    shape.reverse();
                }
                if src.rows.is_some() {
                    shape[0] *= 3;
                }
                out.insert(src.key, shape);
            }
        }
        if layout.tower == TextTower::OpenClip {
            let (d, i) = (layout.clip.hidden_size, layout.clip.intermediate_size);
            let n = layout.clip.num_hidden_layers;
            let p = format!("{OPENCLIP_PREFIX}transformer.resblocks.{n}.");
            out.insert(format!("{p}mlp.c_fc.weight"), vec![i, d]);
        }
        out
    }

    fn sd21_layout() -> LdmLayout {
        let mut l = synth::ldm_layout(SynthSize::Sd15);
        l.family = Family::Sd2;
        l.unet = UNetConfig::sd21();
        l.clip = ClipConfig::sd21();
        l.tower = TextTower::OpenClip;
        l.prediction_given = true;
        l
    }

    /// Doggettx query slices on a card with 5 GiB free, SD 1.5 in fp16, cond+uncond batch of 2
    /// (the original report's sizes): only the first level's self-attention splits, from
    /// 704x704 up (it needs 16·N²·2 bytes × 3 with N = (side/8)²: 5.36 GiB at 704).
    #[test]
    fn sd15_split_attention_slices_for_a_5gib_card() {
        let budget = crate::model::attention::parse_bytes("5GiB");
        let unet = unet_without_weights(
            &UNetConfig::sd15(),
            DType::F16,
            AttentionImpl::Split { budget },
        )
        .unwrap();
        for (side, first_level) in [
            (512, 1),
            (576, 1),
            (640, 1),
            (704, 2),
            (768, 2),
            (832, 4),
            (1024, 8),
        ] {
            let plan = unet.attention_plan(2, side / 8, side / 8, 77).unwrap();
            assert_eq!(plan.len(), 32);
            let slices = |key: &str| {
                let (_, c) = plan.iter().find(|(k, _)| k == key).unwrap();
                (side / 8 * side / 8).div_ceil(c.queries)
            };
            let first = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1";
            assert_eq!(slices(first), first_level, "{side}");
            assert_eq!(
                slices("unet.up_blocks.3.attentions.2.transformer_blocks.0.attn1"),
                first_level,
                "{side}"
            );
            for (k, c) in &plan {
                let n = (side / 8 * side / 8).div_ceil(c.queries);
                assert!(
                    n == 1 || k.contains("blocks.0.") || k.contains("up_blocks.3."),
                    "{side} {k} {n}"
                );
            }
        }
    }

    #[test]
    fn sd15_has_the_published_tensor_counts() {
        let l = synth::ldm_layout(SynthSize::Sd15);
        let n = |c| required_weights(&l, c).unwrap().len();
        // diffusers' SD 1.5: 686 UNet, 196 text encoder and 248 VAE tensors.
        assert_eq!(n(Component::Unet), 686);
        assert_eq!(n(Component::TextEncoder), 196);
        assert_eq!(n(Component::Vae), 248);
        // Every weight has its own LDM key.
        let shapes = ldm_shapes(&l);
        assert_eq!(shapes.len(), 686 + 196 + 248);
        assert_eq!(
            shapes[&format!(
                "{}decoder.mid.attn_1.q.weight",
                crate::model::ldm::VAE_PREFIX
            )],
            [512, 512, 1, 1]
        );
    }

    #[test]
    fn configurations_are_read_off_the_shapes() {
        let none = BTreeMap::new();
        let p = Path::new("x.safetensors");
        let sd15 = synth::ldm_layout(SynthSize::Sd15);
        assert_eq!(
            LdmLayout::infer(&ldm_shapes(&sd15), &none, None, p).unwrap(),
            sd15
        );
        let sd21 = sd21_layout();
        let shapes = ldm_shapes(&sd21);
        let e = LdmLayout::infer(&shapes, &none, None, p).unwrap_err();
        assert!(matches!(e, CheckpointError::NeedPrediction { .. }), "{e}");
        assert!(e.to_string().contains("--prediction v"), "{e}");
        let got = LdmLayout::infer(&shapes, &none, Some(Prediction::VPrediction), p).unwrap();
        assert_eq!(got, sd21);
        assert_eq!(got.clip.num_hidden_layers, 23);
        assert_eq!(got.clip.activation, ClipActivation::GeluErf);
        // The tiny model needs its metadata for head counts.
        let tiny = synth::ldm_layout(SynthSize::Tiny);
        let mut meta = BTreeMap::new();
        meta.insert(
            crate::model::ldm::META_UNET_HEADS.into(),
            "[2, 4, 4]".into(),
        );
        meta.insert(crate::model::ldm::META_CLIP_HEADS.into(), "2".into());
        meta.insert(crate::model::ldm::META_UNET_SAMPLE_SIZE.into(), "8".into());
        assert_eq!(
            LdmLayout::infer(&ldm_shapes(&tiny), &meta, None, p).unwrap(),
            tiny
        );
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sdtrace-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        let f = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        a.dims() == b.dims()
            && f(a)
                .iter()
                .zip(f(b))
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn tiny_model_round_trips_in_f32_and_f16() {
        let layout = synth::ldm_layout(SynthSize::Tiny);
        let unet = synth::unet_weights(&layout.unet, 3).unwrap();
        let vae = synth::vae_weights(&synth::vae_config(SynthSize::Tiny), 3 ^ 0x0056_4145).unwrap();
        let clip = synth::clip_weights(&layout.clip, 3 ^ 0x434c_4950).unwrap();
        for dtype in [DType::F32, DType::F16] {
            let path = tmp(&format!("tiny-{dtype:?}.safetensors"));
            synth::write_checkpoint_file(&path, SynthSize::Tiny, 3, dtype).unwrap();
            let ck = Arc::new(Checkpoint::open(&path).unwrap());
            let l = ck.layout(None).unwrap();
            assert_eq!(l, layout);
            let report = ck.check(&l, false).unwrap();
            assert_eq!(report.used, unet.len() + vae.len() + clip.len());
            assert_eq!((report.ema, report.ignored), (0, 0));
            assert_eq!(
                report.dtypes.keys().collect::<Vec<_>>(),
                [&format!("{dtype:?}").to_uppercase()]
            );
            for (c, weights) in [
                (Component::Unet, &unet),
                (Component::TextEncoder, &clip),
                (Component::Vae, &vae),
            ] {
                let vb = ck.var_builder(&l, c, dtype, &Device::Cpu);
                for (name, want) in weights {
                    let got = vb.get(want.dims(), name).unwrap();
                    assert!(same(&got, &want.to_dtype(dtype).unwrap()), "{name}");
                }
            }
            ck.load_models(
                &l,
                dtype,
                &Device::Cpu,
                Numerics::PYTORCH,
                AttentionImpl::Full,
            )
            .unwrap();
        }
    }

    /// The SDXL single file `synth --size sdxl-tiny --format ldm` writes (the webui layout: fused
    /// in-projection, transposed text projection, `label_emb`) loads to the very tensors of the
    /// diffusers folder of the same seed — every one, bit for bit in f32 and as their f16
    /// rounding in f16 — and the UNet, both text encoders and the VAE built from either compute
    /// the same bits.
    #[test]
    fn sdxl_single_file_loads_the_folders_tensors() {
        use crate::model::unet::Added;
        use crate::probe::Probe;
        let dir = tempfile::tempdir().unwrap();
        synth::write_model(dir.path(), SynthSize::SdxlTiny, 7).unwrap();
        let dev = Device::Cpu;
        let files = [
            (Component::Unet, "unet/diffusion_pytorch_model.safetensors"),
            (Component::TextEncoder, "text_encoder/model.safetensors"),
            (Component::TextEncoder2, "text_encoder_2/model.safetensors"),
            (Component::Vae, "vae/diffusion_pytorch_model.safetensors"),
        ];
        for dtype in [DType::F32, DType::F16] {
            let path = dir.path().join(format!("xl-{dtype:?}.safetensors"));
            synth::write_checkpoint_file(&path, SynthSize::SdxlTiny, 7, dtype).unwrap();
            let ck = Arc::new(Checkpoint::open(&path).unwrap());
            let open_clip: Vec<String> = ck
                .shapes()
                .into_keys()
                .filter(|k| k.starts_with(SDXL_OPENCLIP_PREFIX))
                .collect();
            assert!(
                open_clip.iter().any(|k| k.ends_with("attn.in_proj_weight"))
                    && !open_clip.iter().any(|k| k.contains("q_proj")),
                "OpenCLIP's in-projection is fused: {open_clip:?}"
            );
            let l = ck.layout(None).unwrap();
            assert_eq!(l, synth::ldm_layout(SynthSize::SdxlTiny));
            assert_eq!(l.vae.scaling_factor, 0.13025);
            let report = ck.check(&l, false).unwrap();
            // OpenCLIP's logit scale.
            assert_eq!((report.ignored, report.ema), (1, 0));
            let mut n = 0;
            for (c, file) in files {
                let folder = candle_core::safetensors::load(dir.path().join(file), &dev).unwrap();
                assert_eq!(
                    folder.len(),
                    required_weights(&l, c).unwrap().len(),
                    "{file}"
                );
                let vb = ck.var_builder(&l, c, dtype, &dev);
                for (name, want) in &folder {
                    let got = vb.get(want.dims(), name).unwrap();
                    assert!(same(&got, &want.to_dtype(dtype).unwrap()), "{file}: {name}");
                    n += 1;
                }
            }
            assert!(n > 300, "{n} tensors");
        }
        // Forward passes from both, f32.
        let path = dir.path().join("xl-F32.safetensors");
        let ck = Arc::new(Checkpoint::open(&path).unwrap());
        let l = ck.layout(None).unwrap();
        let (f32, num, full) = (DType::F32, Numerics::PYTORCH, AttentionImpl::Full);
        let file = ck.load_sdxl_models(&l, f32, &dev, num, full).unwrap();
        assert!(ck.load_models(&l, f32, &dev, num, full).is_err());
        let d = dir.path();
        let unet = UNet::load(&d.join(files[0].1), &l.unet, f32, &dev, num, full).unwrap();
        let te1 = ClipTextModel::load(&d.join(files[1].1), &l.clip, f32, &dev).unwrap();
        let clip2 = l.clip2.as_ref().unwrap();
        let te2 = ClipTextModel::load(&d.join(files[2].1), clip2, f32, &dev).unwrap();
        let vae = Vae::load(&d.join("vae"), f32, &dev).unwrap();
        assert_eq!(vae.config(), file.vae.config());
        let probe = Probe::disabled();
        let ids = Tensor::new(&[[49406u32, 320, 1125, 49407, 49407]], &dev).unwrap();
        for (a, b) in [(&te1, &file.text_encoder), (&te2, &file.text_encoder_2)] {
            let (ha, pa) = a.forward_sdxl(&ids, &probe).unwrap();
            let (hb, pb) = b.forward_sdxl(&ids, &probe).unwrap();
            assert!(same(&ha, &hb));
            assert_eq!(pa.is_some(), pb.is_some());
            if let (Some(pa), Some(pb)) = (pa, pb) {
                assert!(same(&pa, &pb));
            }
        }
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 64), &dev).unwrap();
        let added = Added {
            text_embeds: Tensor::randn(0f32, 1.0, (2, 32), &dev).unwrap(),
            time_ids: Tensor::new(&[[64f32, 64.0, 0.0, 0.0, 64.0, 64.0]; 2], &dev).unwrap(),
        };
        let a = unet
            .forward_added(&x, 500.0, &ctx, Some(&added), &probe)
            .unwrap();
        let b = file
            .unet
            .forward_added(&x, 500.0, &ctx, Some(&added), &probe)
            .unwrap();
        assert!(same(&a, &b));
        let z = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev).unwrap();
        assert!(same(
            &vae.decode(&z, &probe).unwrap(),
            &file.vae.decode(&z, &probe).unwrap()
        ));
    }

    /// The real SDXL base shapes (nothing allocated): read back to SDXL base's configuration,
    /// with diffusers' tensor counts, and every weight has its own LDM key but q/k/v.
    #[test]
    fn sdxl_base_shapes_read_back() {
        let l = synth::ldm_layout(SynthSize::Sdxl);
        let n = |c| required_weights(&l, c).unwrap().len();
        // diffusers' SDXL base: 1680 UNet, 196 + 517 text-encoder and 248 VAE tensors.
        assert_eq!(
            [
                Component::Unet,
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::Vae
            ]
            .map(n),
            [1680, 196, 517, 248]
        );
        let shapes = ldm_shapes(&l);
        assert_eq!(shapes.len(), 1680 + 196 + 517 + 248 - 32 * 4);
        let got =
            LdmLayout::infer(&shapes, &BTreeMap::new(), None, Path::new("xl.safetensors")).unwrap();
        assert_eq!(got, l);
        assert_eq!(got.family, Family::Sdxl);
        assert_eq!(
            shapes["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"],
            [3840, 1280]
        );
        assert_eq!(
            shapes["model.diffusion_model.label_emb.0.0.weight"],
            [1280, 2816]
        );
    }

    /// The SDXL refiner (OpenCLIP alone under `conditioner.embedders.0.model`, aesthetic-score
    /// `label_emb`) and half an SDXL file are refused with the file named.
    #[test]
    fn sdxl_refiners_and_broken_sdxl_files_are_refused() {
        let p = Path::new("refiner.safetensors");
        let none = BTreeMap::new();
        let base = ldm_shapes(&synth::ldm_layout(SynthSize::Sdxl));
        let mut refiner: Shapes = base
            .iter()
            .filter(|(k, _)| !k.starts_with("conditioner."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        refiner.insert(
            "model.diffusion_model.label_emb.0.0.weight".into(),
            vec![1536, 2560],
        );
        let e = LdmLayout::infer(&refiner, &none, None, p).unwrap_err();
        assert!(matches!(e, CheckpointError::Refiner { .. }), "{e}");
        refiner.insert(
            "conditioner.embedders.0.model.token_embedding.weight".into(),
            vec![49408, 1280],
        );
        let e = LdmLayout::infer(&refiner, &none, None, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refiner.safetensors")
                && e.contains("SDXL refiner")
                && e.contains("conditioner.embedders.0.model"),
            "{e}"
        );
        let mut half = base.clone();
        half.retain(|k, _| !k.starts_with("conditioner.embedders.1."));
        let e = LdmLayout::infer(&half, &none, None, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conditioner.embedders.1.model.token_embedding.weight"),
            "{e}"
        );
        // SD 1.x's text tower with a label embedding (a class-conditioned model).
        let mut sd1 = ldm_shapes(&synth::ldm_layout(SynthSize::Sd15));
        sd1.insert(
            "model.diffusion_model.label_emb.0.0.weight".into(),
            vec![1280, 1024],
        );
        let e = LdmLayout::infer(&sd1, &none, None, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label embedding"), "{e}");
    }

    #[test]
    fn openclip_text_encoders_round_trip() {
        let mut layout = synth::ldm_layout(SynthSize::Tiny);
        layout.tower = TextTower::OpenClip;
        layout.clip.activation = ClipActivation::GeluErf;
        let clip = synth::clip_weights(&layout.clip, 11).unwrap();
        let unet = synth::unet_weights(&layout.unet, 1).unwrap();
        let vae = synth::vae_weights(&synth::vae_config(SynthSize::Tiny), 2).unwrap();
        let path = tmp("openclip.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert(crate::model::ldm::META_UNET_HEADS.into(), "[2,4,4]".into());
        meta.insert(crate::model::ldm::META_CLIP_HEADS.into(), "2".into());
        meta.insert(crate::model::ldm::META_UNET_SAMPLE_SIZE.into(), "8".into());
        write_checkpoint(
            &path,
            &layout,
            &[
                (Component::Unet, &unet),
                (Component::TextEncoder, &clip),
                (Component::Vae, &vae),
            ],
            DType::F32,
            meta,
        )
        .unwrap();
        let ck = Arc::new(Checkpoint::open(&path).unwrap());
        let l = ck.layout(None).unwrap();
        assert_eq!(l.tower, TextTower::OpenClip);
        assert_eq!(l.clip, layout.clip);
        let report = ck.check(&l, false).unwrap();
        // The unused last layer and the projection.
        assert_eq!(report.ignored, 13);
        let vb = ck.var_builder(&l, Component::TextEncoder, DType::F32, &Device::Cpu);
        for (name, want) in &clip {
            assert!(same(&vb.get(want.dims(), name).unwrap(), want), "{name}");
        }
    }

    #[test]
    fn key_problems_are_listed_with_counts() {
        let layout = synth::ldm_layout(SynthSize::Tiny);
        let unet = synth::unet_weights(&layout.unet, 3).unwrap();
        let vae = synth::vae_weights(&synth::vae_config(SynthSize::Tiny), 4).unwrap();
        let clip = synth::clip_weights(&layout.clip, 5).unwrap();
        let mut t = to_ldm(
            &layout,
            &[
                (Component::Unet, &unet),
                (Component::TextEncoder, &clip),
                (Component::Vae, &vae),
            ],
            DType::F32,
        )
        .unwrap();
        let removed: Vec<String> = t
            .keys()
            .filter(|k| k.contains("output_blocks.2."))
            .cloned()
            .collect();
        for k in &removed {
            t.remove(k);
        }
        let one = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        t.insert("model_ema.decay".into(), one.clone());
        t.insert("alphas_cumprod".into(), one.clone());
        t.insert(
            format!("{OPENAI_CLIP_PREFIX}embeddings.position_ids"),
            one.clone(),
        );
        t.insert("lora_te_text_model_encoder.alpha".into(), one.clone());
        t.insert(
            "model.diffusion_model.conv_in.weight".into(),
            Tensor::zeros((32, 4, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let bad = t[&format!("{}time_embed.0.weight", crate::model::ldm::UNET_PREFIX)]
            .narrow(0, 0, 64)
            .unwrap();
        t.insert(
            format!("{}time_embed.0.weight", crate::model::ldm::UNET_PREFIX),
            bad,
        );
        let path = tmp("broken.safetensors");
        let mut meta = std::collections::HashMap::new();
        meta.insert(
            crate::model::ldm::META_UNET_HEADS.to_string(),
            "[2,4,4]".to_string(),
        );
        meta.insert(
            crate::model::ldm::META_CLIP_HEADS.to_string(),
            "2".to_string(),
        );
        safetensors::serialize_to_file(t.iter(), Some(meta), &path).unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        let l = ck.layout(None).unwrap();
        let e = ck.check(&l, false).unwrap_err();
        let CheckpointError::Keys { keys, .. } = &e else {
            panic!("{e}")
        };
        let KeyProblems {
            missing,
            misshapen,
            unknown,
        } = keys.as_ref();
        assert_eq!(missing.len(), removed.len());
        assert_eq!(misshapen.len(), 1, "{misshapen:?}");
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        let text = e.to_string();
        assert!(text.contains("broken.safetensors"), "{text}");
        assert!(
            text.contains(&format!("{} missing: ", removed.len())),
            "{text}"
        );
        assert!(text.contains(" more"), "{text}");
        assert!(
            text.contains("time_embed.0.weight is [64, 32], expected [128, 32]"),
            "{text}"
        );
        assert!(
            text.contains("2 unknown") && text.contains("--ignore-unknown-keys"),
            "{text}"
        );
    }

    #[test]
    fn pickles_and_other_files_are_refused() {
        for (name, bytes) in [
            ("a.ckpt", &b"PK\x03\x04rest of a zip"[..]),
            ("b.safetensors", &b"\x80\x02}q\x00(X"[..]),
            ("c.ckpt", &b"\x10\x00\x00\x00\x00\x00\x00\x00{}"[..]),
        ] {
            let p = tmp(name);
            std::fs::write(&p, bytes).unwrap();
            let e = Checkpoint::open(&p).unwrap_err();
            assert!(matches!(e, CheckpointError::Pickle { .. }), "{name}: {e}");
            let t = e.to_string();
            assert!(
                t.contains(name) && t.contains("safetensors") && t.contains("code"),
                "{t}"
            );
        }
        let p = tmp("d.safetensors");
        std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\x00\x00{").unwrap();
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(matches!(e, CheckpointError::NotSafetensors { .. }), "{e}");
        let e = Checkpoint::open(&tmp("absent.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("absent.safetensors") && e.contains("cannot open"),
            "{e}"
        );
    }
}
