"""The SDXL-structured tiny model `sdtrace synth --size sdxl-tiny` writes, loaded by diffusers'
StableDiffusionXLPipeline offline: every weight file matches the module it is loaded into, and a
generation runs; the same model as one webui-layout file (`--format ldm`) converts, by diffusers'
own single-file code, to the folder's weights; `sdtrace.record` records it under the keys
`sdtrace record` writes, and the two implementations agree within the cross-implementation
tolerance."""

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



PROMPT = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", num_inference_steps=3, height=64, width=96, guidance_scale=7.0)
# As test_diffusers.py: candle's and PyTorch's kernels round differently.
CROSS_TOL = "rel=5e-5,abs=1e-4"


@pytest.fixture()
def pipe(xl_dir):
    p = diffusers.StableDiffusionXLPipeline.from_pretrained(str(xl_dir), local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, **kw):
    return pipe(generator=torch.Generator().manual_seed(1), output_type="np", **{**PROMPT, **kw}).images


def ids(path):
    return {(r.key, r.step, r.eval) for r in sdtrace.open(path)}


def record_rust(xl_dir, out, *extra):
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(xl_dir), "--prompt", PROMPT["prompt"], "--negative", PROMPT["negative_prompt"],
         "--steps", "3", "--size", "96x64", "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler",
         "--sampler-impl", "diffusers", "--prompt-syntax", "plain", "-q", "--no-png", "-o", str(out), *extra],
        check=True, capture_output=True,
    )


def test_sdxl_records_the_keys_of_sdtrace_record_and_agrees_with_it(pipe, xl_dir, tmp_path):
    plain = run(pipe)
    # transformers installs output-capturing hooks of its own on the first call; ours must go.
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in pipe.text_encoder_2.named_modules()}
    with sdtrace.record(pipe, tmp_path / "py.sdt"):
        img = run(pipe)
    assert np.array_equal(img, plain), "recording changed the image"
    assert type(pipe) is diffusers.StableDiffusionXLPipeline
    assert hooks == {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in pipe.text_encoder_2.named_modules()}
    record_rust(xl_dir, tmp_path / "rust.sdt")
    py_ids, rust_ids = ids(tmp_path / "py.sdt"), ids(tmp_path / "rust.sdt")
    assert py_ids == rust_ids, (sorted(py_ids - rust_ids, key=str), sorted(rust_ids - py_ids, key=str))
    for key in ("text_encoder_2.text_projection", "text.pooled.cond", "unet.add_embedding"):
        assert any(k == key for k, _, _ in py_ids), key
    py = sdtrace.open(tmp_path / "py.sdt").header["settings"]
    rs = sdtrace.open(tmp_path / "rust.sdt").header["settings"]
    for fact in ("original_size", "crop_coords_top_left", "target_size", "time_ids", "zero_negative"):
        assert py["sdxl"][fact] == rs["sdxl"][fact], fact
    assert py["sdxl"]["time_ids"] == [64, 96, 0, 0, 64, 96]
    rep = sdtrace.compare(tmp_path / "py.sdt", tmp_path / "rust.sdt", tol=CROSS_TOL)
    v = rep["verdict"]
    assert v["passed"] and v["exit_code"] == 0, v["summary"]

    # Another crop: both sides condition on it, and still agree.
    with sdtrace.record(pipe, tmp_path / "py_crop.sdt"):
        run(pipe, crops_coords_top_left=(8, 16), original_size=(768, 1024))
    record_rust(xl_dir, tmp_path / "rust_crop.sdt", "--sdxl-crop", "8,16", "--sdxl-original-size", "1024x768")
    v = sdtrace.compare(tmp_path / "py_crop.sdt", tmp_path / "rust_crop.sdt", tol=CROSS_TOL)["verdict"]
    assert v["passed"], v["summary"]
    v = sdtrace.compare(tmp_path / "py.sdt", tmp_path / "rust_crop.sdt", tol=CROSS_TOL)["verdict"]
    assert not v["passed"], v["summary"]


def test_refiners_are_refused(pipe, tmp_path):
    pipe.register_to_config(requires_aesthetics_score=True)
    with pytest.raises(sdtrace.SdtraceError, match="refiner"):
        sdtrace.record(pipe, tmp_path / "r.sdt")


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
