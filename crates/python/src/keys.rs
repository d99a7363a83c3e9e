//! `sdtrace._native.LdmMap`: sdtrace-core's LDM module map for Python hosts (the webui, Forge,
//! ComfyUI), so they hook the modules the same table names that `sdtrace`'s checkpoint loader
//! reads weights by. Presets: `sd` (SD 1.x and 2.x at once), `sd1`, `sd2`, `sdxl` (SDXL base:
//! `conditioner.embedders.0/1` as `text_encoder`/`text_encoder_2`, `label_emb` as
//! `add_embedding`); or read off a host model's module/weight names with `LdmMap.from_names`.

use super::err;
use pyo3::prelude::*;
use sdtrace_core::ldm::{LdmArch, LdmMap, TextTower};

/// The LDM module map for one architecture.
#[pyclass(name = "LdmMap", module = "sdtrace._native", frozen)]
pub struct PyLdmMap {
    map: LdmMap,
    /// `None` for the combined `sd` preset.
    arch: Option<LdmArch>,
}

#[pymethods]
impl PyLdmMap {
    /// The map of a preset: `sd` (SD 1.x and 2.x: the same UNet and VAE names, either text
    /// tower), `sd1`, `sd2` or `sdxl`.
    #[new]
    #[pyo3(signature = (preset = "sd"))]
    fn new(preset: &str) -> PyResult<Self> {
        let arch = match preset {
            "sd" => None,
            "sd1" => Some(LdmArch::sd1()),
            "sd2" => Some(LdmArch::sd2()),
            "sdxl" => Some(LdmArch::sdxl()),
            _ => {
                return Err(err(format!(
                    "LdmMap preset '{preset}': expected sd, sd1, sd2 or sdxl, or use LdmMap.from_names(model names)"
                )));
            }
        };
        let map = arch.as_ref().map_or_else(LdmMap::sd, LdmMap::new);
        Ok(PyLdmMap { map, arch })
    }

    /// The map of the model whose LDM names (module or weight names rooted as in a checkpoint:
    /// `model.diffusion_model.…`, `first_stage_model.…`, `cond_stage_model.…`,
    /// `conditioner.embedders.N.…`) are `names`; each component present is read off its names,
    /// an absent one keeps SD's (SDXL's) values; an error if they do not describe an SD 1.x/2.x
    /// or SDXL base-structured model (the SDXL refiner, SD3, Flux, …).
    #[staticmethod]
    fn from_names(names: Vec<String>) -> PyResult<Self> {
        let arch = LdmArch::from_names(names.iter().map(String::as_str)).ok_or_else(|| {
            err(format!(
                "these {} names do not describe an SD 1.x/2.x/XL-structured LDM model (expected model.diffusion_model.input_blocks.* with a middle_block, and label_emb only with SDXL's text encoders; first_stage_model.decoder.up.*; cond_stage_model.transformer[.text_model].encoder.layers.* / cond_stage_model.model.transformer.resblocks.*, or SDXL base's conditioner.embedders.0.transformer.* and conditioner.embedders.1.model.*); record it with pipeline points only",
                names.len()
            ))
        })?;
        Ok(PyLdmMap {
            map: LdmMap::new(&arch),
            arch: Some(arch),
        })
    }

    /// The sdtrace key of an LDM module path, or None.
    #[allow(clippy::wrong_self_convention)] // the Python name `from_ldm` is the API
    fn from_ldm(&self, path: &str) -> Option<String> {
        self.map.from_ldm(path)
    }

    /// The LDM module path of an sdtrace key, or None.
    fn to_ldm(&self, key: &str) -> Option<String> {
        self.map.to_ldm(key)
    }

    /// The table's rows: (sdtrace key, LDM module path).
    fn entries(&self) -> Vec<(String, String)> {
        self.map
            .entries()
            .iter()
            .map(|e| (e.ours.clone(), e.ldm.clone()))
            .collect()
    }

    /// The architecture as a dict (None for the combined `sd` preset).
    fn arch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, pyo3::types::PyDict>>> {
        let Some(a) = &self.arch else {
            return Ok(None);
        };
        let d = pyo3::types::PyDict::new(py);
        d.set_item("unet_attention", a.unet_attention.clone())?;
        d.set_item("unet_layers_per_block", a.unet_layers_per_block)?;
        d.set_item("unet_label_emb", a.unet_label_emb)?;
        d.set_item("vae_levels", a.vae_levels)?;
        d.set_item("vae_layers_per_block", a.vae_layers_per_block)?;
        d.set_item(
            "text",
            match a.text {
                TextTower::OpenAi { .. } => "openai-clip",
                TextTower::OpenClip => "openclip",
            },
        )?;
        d.set_item("text_layers", a.text_layers)?;
        d.set_item("text2_layers", a.text2_layers)?;
        Ok(Some(d))
    }

    fn __repr__(&self) -> String {
        match &self.arch {
            None => "LdmMap('sd')".into(),
            Some(a) => format!("LdmMap({a:?})"),
        }
    }
}
