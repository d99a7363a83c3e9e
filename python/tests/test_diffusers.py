"""`sdtrace.record` on a real diffusers StableDiffusionPipeline: the tiny model `sdtrace synth`
writes, loaded by diffusers offline, 3 Euler steps at 64×64 on the CPU."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

import sdtrace
from helpers import sdtrace_bin

diffusers = pytest.importorskip("diffusers")

PROMPT = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", num_inference_steps=3, height=64, width=64, guidance_scale=7.0)



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([sdtrace_bin(), "synth", "--out", str(out), "--size", "tiny"], check=True, capture_output=True)
    return out


@pytest.fixture()
def pipe(model_dir):
    p = diffusers.StableDiffusionPipeline.from_pretrained(
        str(model_dir), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    p.scheduler = diffusers.EulerDiscreteScheduler.from_config(p.scheduler.config)
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, **kw):
    args = {**PROMPT, **kw}
    return pipe(generator=torch.Generator().manual_seed(1), output_type="np", **args).images


def ids(path):
    return {(r.key, r.step, r.eval) for r in sdtrace.open(path)}


def test_the_image_is_bit_identical_with_capture_off_light_and_full(pipe, tmp_path):
    plain = run(pipe)
    for capture in ("off", "light", "full"):
        with sdtrace.record(pipe, tmp_path / f"{capture}.sdt", capture=capture):
            img = run(pipe)
        assert np.array_equal(img, plain), capture
    # Nothing is left behind: the class, the scheduler and every module are as they were.
    assert type(pipe) is diffusers.StableDiffusionPipeline
    assert "step" not in vars(pipe.scheduler) and "encode_prompt" not in vars(pipe)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.unet.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.text_encoder.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.vae.modules())


def test_keys_steps_and_evals_are_those_of_sdtrace_record(pipe, model_dir, tmp_path):
    with sdtrace.record(pipe, tmp_path / "py.sdt"):
        run(pipe)
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(model_dir), "--prompt", PROMPT["prompt"], "--negative", PROMPT["negative_prompt"],
         "--steps", "3", "--size", "64x64", "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler",
         "--prompt-syntax", "plain", "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    py_ids, rust_ids = ids(tmp_path / "py.sdt"), ids(rust)
    assert py_ids == rust_ids, (sorted(py_ids - rust_ids, key=str), sorted(rust_ids - py_ids, key=str))


def test_noise_header_and_payloads(pipe, tmp_path):
    path = tmp_path / "a.sdt"
    with sdtrace.record(pipe, path, capture="light") as rec:
        run(pipe)
    assert rec.status == "complete"
    t = sdtrace.open(path)
    s = t.header["settings"]
    assert (s["rng"], s["seed"], s["steps"], s["width"], s["sampler"], s["sampler_impl"]) == ("torch-cpu", 1, 3, 64, "euler", "diffusers")
    assert s["numerics"]["cond_uncond"] == "diffusers ([uncond; cond])" and s["cfg_rows"] == "uncond,cond"
    assert s["timesteps"] == [999.0, 499.5, 0.0] and s["init_sigma"] == s["sigmas"][0] and s["sigmas"][-1] == 0.0
    assert s["host"]["name"] == "diffusers" and s["host"]["versions"]["diffusers"] == diffusers.__version__
    assert t.run_end["status"] == "complete" and t.run_end["steps_completed"] == 3
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t.payload("noise.initial", as_="torch"), noise)
    # ε halves are the UNet's own output rows, [uncond; cond].
    eps_u = t.payload("sampler.eps.uncond", step=0, as_="torch")
    eps_c = t.payload("sampler.eps.cond", step=0, as_="torch")
    assert eps_u.shape == eps_c.shape == (1, 4, 8, 8) and not torch.equal(eps_u, eps_c)
    # The same run recorded twice judges identical.
    with sdtrace.record(pipe, tmp_path / "b.sdt"):
        run(pipe)
    rep = sdtrace.compare(path, tmp_path / "b.sdt")
    assert rep["verdict"]["class"] == "identical", rep["verdict"]["summary"]


def test_an_interrupted_call_leaves_a_valid_trace_marked_interrupted(pipe, tmp_path):
    def stop(p, i, t, kw):
        if i == 1:
            raise KeyboardInterrupt
        return kw

    path = tmp_path / "int.sdt"
    with pytest.raises(KeyboardInterrupt):
        with sdtrace.record(pipe, path):
            run(pipe, callback_on_step_end=stop)
    end = sdtrace.open(path).run_end
    assert end["status"] == "interrupted" and end["steps_completed"] == 2
    assert type(pipe) is diffusers.StableDiffusionPipeline
    assert all(not m._forward_hooks for m in pipe.unet.modules())
    # The pipeline works as before afterwards.
    assert run(pipe).shape == (1, 64, 64, 3)


def test_refusals(pipe, tmp_path):
    with pytest.raises(sdtrace.SdtraceError, match="one record block records one pipeline call"):
        with sdtrace.record(pipe, tmp_path / "twice.sdt"):
            run(pipe)
            run(pipe)
    assert sdtrace.open(tmp_path / "twice.sdt").run_end["status"] == "complete"
    with pytest.raises(sdtrace.SdtraceError, match="cannot write there"):
        sdtrace.record(pipe, tmp_path / "missing" / "x.sdt")
    with pytest.raises(sdtrace.SdtraceError, match="was not called"):
        with sdtrace.record(pipe, tmp_path / "never.sdt"):
            pass

    class Flux:
        transformer = object()

    with pytest.raises(sdtrace.SdtraceError, match="not an SD 1.x/2.x pipeline"):
        sdtrace.record(Flux(), tmp_path / "f.sdt")

    class XL:
        unet = vae = text_encoder = tokenizer = scheduler = text_encoder_2 = object()

    with pytest.raises(sdtrace.SdtraceError, match="SDXL pipeline without tokenizer_2"):
        sdtrace.record(XL(), tmp_path / "xl.sdt")


SCHEDULERS = {
    "euler": (diffusers.EulerDiscreteScheduler, {}),
    "dpmpp-2m-karras": (diffusers.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "ddim": (diffusers.DDIMScheduler, {}),
}
# candle's and PyTorch's kernels round differently (relative L2 up to ~2e-5 on this model, most
# of it where x̂₀ = x − σ·ε cancels); the f32 default (1.3e-6) is for one implementation.
CROSS_TOL = "rel=5e-5,abs=1e-4"


def record_rust(model_dir, out, sampler, impl):
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(model_dir), "--prompt", PROMPT["prompt"], "--negative", PROMPT["negative_prompt"],
         "--steps", "3", "--size", "64x64", "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", sampler,
         "--sampler-impl", impl, "--prompt-syntax", "plain", "-q", "--no-png", "-o", str(out)],
        check=True, capture_output=True,
    )


@pytest.mark.parametrize("sampler", sorted(SCHEDULERS))
def test_sdtrace_record_with_diffusers_schedulers_agrees_with_diffusers(pipe, model_dir, tmp_path, sampler):
    cls, kw = SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    with sdtrace.record(pipe, tmp_path / "py.sdt"):
        run(pipe)
    record_rust(model_dir, tmp_path / "same.sdt", sampler, "diffusers")
    assert ids(tmp_path / "py.sdt") == ids(tmp_path / "same.sdt")
    rep = sdtrace.compare(tmp_path / "py.sdt", tmp_path / "same.sdt", tol=CROSS_TOL)
    v = rep["verdict"]
    assert v["passed"] and v["exit_code"] == 0, v["summary"]
    py, rs = sdtrace.open(tmp_path / "py.sdt").header["settings"], sdtrace.open(tmp_path / "same.sdt").header["settings"]
    assert py["sampler"] == rs["sampler"] == sampler and py["timesteps"] == rs["timesteps"]
    assert py["cfg_rows"] == rs["cfg_rows"] == "uncond,cond"

    # The webuis' k-diffusion sampler: the VP schedulers start from noise·1, k-diffusion from
    # noise·σ₀, and the report blames the sampler at step 0, not a UNet layer. Euler (linspace)
    # differs from k-diffusion only by σ interpolation, below tolerance.
    record_rust(model_dir, tmp_path / "kd.sdt", sampler, "k-diffusion")
    v = sdtrace.compare(tmp_path / "py.sdt", tmp_path / "kd.sdt", tol=CROSS_TOL)["verdict"]
    if sampler == "euler":
        assert v["passed"], v["summary"]
    else:
        assert v["class"] == "sampler" and not v["passed"], v["summary"]
        assert "step 0 sampler.x" in v["summary"] and "settings.sampler_impl diffusers vs k-diffusion" in v["summary"]


@pytest.fixture(scope="module")
def sd2_dir(model_dir, tmp_path_factory):
    """The tiny model reshaped as SD 2.x is: linear attention projections, the text encoder's
    exact GELU (OpenCLIP), v-prediction with `leading` timesteps."""
    import json

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("sd2") / "model"
    shutil.copytree(model_dir, out)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(weights)
    for k, v in sd.items():
        if (".proj_in." in k or ".proj_out." in k) and k.endswith("weight") and v.ndim == 4:
            sd[k] = v[:, :, 0, 0].contiguous()
    save_file(sd, weights)

    def edit(path, **kw):
        cfg = json.loads(path.read_text())
        cfg.update(kw)
        path.write_text(json.dumps(cfg))

    edit(out / "unet" / "config.json", use_linear_projection=True)
    edit(out / "text_encoder" / "config.json", hidden_act="gelu")
    edit(out / "scheduler" / "scheduler_config.json", prediction_type="v_prediction", timestep_spacing="leading")
    return out


def test_sd2_v_prediction_agrees_across_implementations(sd2_dir, tmp_path):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(sd2_dir), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert pipe.unet.config.use_linear_projection and pipe.scheduler.config.prediction_type == "v_prediction"
    plain = run(pipe)
    with sdtrace.record(pipe, tmp_path / "py.sdt"):
        assert np.array_equal(run(pipe), plain)
    record_rust(sd2_dir, tmp_path / "rs.sdt", "euler", "diffusers")
    assert ids(tmp_path / "py.sdt") == ids(tmp_path / "rs.sdt")
    py = sdtrace.open(tmp_path / "py.sdt").header["settings"]
    rs = sdtrace.open(tmp_path / "rs.sdt").header["settings"]
    assert py["init_sigma"] == pytest.approx(rs["init_sigma"], rel=1e-6) and py["init_sigma"] > py["sigmas"][0]
    assert rs["sampler_params"]["prediction"] == "v_prediction"
    v = sdtrace.compare(tmp_path / "py.sdt", tmp_path / "rs.sdt", tol=CROSS_TOL)["verdict"]
    assert v["passed"], v["summary"]


def test_offloaded_pipelines_record_and_say_so(pipe, tmp_path):
    # accelerate's hooks as enable_model_cpu_offload / enable_sequential_cpu_offload leave them
    # (accelerate itself needs an accelerator to offload to; the recorder only reads the hooks).
    CpuOffload = type("CpuOffload", (), {})
    AlignDevicesHook = type("AlignDevicesHook", (), {})
    pipe.unet._hf_hook = CpuOffload()
    with sdtrace.record(pipe, tmp_path / "model.sdt"):
        run(pipe)
    del pipe.unet._hf_hook
    pipe.unet.conv_in._hf_hook = AlignDevicesHook()
    with sdtrace.record(pipe, tmp_path / "seq.sdt"):
        run(pipe)
    del pipe.unet.conv_in._hf_hook
    with sdtrace.record(pipe, tmp_path / "none.sdt"):
        run(pipe)
    got = [sdtrace.open(tmp_path / f"{n}.sdt").header["settings"]["host"]["offload"] for n in ("model", "seq", "none")]
    assert got == ["model", "sequential", None]
    assert ids(tmp_path / "model.sdt") == ids(tmp_path / "none.sdt")
