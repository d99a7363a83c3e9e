"""The webui extension (scripts/sdtrace_webui.py → `sdtrace.webui`) on the LDM-structured tiny
model from the single-file checkpoint `sdtrace synth --format ldm`, driven through a stand-in of
the webui's txt2img path (python/tests/fakes/modules: Script runner, ImageRNG, the CFG denoiser
and its callbacks, per-image VAE decode, hires fix): the image unchanged, the keys of `sdtrace
record --a1111-cond-uncond`, cond/uncond rows, the header, hires as its own block, and errors
that never reach the generation."""

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import sdtrace
from helpers import sdtrace_bin

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROMPT, NEGATIVE = "a lighthouse at dusk", "blurry"



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("safetensors")
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("webui")
    ckpt, folder = d / "tiny.safetensors", d / "tiny"
    subprocess.run([sdtrace_bin(), "synth", "--out", str(ckpt), "--format", "ldm"], check=True, capture_output=True)
    subprocess.run([sdtrace_bin(), "synth", "--out", str(folder)], check=True, capture_output=True)
    return ckpt, folder


@pytest.fixture(scope="module")
def webui(files):
    """The fake `modules` package, the tiny model as the webui holds it, and the extension's
    script loaded from its file the way the webui loads extension scripts."""
    ckpt, folder = files
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "fakes"))
    try:
        from transformers import CLIPTokenizer

        import ldm_tiny
        from ldm_tiny import openai_clip_tokenizer_files
        from modules import processing, rng, script_callbacks, scripts, sd_hijack, shared

        model = ldm_tiny.load(ckpt)
        vocab, merges = openai_clip_tokenizer_files(folder.parent)
        tok = CLIPTokenizer(str(vocab), str(merges))
        model.cond_stage_model = processing.FrozenCLIPEmbedderWithCustomWords(
            processing.FrozenCLIPEmbedder(model.cond_stage_model.transformer, tok)
        )
        spec = importlib.util.spec_from_file_location("sdtrace_webui_script", os.path.join(ROOT, "scripts", "sdtrace_webui.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        script = module.SdtraceScript()
        script.args_from, script.args_to = 0, 3
        from modules import sd_hijack_optimizations

        yield SimpleNamespace(
            model=model, processing=processing, rng=rng, callbacks=script_callbacks, shared=shared, hijack=sd_hijack,
            runner=scripts.ScriptRunner([script]), script=script, ldm=ldm_tiny, optimizations=sd_hijack_optimizations,
        )
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] in ("modules", "k_diffusion") or m == "ldm_tiny"]:
            del sys.modules[name]
        sys.path.remove(os.path.join(HERE, "fakes"))
        sys.path.remove(HERE)


def generate(w, folder=None, capture="light", enabled=True, **kw):
    p = w.processing.StableDiffusionProcessingTxt2Img(
        w.model, w.runner, [enabled, capture, str(folder) if folder else "sdtrace"], PROMPT, NEGATIVE, **kw
    )
    return p, w.processing.process_images(p)


def trace_in(folder):
    paths = sorted(f for f in os.listdir(folder) if f.endswith(".sdt"))
    return [sdtrace.open(os.path.join(folder, f)) for f in paths]


def clean(w):
    assert not torch.overrides._get_current_function_mode_stack(), "a TorchFunctionMode was left entered"
    return (
        all(not m._forward_hooks and not m._forward_pre_hooks for m in w.model.modules())
        and "first" in vars(w.rng.ImageRNG) and w.rng.ImageRNG.first.__qualname__ == "ImageRNG.first"
        and w.processing.sd_samplers.create_sampler.__qualname__ == "create_sampler"
    )


def test_image_unchanged_hooks_removed(webui, tmp_path):
    _, plain = generate(webui, enabled=False)
    for capture in ("off", "light", "full"):
        _, images = generate(webui, tmp_path / capture, capture)
        assert all(torch.equal(a, b) for a, b in zip(images, plain)), capture
        assert clean(webui)
        (t,) = trace_in(tmp_path / capture)
        assert t.run_end["status"] == "complete"


def test_keys_are_those_of_sdtrace_record_a1111(webui, files, tmp_path):
    generate(webui, tmp_path)
    (t,) = trace_in(tmp_path)
    ours = {(r.key, r.step, r.eval) for r in t}
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(files[0]), "--prompt", PROMPT, "--negative", NEGATIVE, "--steps", "3",
         "--size", "64x64", "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler", "--a1111-cond-uncond",
         "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    theirs = {(r.key, r.step, r.eval) for r in sdtrace.open(rust)}
    assert len(theirs) > 100
    assert ours == theirs, (sorted(ours - theirs, key=str)[:20], sorted(theirs - ours, key=str)[:20])


def eps_direct(w, trace, step, context):
    inner = w.processing.CompVisDenoiser(w.model)
    x = trace.payload("sampler.x", step=step, as_="torch")
    sigma = inner.get_sigmas(3)[step].reshape(1)
    with torch.no_grad():
        return w.model.apply_model(x / (sigma**2 + 1) ** 0.5, inner.sigma_to_t(sigma).float(), context)


@pytest.mark.parametrize("batched,forge", [(True, False), (False, False), (True, True)])
def test_cond_and_uncond_rows(webui, tmp_path, batched, forge):
    """The webui batches [cond; uncond] (or calls them separately, cond first), Forge [uncond;
    cond] with row labels: `sampler.eps.cond` is the UNet's output for the prompt in every
    case — a swapped pair fails here."""
    webui.shared.opts.batch_cond_uncond = batched
    webui.shared.forge_batching = forge
    try:
        p, _ = generate(webui, tmp_path, "full")
    finally:
        webui.shared.opts.batch_cond_uncond = True
        webui.shared.forge_batching = False
    (t,) = trace_in(tmp_path)
    for step in range(3):
        c = eps_direct(webui, t, step, p.c)
        u = eps_direct(webui, t, step, p.uc)
        got_c = t.payload("sampler.eps.cond", step=step, as_="torch")
        got_u = t.payload("sampler.eps.uncond", step=step, as_="torch")
        assert torch.allclose(got_c, c, atol=1e-5) and torch.allclose(got_u, u, atol=1e-5), step
        assert not torch.allclose(got_c, u, atol=1e-5)
    assert {r.eval for r in t if r.key.startswith("unet.") and r.step == 0} == ({0} if batched else {0, 1})
    assert t.header["settings"]["numerics"]["batch_cond_uncond"] is batched


def test_header_names_the_webuis_numerics(webui, tmp_path):
    w = webui
    w.shared.opts.eta_noise_seed_delta = 31337
    w.shared.cmd_opts.opt_sdp_attention = True
    try:
        p = w.processing.StableDiffusionProcessingTxt2Img(w.model, w.runner, [True, "light", str(tmp_path)], PROMPT + " my-style", NEGATIVE, seed=5)
        p.extra_network_data = {"lora": [SimpleNamespace(items=["detail", "0.8"])]}
        w.processing.process_images(p)
    finally:
        w.shared.opts.eta_noise_seed_delta = 0
        w.shared.cmd_opts.opt_sdp_attention = False
    (t,) = trace_in(tmp_path)
    assert os.path.basename(t.path) == "5_0.sdt"
    s = t.header["settings"]
    host = s["host"]
    assert (s["rng"], s["seed"], s["steps"], s["sampler"], s["cfg_scale"]) == ("torch-cpu", 5, 3, "euler", 7.0)
    assert host["sampler_name"] == "Euler"
    assert s["a1111"]["ensd"] == 31337
    assert host["flags"]["opt_sdp_attention"] is True and host["flags"]["precision"] == "full"
    assert host["cross_attention_optimization"] == "none"
    assert host["extra_networks"] == [{"type": "lora", "name": "detail", "weights": ["0.8"]}]
    assert host["embeddings"] == ["my-style"]
    assert "[cond; uncond]" in s["numerics"]["cond_uncond"]


def test_rng_source_names(webui):
    from sdtrace import webui as ext

    assert ext._rng_spec("NV", torch.device("cpu")) == "a1111-nv"
    assert ext._rng_spec("CPU", torch.device("cpu")) == "torch-cpu"
    assert [ext.sampler_name(*a) for a in [("Euler",), ("DPM++ 2M", "Karras"), ("DPM++ 2M", "Automatic"), ("Heun",)]] == [
        "euler", "dpmpp-2m-karras", "dpmpp-2m", "Heun"
    ]


def test_one_trace_per_batch_and_hires_as_its_own_block(webui, tmp_path):
    generate(webui, tmp_path / "iter", n_iter=2, seed=3)
    assert [os.path.basename(t.path) for t in trace_in(tmp_path / "iter")] == ["3_0.sdt", "4_1.sdt"]
    _, plain = generate(webui, enabled=False, enable_hr=True, hr_steps=4, denoising_strength=0.5)
    _, images = generate(webui, tmp_path / "hr", "full", enable_hr=True, hr_steps=4, denoising_strength=0.5)
    assert all(torch.equal(a, b) for a, b in zip(images, plain))
    (t,) = trace_in(tmp_path / "hr")
    assert t.run_end["status"] == "complete"
    first = t.header["settings"]["host"]["hires"]["first_step"]
    assert first == 4
    steps = {r.step for r in t if r.key == "sampler.x"}
    # First pass: steps 0..2 and its final latent at 3; hires (the webui draws its noise before
    # before_hr): 4 steps from `first_step` (of a schedule of 4 / 0.5 = 8), its final x after.
    assert steps == {0, 1, 2, 3, first, first + 1, first + 2, first + 3, first + 4}
    assert {r.step for r in t if r.key == "noise.initial"} == {None, first}
    assert {r.step for r in t if r.key == "unet.conv_in"} == {0, 1, 2, first, first + 1, first + 2, first + 3}
    # The first pass's final latent is what the hires pass started from: upscaled, plus its
    # noise at the schedule's σ.
    x3 = t.payload("sampler.x", step=3, as_="torch")
    up = torch.nn.functional.interpolate(x3, scale_factor=2, mode="nearest")
    sigma = webui.processing.CompVisDenoiser(webui.model).get_sigmas(8)[4]
    start = up + t.payload("noise.initial", step=first, as_="torch") * sigma
    assert torch.allclose(t.payload("sampler.x", step=first, as_="torch"), start, atol=1e-5)
    assert not torch.allclose(x3, t.payload("sampler.x", step=2, as_="torch"), atol=1e-3)
    # The image is the hires pass's decode (inside the hires pass, before post_sample).
    assert t.payload("image", as_="numpy").shape[-1] == 128
    assert t.payload("vae.decoder", as_="numpy").shape[-1] == 128


def test_second_order_samplers_are_numbered_by_step(webui, tmp_path, monkeypatch):
    """Heun evaluates the model twice per step (k-diffusion's callback between the two), the
    last step, to σ = 0, once: records are numbered by the callback's step i, eval = the
    evaluation within the step, while the webui's own `sampling_step` lags."""
    seen, steps_seen = [], []
    real = webui.processing.sd_samplers.KDiffusionSampler.callback_state

    def callback_state(self, d):
        seen.append({k: d[k].clone() if torch.is_tensor(d[k]) else d[k] for k in ("i", "x", "denoised")})
        return real(self, d)

    monkeypatch.setattr(webui.processing.sd_samplers.KDiffusionSampler, "callback_state", callback_state)
    webui.callbacks.on_cfg_denoiser(lambda params: steps_seen.append(params.sampling_step))
    try:
        _, plain = generate(webui, enabled=False, sampler_name="Heun")
        steps_seen.clear()
        seen.clear()
        _, images = generate(webui, tmp_path, "full", sampler_name="Heun")
    finally:
        webui.callbacks.callbacks["cfg_denoiser"].pop()
    assert all(torch.equal(a, b) for a, b in zip(images, plain))
    assert steps_seen == [0, 0, 0, 1, 1], "the stand-in's sampling_step lags as the webui's does"
    (t,) = trace_in(tmp_path)
    evals = {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)}
    at = lambda key: {(r.step, r.eval) for r in t if r.key == key}
    assert at("sampler.x") == evals | {(3, 0)}
    assert at("sampler.denoised") == evals == at("sampler.eps.cond") == at("unet.conv_in") == at("unet.mid_block")
    assert t.header["settings"]["sampler"] == "Heun" and t.run_end["steps_completed"] == 3
    x = lambda step, e=0: t.payload("sampler.x", step=step, eval=e, as_="torch")
    den = lambda step, e=0: t.payload("sampler.denoised", step=step, eval=e, as_="torch")
    # Eval 0 of step i is what k-diffusion's callback i gets.
    assert [d["i"] for d in seen] == [0, 1, 2]
    for d in seen:
        assert torch.equal(x(d["i"]), d["x"]) and torch.equal(den(d["i"]), d["denoised"])
    # Eval 1 is the Euler prediction at σ_{i+1}, where the second evaluation runs.
    sigmas = webui.processing.CompVisDenoiser(webui.model).get_sigmas(3)
    for i in (0, 1):
        predicted = x(i) + (x(i) - den(i)) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        assert torch.allclose(x(i, 1), predicted, atol=1e-5), i
        assert not torch.allclose(x(i, 1), x(i + 1), atol=1e-4), i


def test_a_failing_recorder_never_reaches_the_generation(webui, tmp_path, monkeypatch, caplog):
    _, plain = generate(webui, enabled=False)
    from sdtrace import writer

    real = writer.Writer.tensor

    def broken(self, key, x):
        if key == "sampler.denoised":
            raise RuntimeError("disk full")
        return real(self, key, x)

    monkeypatch.setattr(writer.Writer, "tensor", broken)
    with caplog.at_level(logging.WARNING):
        _, images = generate(webui, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(images, plain))
    assert clean(webui)
    assert "disk full" in caplog.text and "generation goes on" in caplog.text
    assert "Error running" not in caplog.text, "nothing reached the webui's script runner"
    (t,) = trace_in(tmp_path)
    assert t.run_end["status"] == "failed" and "disk full" in t.run_end["reason"]


def test_an_unsupported_model_is_recorded_with_pipeline_points_only(webui, tmp_path, caplog):
    unet = webui.model.model.diffusion_model
    unet.label_emb = torch.nn.Linear(1, 1)  # SDXL's class embedding: not SD 1.x/2.x
    try:
        with caplog.at_level(logging.WARNING):
            _, images = generate(webui, tmp_path)
    finally:
        del unet.label_emb
    (t,) = trace_in(tmp_path)
    keys = set(t.keys())
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.")) for k in keys)
    assert {"noise.initial", "text.cond", "sampler.x", "sampler.eps.cond", "sampler.denoised", "image"} <= keys
    assert "pipeline points only" in t.header["settings"]["host"]["skipped"]
    assert "pipeline points only" in caplog.text


def test_a_bad_capture_setting_skips_recording_not_the_image(webui, tmp_path, caplog):
    _, plain = generate(webui, enabled=False)
    with caplog.at_level(logging.WARNING):
        _, images = generate(webui, tmp_path, capture="bogus")
    assert all(torch.equal(a, b) for a, b in zip(images, plain))
    assert "not recording this batch" in caplog.text and "bogus" in caplog.text
    assert clean(webui)


def test_cross_host_agreement_with_sdtrace_record(webui, files, tmp_path):
    """The same weights, prompt, seed and sampler through the webui path and through
    `sdtrace record --a1111-cond-uncond --rng torch-cpu` agree key by key at f32 tolerances."""
    generate(webui, tmp_path / "webui", capture="full")
    (t,) = trace_in(tmp_path / "webui")
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [sdtrace_bin(), "record", "--model", str(files[0]), "--prompt", PROMPT, "--negative", NEGATIVE, "--steps", "3",
         "--size", "64x64", "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler", "--a1111-cond-uncond",
         "--capture", "full", "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    report = sdtrace.compare(rust, t.path, tol="rel=1e-4,abs=1e-6")
    assert report["verdict"]["passed"], report["verdict"]["summary"]
    assert report["verdict"]["exit_code"] == 0
    # Not vacuous: the same comparison at the default, tighter tolerance names a drift of f32
    # size (HF CLIP and PyTorch kernels vs candle's), and the final images are the same.
    tight = sdtrace.compare(rust, t.path)
    assert not tight["verdict"]["passed"] and "over tolerance" in tight["verdict"]["summary"], tight["verdict"]
    assert "visually identical" in report["verdict"]["summary"]


def test_a_generation_that_raises_leaves_no_hooks_and_a_failed_trace(webui, tmp_path, monkeypatch):
    """The webui skips `postprocess` after an error but closes `p` (txt2img runs it in
    `with closing(p)`): the open batch is closed there."""
    from contextlib import closing

    def broken(z):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(webui.model, "decode_first_stage", broken)
    p = webui.processing.StableDiffusionProcessingTxt2Img(webui.model, webui.runner, [True, "light", str(tmp_path)], PROMPT, NEGATIVE)
    with pytest.raises(RuntimeError, match="out of memory"):
        with closing(p):
            webui.processing.process_images(p)
    assert p.closed and "close" not in vars(p)
    assert clean(webui)
    (t,) = trace_in(tmp_path)
    assert t.run_end["status"] == "failed" and "before the batch was postprocessed" in t.run_end["reason"]


def test_a_webui_trace_is_a_first_class_trace(webui, files, tmp_path):
    """info, ls, export and report work on it unchanged; report names each side's recorder."""
    generate(webui, tmp_path / "w", capture="full")
    (t,) = trace_in(tmp_path / "w")
    exe = sdtrace_bin()
    run = lambda *args: subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    assert run("info", t.path).returncode == 0
    assert "unet.mid_block" in run("ls", t.path).stdout
    assert run("export", t.path, "image", tmp_path / "image.png").returncode == 0
    assert run("export", t.path, "sampler.x", tmp_path / "x.npy", "--step", 1).returncode == 0
    rust = tmp_path / "rust.sdt"
    subprocess.run(
        [exe, "record", "--model", str(files[0]), "--prompt", PROMPT, "--negative", NEGATIVE, "--steps", "3", "--size", "64x64",
         "--seed", "1", "--cfg", "7", "--rng", "torch-cpu", "--sampler", "euler", "--a1111-cond-uncond", "-q", "--no-png", "-o", str(rust)],
        check=True, capture_output=True,
    )
    report = run("report", rust, t.path, "--tol", "rel=1e-4,abs=1e-6")
    assert report.returncode == 0, report.stdout + report.stderr
    first = report.stdout.splitlines()[0]
    assert "[sdtrace record]" in first and "[webui]" in first, first


def attention_shapes(w, **kw):
    """{sdtrace key: sorted distinct (batch·heads, queries, keys)} of every UNet attention call in
    an unrecorded generation."""
    shapes, handles = {}, []
    for name, m in w.model.model.diffusion_model.named_modules():
        if isinstance(m, w.ldm.CrossAttention):
            key = sdtrace.keys.from_ldm(f"model.diffusion_model.{name}")

            def pre(module, args, kwargs, key=key):
                x = args[0]
                context = kwargs.get("context", args[1] if len(args) > 1 else None)
                m_tokens = x.shape[1] if context is None else context.shape[1]
                d = module.to_q.out_features // module.heads
                shapes.setdefault(key, set()).add((x.shape[0] * module.heads, x.shape[1], m_tokens, d))

            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        generate(w, enabled=False, **kw)
    finally:
        for h in handles:
            h.remove()
    return {k: sorted(v, key=lambda s: s[1]) for k, v in shapes.items()}


def doggettx_slices(bh, n, m, d, free):
    """The slices the webui's Doggettx attention cuts n queries into (f32)."""
    needed = bh * n * m * 4 * 2.5
    steps = 2 ** math.ceil(math.log2(needed / free)) if needed > free else 1
    return len(range(0, n, n // steps))


def subquad_blocks(bh, n, m, d, free):
    """The (query chunk, key chunk) blocks of the webui's sub-quadratic attention (f32)."""
    threshold = int(free * 0.7)
    if bh * 4 * n * m <= threshold:
        return math.ceil(n / 1024)
    chunk = max(min(int(math.sqrt(m)), m), threshold // (bh * 4 * 2 * d))
    return math.ceil(n / 1024) * (1 if m <= chunk else len(range(0, m, chunk)))


def split_attention(webui, name):
    undo = webui.optimizations.apply(webui.ldm.CrossAttention, name)
    free = webui.shared.free_memory
    try:
        yield webui
    finally:
        undo()
        webui.shared.free_memory = free


@pytest.fixture
def doggettx(webui):
    yield from split_attention(webui, "Doggettx")


@pytest.fixture
def subquad(webui):
    yield from split_attention(webui, "sub-quadratic")


def test_split_attention_slices_per_layer_are_observed(doggettx, tmp_path):
    """Doggettx cuts each layer's queries by the free memory at the call: two "cards" with
    different free memory record different slice counts per layer (in the run end: they are
    observed during the first UNet call of each pass, after the header is written)."""
    w = doggettx
    shapes = attention_shapes(w, enable_hr=True, hr_steps=2)
    assert len(shapes) >= 4 and all(len(v) == 2 for v in shapes.values())
    biggest = max(bh * n * m * 10 for (bh, n, m, _), _ in shapes.values())  # f32 × 2.5
    cards = {"roomy": 8 << 30, "tight": biggest // 3}
    runs = {}
    for card, free in cards.items():
        w.shared.free_memory = free
        _, plain = generate(w, enabled=False, enable_hr=True, hr_steps=2)
        _, images = generate(w, tmp_path / card, enable_hr=True, hr_steps=2)
        assert all(torch.equal(a, b) for a, b in zip(images, plain)), card
        assert clean(w)
        (t,) = trace_in(tmp_path / card)
        assert t.run_end["status"] == "complete"
        assert t.header["settings"]["host"]["cross_attention_optimization"] == "Doggettx"
        runs[card] = t.run_end
        for name, at in (("attention_slices", 0), ("attention_slices_hires", 1)):
            want = {k: doggettx_slices(*v[at], free) for k, v in shapes.items()}
            assert t.run_end[name] == want, (card, name)
    assert set(runs["roomy"]["attention_slices"].values()) == {1}
    tight = runs["tight"]["attention_slices"]
    assert max(tight.values()) == 4 and min(tight.values()) == 1, tight
    assert max(runs["tight"]["attention_slices_hires"].values()) > 4
    # The report names the first layer whose slices differ among the runs' differences.
    (a,), (b,) = trace_in(tmp_path / "roomy"), trace_in(tmp_path / "tight")
    report = json.dumps(sdtrace.compare(a.path, b.path))
    assert "run_end.attention_slices[unet." in report, report[:2000]


def test_sub_quadratic_key_chunks_per_layer_are_observed(subquad, tmp_path):
    """Sub-quadratic attention cuts the keys into chunks when q·kᵀ would not fit in 70 % of the
    free memory: one `baddbmm` per block, no softmax on that path."""
    w = subquad
    shapes = attention_shapes(w)
    (bh, n, m, d), = max(shapes.values(), key=lambda v: v[0][1] * v[0][2])
    for card, free in {"roomy": 8 << 30, "tight": bh * 4 * n * m // 4}.items():
        w.shared.free_memory = free
        _, plain = generate(w, enabled=False)
        _, images = generate(w, tmp_path / card)
        assert all(torch.equal(a, b) for a, b in zip(images, plain)), card
        (t,) = trace_in(tmp_path / card)
        want = {k: subquad_blocks(*v[0], free) for k, v in shapes.items()}
        assert t.run_end["attention_slices"] == want, card
        assert set(want.values()) == {1} if card == "roomy" else max(want.values()) > 1, want


def test_attention_observation_leaves_nothing_when_the_attention_raises(doggettx, tmp_path):
    """Too little memory for 64 slices: the webui's Doggettx raises inside the first UNet call;
    the generation fails with the webui's own error, no mode or hook is left behind."""
    from contextlib import closing

    w = doggettx
    w.shared.free_memory = 1024
    p = w.processing.StableDiffusionProcessingTxt2Img(w.model, w.runner, [True, "light", str(tmp_path)], PROMPT, NEGATIVE)
    with pytest.raises(RuntimeError, match="Not enough memory"):
        with closing(p):
            w.processing.process_images(p)
    assert clean(w)
    (t,) = trace_in(tmp_path)
    assert t.run_end["status"] == "failed"


def test_no_attention_slices_without_a_split_optimisation(webui, tmp_path):
    generate(webui, tmp_path)
    (t,) = trace_in(tmp_path)
    assert "attention_slices" not in t.run_end
