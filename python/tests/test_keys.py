"""`sdtrace.keys`: the LDM module map (one Rust table, shared with the checkpoint loader) from
Python — the documented SD 1.x/2.x and SDXL pairs, the architecture read off the tiny
single-file checkpoints `sdtrace synth --format ldm` writes (SD and SDXL), and refusal of other
model families."""

import subprocess

import pytest

import sdtrace
from sdtrace import keys
from helpers import sdtrace_bin

PAIRS = [
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1", "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1"),
    ("unet.mid_block.attentions.0", "model.diffusion_model.middle_block.1"),
    ("unet.up_blocks.1.upsamplers.0", "model.diffusion_model.output_blocks.5.2"),
    ("unet.up_blocks.0.upsamplers.0", "model.diffusion_model.output_blocks.2.1"),
    ("unet.down_blocks.3", "model.diffusion_model.input_blocks.11"),
    ("unet.time_embedding", "model.diffusion_model.time_embed"),
    ("unet.conv_norm_out", "model.diffusion_model.out.0"),
    ("vae.decoder.up_blocks.2", "first_stage_model.decoder.up.1"),
    ("vae.decoder", "first_stage_model.decoder"),
    ("text_encoder.encoder.layers.11", "cond_stage_model.transformer.text_model.encoder.layers.11"),
]



@pytest.mark.parametrize("ours,ldm", PAIRS)
def test_sd_pairs_both_ways(ours, ldm):
    assert keys.to_ldm(ours) == ldm
    assert keys.from_ldm(ldm) == ours


def test_host_spellings_and_modules_without_a_key():
    assert keys.from_ldm("middle_block.1") == "unet.mid_block.attentions.0"
    assert keys.from_ldm("diffusion_model.output_blocks.5.2") == "unet.up_blocks.1.upsamplers.0"
    assert keys.from_ldm("cond_stage_model.wrapped.transformer.text_model.encoder.layers.0") == "text_encoder.encoder.layers.0"
    assert keys.from_ldm("cond_stage_model.model.transformer.resblocks.22") == "text_encoder.encoder.layers.22"
    for path in ["model.diffusion_model.input_blocks.0", "model.diffusion_model.out.1", "model.diffusion_model.input_blocks.1.0.in_layers", "nonsense", ""]:
        assert keys.from_ldm(path) is None, path
    for key in ["noise.initial", "sampler.x", "unet.down_blocks.7", "image"]:
        assert keys.to_ldm(key) is None, key
    assert keys.to_ldm("text_encoder.encoder.layers.3", keys.LdmMap("sd2")) == "cond_stage_model.model.transformer.resblocks.3"
    with pytest.raises(sdtrace.SdtraceError, match="sdxl"):
        keys.LdmMap("sd3")


def test_the_tiny_checkpoint_names_its_architecture_and_every_module_maps(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    ckpt = tmp_path / "tiny.safetensors"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(ckpt), "--format", "ldm"], check=True, capture_output=True)
    with safetensors.safe_open(str(ckpt), "np") as f:
        names = list(f.keys())
    m = keys.LdmMap.from_names(names)
    assert m.arch() == {
        "unet_attention": [True, True, False],
        "unet_layers_per_block": 2,
        "unet_label_emb": False,
        "vae_levels": 4,
        "vae_layers_per_block": 1,
        "text": "openai-clip",
        "text_layers": 2,
        "text2_layers": None,
    }
    # Every weight's owning module has a key, and the key maps back to that module.
    mapped = 0
    for name in names:
        module = name.rsplit(".", 1)[0]
        key = m.from_ldm(module)
        assert key is not None, name
        assert m.to_ldm(key) == module, name
        mapped += 1
    assert mapped == len(names) == 706
    # SD 1.x's paths do not fit the tiny model's three levels: the map is per architecture.
    assert m.to_ldm("unet.up_blocks.0.upsamplers.0") == "model.diffusion_model.output_blocks.2.1"
    assert m.to_ldm("unet.up_blocks.1.upsamplers.0") == "model.diffusion_model.output_blocks.5.2"
    assert m.to_ldm("unet.down_blocks.3") is None
    assert keys.to_ldm("unet.down_blocks.3") == "model.diffusion_model.input_blocks.11"


SDXL_PAIRS = [
    ("unet.add_embedding", "model.diffusion_model.label_emb.0"),
    ("unet.down_blocks.0.downsamplers.0", "model.diffusion_model.input_blocks.3.0"),
    ("unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2", "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2"),
    ("unet.up_blocks.0.attentions.2", "model.diffusion_model.output_blocks.2.1"),
    ("unet.up_blocks.0.upsamplers.0", "model.diffusion_model.output_blocks.2.2"),
    ("text_encoder.encoder.layers.11", "conditioner.embedders.0.transformer.text_model.encoder.layers.11"),
    ("text_encoder_2.encoder.layers.31", "conditioner.embedders.1.model.transformer.resblocks.31"),
    ("text_encoder_2.final_layer_norm", "conditioner.embedders.1.model.ln_final"),
]


@pytest.mark.parametrize("ours,ldm", SDXL_PAIRS)
def test_sdxl_pairs_both_ways(ours, ldm):
    m = keys.LdmMap("sdxl")
    assert keys.to_ldm(ours, m) == ldm
    assert keys.from_ldm(ldm, m) == ours


def test_the_sdxl_checkpoint_names_its_architecture_and_every_module_maps(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    ckpt = tmp_path / "xl.safetensors"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(ckpt), "--size", "sdxl-tiny", "--format", "ldm"], check=True, capture_output=True)
    with safetensors.safe_open(str(ckpt), "np") as f:
        names = list(f.keys())
    m = keys.LdmMap.from_names(names)
    assert m.arch() == {
        "unet_attention": [False, True, True],
        "unet_layers_per_block": 2,
        "unet_label_emb": True,
        "vae_levels": 4,
        "vae_layers_per_block": 1,
        "text": "openai-clip",
        "text_layers": 2,
        "text2_layers": 2,
    }
    for name in names:
        module = name.rsplit(".", 1)[0]
        key = m.from_ldm(module)
        assert key is not None, name
        assert m.to_ldm(key) == module, name
    assert any(n.endswith("attn.in_proj_weight") for n in names)
    # The webui's wrapped SDXL embedders.
    assert m.from_ldm("conditioner.embedders.1.wrapped.model.transformer.resblocks.1") == "text_encoder_2.encoder.layers.1"
    assert m.from_ldm("conditioner.embedders.0.wrapped.transformer.text_model.final_layer_norm") == "text_encoder.final_layer_norm"


def test_other_families_are_refused_with_what_to_do():
    # A label embedding on a UNet cut short, and the SDXL refiner's text tower.
    truncated = ["model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.input_blocks.0.0.weight"]
    with pytest.raises(sdtrace.SdtraceError, match="pipeline points only"):
        keys.LdmMap.from_names(truncated)
    with pytest.raises(sdtrace.SdtraceError, match="pipeline points only"):
        keys.LdmMap.from_names(["conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight"])
    with pytest.raises(sdtrace.SdtraceError, match="SD 1.x/2.x"):
        keys.LdmMap.from_names(["double_blocks.0.img_attn.qkv.weight"])
