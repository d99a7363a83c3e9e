"""The SDXL-structured tiny model `sdtrace synth --size sdxl-tiny` writes, loaded by diffusers'
StableDiffusionXLPipeline offline: every weight file matches the module it is loaded into, and a
generation runs; the same model as one webui-layout file (`--format ldm`) converts, by diffusers'
own single-file code, to the folder's weights. `sdtrace record` and `sdtrace.record` refuse SDXL with a message until the SDXL
pipeline lands (issue #25)."""

import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdtrace
from helpers import sdtrace_bin

diffusers = pytest.importorskip("diffusers")



@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("xl") / "model"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(out), "--size", "sdxl-tiny"], check=True, capture_output=True)
    return out


def test_diffusers_loads_the_sdxl_tiny_folder_with_no_missing_keys(xl_dir, tmp_path):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(xl_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for name, file in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model"), ("text_encoder_2", "model")]:
        weights = load_file(xl_dir / name / f"{file}.safetensors")
        module = getattr(pipe, name)
        # transformers names a CLIPTextModel's state without the `text_model.` prefix its files use
        ours = {k.removeprefix("text_model.") if name == "text_encoder" else k for k in weights}
        theirs = set(module.state_dict())
        assert theirs == ours, (name, sorted(theirs - ours)[:5], sorted(ours - theirs)[:5])
        for k, v in module.state_dict().items():
            src = weights.get(k, weights.get(f"text_model.{k}"))
            assert torch.equal(v, src), (name, k)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.vae.config.scaling_factor == 0.13025
    assert pipe.unet.config.addition_embed_type == "text_time"
    img = pipe("a lighthouse", negative_prompt="blurry", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(1), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()

    with pytest.raises(sdtrace.SdtraceError, match="SDXL"):
        sdtrace.record(pipe, tmp_path / "xl.sdt")
    r = subprocess.run([sdtrace_bin(), "record", "--model", str(xl_dir), "--size", "64x64", "-q", "--no-png",
                        "-o", str(tmp_path / "xl.sdt")], capture_output=True, text=True)
    assert r.returncode == 2 and "SDXL" in r.stderr and not (tmp_path / "xl.sdt").exists()


def test_diffusers_loads_the_sdxl_tiny_single_file_to_the_folders_weights(xl_dir, tmp_path):
    """`synth --size sdxl-tiny --format ldm` writes the webui's SDXL layout: diffusers' own
    single-file converter (fused in-projection split, text projection transposed, label_emb)
    loads it, offline with the folder as config, to exactly the folder's weights."""
    ckpt = tmp_path / "xl.safetensors"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(ckpt), "--size", "sdxl-tiny", "--format", "ldm"],
                   check=True, capture_output=True)
    folder = diffusers.StableDiffusionXLPipeline.from_pretrained(str(xl_dir), local_files_only=True)
    single = diffusers.StableDiffusionXLPipeline.from_single_file(str(ckpt), config=str(xl_dir), local_files_only=True)
    # diffusers tells SDXL's two text encoders apart by their widths, which the tiny model's are
    # equal in (32): its text_encoder_2 is checked with the OpenCLIP converter itself below.
    for name in ["unet", "vae", "text_encoder"]:
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert set(a) == set(b), (name, sorted(set(a) ^ set(b))[:5])
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    a = folder.text_encoder_2.state_dict()
    b = convert_open_clip_checkpoint(folder.text_encoder_2, load_file(ckpt), prefix="conditioner.embedders.1.model.")
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert torch.equal(a[k], b[k]), ("text_encoder_2", k)
