"""The ComfyUI nodes (`sdtrace.comfyui`, installed from hosts/comfyui) on the LDM-structured tiny
model loaded from the single-file checkpoint `sdtrace synth --format ldm` writes, driven through
a stand-in of ComfyUI's ModelPatcher / CFGGuider / wrapper chain / VAE (python/tests/fakes):
keys as `sdtrace record` names them, the image unchanged, cond/uncond rows by ComfyUI's own
labels whatever the batching, hooks gone after the run, and errors that never reach the user's
generation."""

import logging
import os
import subprocess
import sys

import pytest
import torch

import sdtrace
from helpers import sdtrace_bin

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS, SEED = 3, 7



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("safetensors")
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("ldm") / "tiny.safetensors"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(path), "--format", "ldm"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def host(ckpt):
    """The fake `comfy` package importable, the tiny LDM model, and the nodes module."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "fakes"))
    try:
        import ldm_tiny
        import comfy.model_patcher
        import comfy.sample
        import comfy.samplers
        import comfy.sd

        from sdtrace import comfyui

        model = ldm_tiny.load(ckpt)
        yield {"ldm": model, "comfy": comfy, "nodes": comfyui}
    finally:
        for name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.") or m == "ldm_tiny"]:
            del sys.modules[name]
        sys.path.remove(os.path.join(HERE, "fakes"))
        sys.path.remove(HERE)


def conds(ldm):
    """[[tensor, {}]] conditioning as CLIPTextEncode gives it, from the tiny CLIP."""
    text = ldm.cond_stage_model.transformer
    with torch.no_grad():
        out = []
        for ids in ([49406, 320, 1125, 49407], [49406, 49407]):
            tokens = torch.tensor([ids + [49407] * (77 - len(ids))])
            out.append([[text(input_ids=tokens).last_hidden_state, {}]])
    return out


def generate(host, model_patcher, batch=True, order=(1, 0), text=None):
    """What KSampler + VAE Decode do: noise, sigmas, CFGGuider.sample, decode."""
    comfy, ldm = host["comfy"], host["ldm"]
    comfy.samplers.BATCH_COND_UNCOND = batch
    comfy.samplers.ORDER = order
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, SEED)
    base = model_patcher.model
    sigmas = comfy.samplers.get_sigmas(base, STEPS)
    positive, negative = text or conds(ldm)
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.0)
    sampler = comfy.samplers.KSAMPLER(comfy.samplers.sample_euler)
    seen = []
    samples = guider.sample(noise, latent, sampler, sigmas, callback=lambda i, x0, x, n: seen.append(i), seed=SEED)
    return samples, seen


def patcher(host):
    comfy, ldm = host["comfy"], host["ldm"]
    base = comfy.samplers.BaseModel(ldm.model.diffusion_model, ldm.alphas_cumprod)
    return comfy.model_patcher.ModelPatcher(base)


def record_run(host, tmp_path, capture="light", **kw):
    nodes = host["nodes"]
    vae = host["comfy"].sd.VAE(host["ldm"].first_stage_model)
    (recorded,) = nodes.SdtraceRecord().patch(patcher(host), folder=str(tmp_path), prefix="t", capture=capture)
    samples, seen = generate(host, recorded, **kw)
    (image,) = nodes.SdtraceVAEDecode().decode(vae, {"samples": samples})
    paths = sorted(p for p in os.listdir(tmp_path) if p.endswith(".sdt"))
    return samples, image, seen, os.path.join(tmp_path, paths[-1])


def plain_run(host, **kw):
    vae = host["comfy"].sd.VAE(host["ldm"].first_stage_model)
    samples, seen = generate(host, patcher(host), **kw)
    return samples, vae.decode(samples), seen


def no_hooks(host):
    ldm = host["ldm"]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in ldm.modules())


def test_image_unchanged_and_hooks_removed(host, tmp_path):
    samples0, image0, seen0 = plain_run(host)
    for capture in ("off", "light", "full"):
        samples, image, seen, _ = record_run(host, tmp_path / capture, capture=capture)
        assert torch.equal(samples, samples0), capture
        assert torch.equal(image, image0), capture
        assert seen == seen0 == list(range(STEPS)), "the user's callback still runs"
        assert no_hooks(host)


def test_keys_are_those_of_sdtrace_record(host, ckpt, tmp_path):
    _, _, _, path = record_run(host, tmp_path)
    trace = sdtrace.open(path)
    keys = {(r.key, r.step, r.eval) for r in trace}
    for k in ("noise.initial", "text.cond", "text.uncond", "vae.post_quant_conv", "vae.decoder", "image"):
        assert (k, None, 0) in keys, k
    for i in range(STEPS):
        for k in ("sampler.x", "sampler.eps.cond", "sampler.eps.uncond", "sampler.denoised"):
            assert (k, i, 0) in keys, (k, i)
    assert ("sampler.x", STEPS, 0) in keys
    # The UNet points at step 0 are exactly those the candle pipeline records for this checkpoint.
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(ckpt), "--prompt", "a", "--steps", "2", "--size", "64x64", "--seed", "1",
         "--rng", "torch-cpu", "--sampler", "euler", "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    ours = {k for k, s, e in keys if k.startswith("unet.") and s == 0}
    theirs = {r.key for r in sdtrace.open(rust) if r.key.startswith("unet.") and r.step == 0}
    assert len(theirs) > 40
    assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))
    s = trace.header["settings"]
    assert (s["seed"], s["steps"], s["sampler"], s["rng"], s["cfg_scale"]) == (SEED, STEPS, "euler", "torch-cpu", 7.0)
    assert s["host"]["name"] == "comfyui"
    assert "cond_or_uncond" in s["numerics"]["cond_uncond"]
    assert trace.run_end["status"] == "complete"


def eps_direct(host, trace, step, context):
    """The UNet's ε at `step` for one conditioning, computed directly."""
    ldm = host["ldm"]
    base = patcher(host).model
    x = trace.payload("sampler.x", step=step, as_="torch")
    sigma = host["comfy"].samplers.get_sigmas(base, STEPS)[step].reshape(1)
    with torch.no_grad():
        return ldm.model.diffusion_model(x / (sigma**2 + 1) ** 0.5, base.sigma_to_t(sigma).float(), context)


@pytest.mark.parametrize("batch,order", [(True, (1, 0)), (True, (0, 1)), (False, (1, 0)), (False, (0, 1))])
def test_cond_and_uncond_rows_follow_comfyuis_labels(host, tmp_path, batch, order):
    """Whatever the batch order and whether cond and uncond share a call, `sampler.eps.cond` is
    the UNet's output for the prompt — a swapped pair fails here."""
    _, _, _, path = record_run(host, tmp_path, capture="full", batch=batch, order=order)
    trace = sdtrace.open(path)
    positive, negative = conds(host["ldm"])
    for step in range(STEPS):
        cond, uncond = eps_direct(host, trace, step, positive[0][0]), eps_direct(host, trace, step, negative[0][0])
        got_c = trace.payload("sampler.eps.cond", step=step, as_="torch")
        got_u = trace.payload("sampler.eps.uncond", step=step, as_="torch")
        assert torch.allclose(got_c, cond, atol=1e-5) and torch.allclose(got_u, uncond, atol=1e-5), (step, batch, order)
        assert not torch.allclose(got_c, uncond, atol=1e-5), "cond and uncond must differ for this test to mean anything"
    evals = {r.eval for r in trace if r.key.startswith("unet.") and r.step == 0}
    assert evals == ({0} if batch else {0, 1})


def test_a_failing_recorder_never_reaches_the_generation(host, tmp_path, monkeypatch, caplog):
    samples0, image0, _ = plain_run(host)
    from sdtrace import writer

    real = writer.Writer.tensor

    def broken(self, key, x):
        if key.startswith("unet.up_blocks"):
            raise RuntimeError("disk full")
        return real(self, key, x)

    monkeypatch.setattr(writer.Writer, "tensor", broken)
    with caplog.at_level(logging.WARNING, logger="sdtrace"):
        samples, image, _, path = record_run(host, tmp_path)
    assert torch.equal(samples, samples0) and torch.equal(image, image0)
    assert no_hooks(host)
    assert "disk full" in caplog.text and "generation goes on" in caplog.text
    trace = sdtrace.open(path)
    assert trace.run_end["status"] == "failed" and "disk full" in trace.run_end["reason"]


def test_an_unsupported_model_is_recorded_with_pipeline_points_only(host, tmp_path, caplog):
    comfy, ldm = host["comfy"], host["ldm"]

    class Other(torch.nn.Module):
        """A UNet with other module names (as SD3/Flux-style models have)."""

        def __init__(self, inner):
            super().__init__()
            self.blocks = torch.nn.ModuleList([inner])

        def forward(self, x, t, context):
            return self.blocks[0](x, t, context)

    base = comfy.samplers.BaseModel(Other(ldm.model.diffusion_model), ldm.alphas_cumprod)
    (recorded,) = host["nodes"].SdtraceRecord().patch(comfy.model_patcher.ModelPatcher(base), folder=str(tmp_path), prefix="o")
    with caplog.at_level(logging.WARNING, logger="sdtrace"):
        generate(host, recorded)
    host["nodes"]._close_pending("test over")
    path = os.path.join(tmp_path, next(p for p in os.listdir(tmp_path) if p.endswith(".sdt")))
    trace = sdtrace.open(path)
    keys = {r.key for r in trace}
    assert not any(k.startswith("unet.") for k in keys)
    assert {"noise.initial", "sampler.x", "sampler.eps.cond", "sampler.denoised"} <= keys
    assert "pipeline points only" in trace.header["settings"]["host"]["skipped"]
    assert "pipeline points only" in caplog.text


def test_a_bad_capture_setting_is_refused_when_the_node_runs(host):
    with pytest.raises(ValueError, match="capture 'bogus'"):
        host["nodes"].SdtraceRecord().patch(patcher(host), capture="bogus")


def test_the_repository_loads_as_a_custom_node_package():
    """ComfyUI imports custom_nodes/<name>/__init__.py as a package and reads its mappings."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(HERE))
    spec = importlib.util.spec_from_file_location("sdtrace_custom_nodes", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.NODE_CLASS_MAPPINGS) == {"SdtraceRecord", "SdtraceVAEDecode"}
    for cls in module.NODE_CLASS_MAPPINGS.values():
        assert callable(getattr(cls(), cls.FUNCTION)) and "required" in cls.INPUT_TYPES()


def test_cross_host_agreement_with_sdtrace_record(host, ckpt, tmp_path):
    """ComfyUI's path (noise from the global CPU generator, [uncond; cond] in one batch, Euler
    on the model's σ schedule) and `sdtrace record --rng torch-cpu` (its default batching is
    [uncond; cond] too) agree key by key at f32 tolerances; the text encoder's layers run
    before sampling in ComfyUI and are not in its trace."""
    from transformers import CLIPTokenizer

    import ldm_tiny

    vocab, merges = ldm_tiny.openai_clip_tokenizer_files(tmp_path)
    tok = CLIPTokenizer(str(vocab), str(merges))
    clip = host["ldm"].cond_stage_model.transformer

    def encode(text):  # CLIPTextEncode: [BOS] ids [EOS], padded with EOS to 77; the last layer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([[tok.bos_token_id] + ids + [tok.eos_token_id] * (76 - len(ids))])
        with torch.no_grad():
            return [[clip(input_ids=tokens).last_hidden_state, {}]]

    nodes = host["nodes"]
    vae = host["comfy"].sd.VAE(host["ldm"].first_stage_model)
    (recorded,) = nodes.SdtraceRecord().patch(patcher(host), folder=str(tmp_path / "c"), prefix="c", capture="full")
    samples, _ = generate(host, recorded, text=(encode("a lighthouse at dusk"), encode("blurry")))
    nodes.SdtraceVAEDecode().decode(vae, {"samples": samples})
    (path,) = [os.path.join(tmp_path / "c", p) for p in os.listdir(tmp_path / "c")]
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(ckpt), "--prompt", "a lighthouse at dusk", "--negative", "blurry", "--steps", str(STEPS),
         "--size", "64x64", "--seed", str(SEED), "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler", "--capture", "full",
         "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    report = sdtrace.compare(rust, path, tol="rel=1e-4,abs=1e-6", allow_missing="text_encoder.*")
    assert report["verdict"]["passed"], report["verdict"]["summary"]
    assert "visually identical" in report["verdict"]["summary"]
    a = {(r.key, r.step, r.eval) for r in sdtrace.open(rust) if not r.key.startswith("text_encoder.")}
    b = {(r.key, r.step, r.eval) for r in sdtrace.open(path)}
    assert a == b, (sorted(a - b, key=str)[:10], sorted(b - a, key=str)[:10])
