"""Recovery (compression/recover.py) on the tests' tiny pipeline: it learns, keeps the pruning, resumes exactly,
never touches the baseline, runs data-parallel, refuses bad requests; and through the app.

The tests that train for several steps, start processes or the app carry the slow marker (3-30 s each here)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from compression import CompressionSpec, Engine
from compression.build import state_dict_digest
from compression.recover import RecoveryConfig, main, pruned_copy, recover_, zero_masks
from compression.recover_data import WorldSource

HERE = Path(__file__).resolve().parent
FAST = RecoveryConfig(batch_size=4, lr=1e-3, warmup_steps=0, real_pool=16, checkpoint_every=2)
L1 = CompressionSpec(0.5, "l1-unstructured")


def test_spec_carries_recovery_and_keeps_every_old_key():
    plain = CompressionSpec(0.7)
    assert plain.to_dict() == dict(
        prune_amount=0.7, prune_method="l1-unstructured", prune_scope="all", quant_mode="fp32", bits=None, seed=0
    )
    spec = CompressionSpec(0.7, quant_mode="int8-weight", recover_steps=500, recover_data="prompts")
    assert spec.label == "L1 70% + recovered 500 steps, data-free + int8 weights"
    assert CompressionSpec.from_json(spec.to_json()) == spec and spec != dataclasses.replace(spec, recover_steps=499)
    with pytest.raises(ValueError, match="recover_data applies only when recover_steps > 0"):
        CompressionSpec(0.7, recover_data="prompts")
    with pytest.raises(ValueError, match="unknown recover_data"):
        CompressionSpec(0.7, recover_steps=5, recover_data="web")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kd_loss(pipe, unet, seed: int = 123) -> float:
    """Output-level distillation loss on a fixed batch the recovery never trains on (another seed)."""
    source = WorldSource(pipe, DDPMScheduler.from_config(pipe.scheduler.config), 16, 0, 1, seed, 0.0, 32, 16)
    b = source.batch(0)
    with torch.no_grad():
        return float(
            F.mse_loss(unet(b.noisy, b.timesteps, b.text).sample, pipe.unet(b.noisy, b.timesteps, b.text).sample)
        )


@pytest.mark.slow
def test_steps_lower_the_loss_keep_zeros_and_leave_the_baseline(tiny_pipe):
    digest = state_dict_digest(tiny_pipe.unet)
    student, _ = pruned_copy(tiny_pipe.unet, L1)
    masks = [(w.detach().clone(), m) for w, m in zero_masks(student)]
    before = _kd_loss(tiny_pipe, student)
    # The test pipeline's UNet is untrained: its predictions are not the data's, so the task loss would pull the
    # student away from it; distillation alone must bring it closer.
    distil = dataclasses.replace(FAST, loss_weights=(0.0, 1.0, 1.0))
    run = recover_(tiny_pipe, student, 6, "real", distil, show_bar=False)
    assert _kd_loss(tiny_pipe, student) < 0.8 * before
    assert run.losses["total"][-1] < run.losses["total"][0]
    assert run.zeros_after == run.zeros_before > 0  # to the weight
    for (old, mask), (new, _) in zip(masks, zero_masks(student)):
        assert not new[~mask].any() and not torch.equal(old[mask], new[mask])  # the zeros stayed, the rest learned
    assert state_dict_digest(tiny_pipe.unet) == digest
    assert not any(p.requires_grad for p in student.parameters()) and not student.training


def test_data_free_distils_on_prompts_alone(tiny_pipe):
    """No real data: the baseline draws the clean latents, its predictions are the only target."""
    student, _ = pruned_copy(tiny_pipe.unet, L1)
    free = dataclasses.replace(FAST, pool_size=4, pool_steps=2)
    prompts = ["a red circle on the left on a white background", "a blue square at the top on a black background"]
    run = recover_(tiny_pipe, student, 3, "prompts", free, prompts=prompts, show_bar=False)
    assert run.losses["task"] == [0.0] * 3 and all(v > 0 for v in run.losses["output_kd"])
    assert run.zeros_after == run.zeros_before


def test_structured_shapes_stay(tiny_pipe):
    student, _ = pruned_copy(tiny_pipe.unet, CompressionSpec(0.5, "l1-structured-channels"))
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert any(shapes[k] != v.shape for k, v in tiny_pipe.unet.state_dict().items())  # it did shrink
    recover_(tiny_pipe, student, 2, "real", FAST, show_bar=False)
    assert {k: v.shape for k, v in student.state_dict().items()} == shapes


@pytest.mark.slow
def test_resume_continues_exactly(tiny_pipe, tmp_path):
    whole, _ = pruned_copy(tiny_pipe.unet, L1)
    straight = recover_(tiny_pipe, whole, 4, "real", FAST, key="k", checkpoint_dir=tmp_path / "a", show_bar=False)
    first, _ = pruned_copy(tiny_pipe.unet, L1)
    recover_(tiny_pipe, first, 2, "real", FAST, key="k", checkpoint_dir=tmp_path / "b", show_bar=False)
    resumed, _ = pruned_copy(tiny_pipe.unet, L1)  # a new process would start from the pruned UNet again
    run = recover_(tiny_pipe, resumed, 4, "real", FAST, key="k", checkpoint_dir=tmp_path / "b", show_bar=False)
    assert run.resumed_from == 2 and run.losses == straight.losses
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another recovery"):
        recover_(tiny_pipe, resumed, 6, "real", FAST, key="other", checkpoint_dir=tmp_path / "b", show_bar=False)


def test_cancel_stops_between_steps_and_keeps_them(tiny_pipe, tmp_path):
    from compression.cancel import Cancelled, CancelToken

    token = CancelToken()
    student, _ = pruned_copy(tiny_pipe.unet, L1)
    rare = dataclasses.replace(FAST, checkpoint_every=100)  # the only checkpoint is the one the cancel writes

    def progress(fraction, text):
        if fraction >= 0.5:
            token.cancel("stop pressed")

    with pytest.raises(Cancelled, match="stop pressed"):
        recover_(tiny_pipe, student, 4, "real", rare, key="k", checkpoint_dir=tmp_path, progress=progress, cancel=token)
    assert [p.name for p in tmp_path.iterdir()] == ["step-0000002.pt"]


@pytest.mark.slow
def test_two_processes_match_one(tokenizer_dir, tmp_path):
    """torchrun, gloo on the CPU, world size 2 asserted; the same global batch split in two, gradients averaged by
    DDP: the result matches one process to float rounding (summation order). Tolerance: weights within 1e-5
    absolute after 3 steps at lr 1e-3 (1% of one step; measured 2.4e-6, Adam's normalised update magnifies
    rounding in tiny gradients), losses within 1e-5 relative (measured 1e-7)."""
    worker = str(HERE / "recover_worker.py")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), worker, str(tokenizer_dir), "3", str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, worker, str(tokenizer_dir), "3", str(one)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = torch.load(two, weights_only=True), torch.load(one, weights_only=True)
    assert (a["processes"], b["processes"]) == (2, 1)
    for k, v in b["student"].items():
        assert torch.allclose(a["student"][k], v, rtol=0.0, atol=1e-5), k
    assert a["losses"]["total"] == pytest.approx(b["losses"]["total"], rel=1e-5)


def test_bad_requests_get_clear_errors(tiny_pipe, tmp_path, capsys):
    with pytest.raises(ValueError, match="recover_steps must be an integer from 0"):
        CompressionSpec(0.5, recover_steps=-1)
    with pytest.raises(ValueError, match="needs pruning"):
        CompressionSpec(recover_steps=10)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        recover_(tiny_pipe, pruned_copy(tiny_pipe.unet, L1)[0], -3, "real", FAST)
    for argv, said in [
        (["--prune", "50", "--steps", "-5"], "--steps must be a whole number"),
        (["--prune", "50", "--method", "l0-magic", "--steps", "5"], "invalid choice: 'l0-magic'"),
        (["--model", "sd-1.5", "--prune", "30", "--steps", "10"], "recovering sd-1.5 on a CPU is refused"),
    ]:
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path)])
        assert said in capsys.readouterr().err
    # Through the engine, before any work (nothing is loaded: the engine names a hub model on this CPU).
    with pytest.raises(ValueError, match="on a CPU is refused"):
        Engine(tiny_pipe, "sd-1.5").compress(CompressionSpec(0.3, recover_steps=5, recover_data="prompts"))
    assert list(tmp_path.iterdir()) == []


def test_bundle_holds_a_recovered_unet(tiny_pipe, tmp_path, monkeypatch):
    from compression import recover
    from compression.export import load_unet, save_compressed

    monkeypatch.setattr(recover, "DEFAULT_CONFIG", FAST)  # the engine's recipe, smaller: a test-sized pool
    engine = Engine(tiny_pipe, "tiny-test", cache_size=1)
    spec = CompressionSpec(0.5, recover_steps=2)  # through the engine: prune -> recover -> (no) quantize
    result = save_compressed(tmp_path / "bundle", spec, engine=engine, sample=None)
    rec = result.manifest["recovery"]
    assert result.manifest["spec"]["recover_steps"] == 2 and rec["steps"] == 2
    assert rec["zeros_before"] == rec["zeros_after"] > 0 and rec["order"] == "prune -> recover -> quantize"
    assert "Recovered:" in (tmp_path / "bundle" / "README.md").read_text()
    unet, manifest = load_unet(tmp_path / "bundle")
    trained = engine.compress(spec)[0].unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in unet.state_dict().items())


@pytest.mark.slow
def test_app_compare_with_recovery(lab_app):
    from gradio_client import Client

    app, url = lab_app
    client = Client(url, verbose=False)
    out = client.predict(
        api_name="/compare",
        prompt="a red circle on the left on a blue background",
        steps=2,
        prune_percent=60,
        recover_steps=3,
    )
    details = out[9]
    spec = CompressionSpec(0.6, recover_steps=3)
    assert details["spec"] == spec.to_dict() and details["setting"] == "L1 60% + recovered 3 steps"
    entry, cached = app.LAB.get("tiny-shapes").engine.compress(spec)
    assert cached and entry.built == "recovered" and entry.cost.zeros == entry.prune_report.zeros
    with pytest.raises(Exception, match="recovery fine-tunes a pruned UNet"):
        client.predict(api_name="/compare", prompt="a red circle", steps=2, prune_percent=0, recover_steps=50)
