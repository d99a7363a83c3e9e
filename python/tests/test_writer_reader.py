"""The Python package writes, reads and judges traces with sdtrace's Rust code: what it writes
is what `sdtrace record` would store for the same bytes, and what it judges is what
`sdtrace report` says."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import sdtrace

HEADER = {"settings": {"model": "python test", "steps": 2, "seed": 7, "rng": "torch-cpu"}}


def write_run(path, capture="light", seed=0, steps=2, stop_after=None):
    """A small run: noise, two steps of sampler state and UNet outputs in f32, f16 and bf16,
    and an image. `stop_after` raises KeyboardInterrupt after that many steps."""
    g = torch.Generator().manual_seed(seed)
    with sdtrace.Writer(path, HEADER, capture) as w:
        w.step(None)
        x = torch.randn(1, 4, 8, 8, generator=g)
        w.tensor("noise.initial", x)
        w.tensor("text.cond", torch.randn(1, 77, 32, generator=g).to(torch.float16))
        for s in range(steps):
            if stop_after is not None and s == stop_after:
                raise KeyboardInterrupt
            w.step(s)
            w.tensor("sampler.x", x)
            w.tensor("unet.conv_in", torch.randn(2, 32, 8, 8, generator=g).to(torch.bfloat16))
            w.tensor("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", torch.randn(2, 16, 32, generator=g))
            eps = np.asarray(torch.randn(1, 4, 8, 8, generator=g))
            w.tensor("sampler.eps.cond", eps)
            x = x - 0.1 * torch.from_numpy(eps)
            w.steps_completed = s + 1
        w.step(None)
        w.tensor("image", torch.rand(1, 3, 64, 64, generator=g))
    return path


def test_round_trip_keeps_every_bit(tmp_path):
    path = write_run(tmp_path / "a.sdt", capture="light")
    t = sdtrace.open(path)
    assert t.header["settings"]["seed"] == 7
    assert t.header["sdtrace_version"] == sdtrace.__version__
    assert t.run_end["status"] == "complete" and t.damage is None
    # The light preset: payloads for noise/text/sampler/image, sketches for the UNet, and the
    # fine points (to_q) left out.
    assert t.keys() == ["noise.initial", "text.cond", "sampler.x", "unet.conv_in", "sampler.eps.cond", "image"]
    by_key = {(r.key, r.step): r for r in t}
    assert by_key[("unet.conv_in", 0)].fidelity == "sketch" and not by_key[("unet.conv_in", 0)].has_payload
    assert by_key[("text.cond", None)].dtype == "f16"
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    assert torch.equal(t.payload("noise.initial", as_="torch"), noise)
    assert np.array_equal(t.payload("noise.initial"), noise.numpy())
    text = torch.randn(1, 77, 32, generator=g).to(torch.float16)
    assert torch.equal(t.payload("text.cond", as_="torch"), text)
    assert t.payload("unet.conv_in", step=0) is None
    with pytest.raises(sdtrace.SdtraceError, match="no record 'vae.decoder'"):
        t.payload("vae.decoder")


def test_summaries_are_the_rust_summaries_of_the_same_bytes(tmp_path):
    path = write_run(tmp_path / "a.sdt", capture="full")
    t = sdtrace.open(path)
    for r in t:
        if r.has_payload and r.dtype != "bf16":
            assert r.summary == sdtrace.summarize(t.payload(r.key, r.step, r.eval)), r.key
    # bf16 travels as its bit patterns and comes back as a torch tensor.
    r = next(r for r in t if r.dtype == "bf16")
    back = t.payload(r.key, r.step, r.eval, as_="torch")
    assert back.dtype == torch.bfloat16
    assert r.summary == sdtrace.summarize(back)
    # The summary hashes the exact bytes: one flipped bit changes it.
    a = np.arange(16, dtype=np.float32)
    b = a.copy()
    b.view(np.uint32)[3] ^= 1
    assert sdtrace.summarize(a)["bits_hash"] != sdtrace.summarize(b)["bits_hash"]


def test_compare_passes_the_same_run_and_names_what_differs(tmp_path):
    a = write_run(tmp_path / "a.sdt")
    b = write_run(tmp_path / "b.sdt")
    rep = sdtrace.compare(a, b)
    assert rep["verdict"]["passed"] and rep["verdict"]["class"] == "identical"
    c = write_run(tmp_path / "c.sdt", seed=1)
    rep = sdtrace.compare(a, c, tol={"rel": 1e-3})
    assert not rep["verdict"]["passed"]
    assert rep["verdict"]["class"] == "noise-rng"
    assert rep["localisation"]["first_non_identical"] == "noise.initial"


def test_interrupted_and_truncated_runs_never_pass(tmp_path):
    a = write_run(tmp_path / "a.sdt")
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "int.sdt", stop_after=1)
    t = sdtrace.open(tmp_path / "int.sdt")
    assert t.run_end["status"] == "interrupted" and t.run_end["steps_completed"] == 1
    rep = sdtrace.compare(a, tmp_path / "int.sdt")
    assert rep["verdict"]["class"] == "incomplete" and rep["verdict"]["exit_code"] == 4
    # A truncated copy: read up to the damage, and incomplete.
    data = Path(a).read_bytes()
    cut = tmp_path / "cut.sdt"
    cut.write_bytes(data[: len(data) // 2])
    assert sdtrace.open(cut).damage is not None
    assert sdtrace.compare(a, cut)["verdict"]["exit_code"] == 4
    assert sdtrace.compare(a, cut, allow_missing="all")["verdict"]["passed"]


def test_an_error_in_the_run_closes_the_trace_marked_failed(tmp_path):
    path = tmp_path / "f.sdt"
    with pytest.raises(RuntimeError, match="boom"):
        with sdtrace.Writer(path, HEADER) as w:
            w.tensor("noise.initial", np.zeros((1, 4, 2, 2), np.float32))
            raise RuntimeError("boom")
    end = sdtrace.open(path).run_end
    assert end["status"] == "failed" and "boom" in end["reason"]


def test_a_host_adds_free_fields_to_the_run_end(tmp_path):
    w = sdtrace.Writer(tmp_path / "e.sdt", HEADER)
    with pytest.raises(sdtrace.SdtraceError, match="'status' is one of its own fields"):
        w.finish("complete", extra={"status": "mine"})
    w.finish("complete", extra={"attention_slices": {"unet.mid_block.attentions.0.transformer_blocks.0.attn1": 4}})
    end = sdtrace.open(tmp_path / "e.sdt").run_end
    assert end["status"] == "complete"
    assert end["attention_slices"] == {"unet.mid_block.attentions.0.transformer_blocks.0.attn1": 4}


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(sdtrace.SdtraceError, match="capture 'bogus'"):
        sdtrace.Writer(tmp_path / "x.sdt", HEADER, capture="bogus")
    with pytest.raises(sdtrace.SdtraceError, match="no_such_dir"):
        sdtrace.Writer(tmp_path / "no_such_dir" / "x.sdt", HEADER)
    with pytest.raises(sdtrace.SdtraceError, match="run header"):
        sdtrace._native.Recorder(str(tmp_path / "y.sdt"), "not json", "light")
    with pytest.raises(TypeError, match="complex64"):
        with sdtrace.Writer(tmp_path / "z.sdt", HEADER, "full") as w:
            w.tensor("noise.initial", np.zeros(3, np.complex64))
    w = sdtrace.Writer(tmp_path / "w.sdt", HEADER)
    w.finish()
    with pytest.raises(sdtrace.SdtraceError, match="already finished"):
        w.tensor("noise.initial", np.zeros(3, np.float32))
    # The exception names the file and carries the OS's reason, once (the error's chain).
    with pytest.raises(sdtrace.SdtraceError) as missing:
        sdtrace.open(tmp_path / "missing.sdt")
    text = str(missing.value)
    assert "missing.sdt: cannot open trace: " in text, text
    assert text.count("No such file or directory") == 1, text
    # A non-contiguous tensor is recorded as its values, not its storage.
    with sdtrace.Writer(tmp_path / "t.sdt", HEADER, "full") as w:
        w.tensor("noise.initial", torch.arange(12.0).reshape(3, 4).T)
    back = sdtrace.open(tmp_path / "t.sdt").payload("noise.initial")
    assert np.array_equal(back, np.arange(12.0, dtype=np.float32).reshape(3, 4).T)


def test_the_command_line_reads_python_traces(tmp_path):
    exe = os.environ.get("SDTRACE_BIN") or shutil.which("sdtrace")
    if not exe:
        pytest.skip("no sdtrace binary (tests/run sets SDTRACE_BIN)")
    a = write_run(tmp_path / "a.sdt")
    b = write_run(tmp_path / "b.sdt")
    assert subprocess.run([exe, "info", "--verify", str(a)], capture_output=True).returncode == 0
    out = subprocess.run([exe, "report", str(a), str(b)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: identical" in out.stdout
