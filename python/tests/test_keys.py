"""`sdtrace.keys`: the LDM module map (one Rust table, shared with the checkpoint loader) from
Python — the documented SD 1.x/2.x pairs, the architecture read off the tiny single-file
checkpoint `sdtrace synth --format ldm` writes, and refusal of other model families."""

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
    with pytest.raises(sdtrace.SdtraceError, match="sd1"):
        keys.LdmMap("sdxl")


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
        "vae_levels": 4,
        "vae_layers_per_block": 1,
        "text": "openai-clip",
        "text_layers": 2,
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


def test_other_families_are_refused_with_what_to_do():
    sdxl = ["model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.input_blocks.0.0.weight"]
    with pytest.raises(sdtrace.SdtraceError, match="pipeline points only"):
        keys.LdmMap.from_names(sdxl)
    with pytest.raises(sdtrace.SdtraceError, match="SD 1.x/2.x"):
        keys.LdmMap.from_names(["double_blocks.0.img_attn.qkv.weight"])
