"""Recovery: fine-tune a pruned UNet (the student) against the untouched baseline (the teacher), then quantize.

    python -m compression.recover --model tiny-shapes --prune 70 --method l1-unstructured --steps 2000 \\
        --threads 2 --out runs/recover/l1-70
    accelerate launch --multi_gpu --num_processes 2 -m compression.recover ... --out DIR   # data parallel (DDP)

The loss is BK-SDM's: the denoising task loss where real data exist, plus output-level distillation (MSE between
the student's and the teacher's predictions for the same noisy latent, timestep and text embedding), plus
feature-level distillation (the summed MSE between the outputs of matching UNet blocks, which keep their widths
under structured pruning), weighted (1, 1, 1) by default. Data: real pairs of the shapes world (training
captions only) or, data-free, prompts from a file with the teacher as the only target (`recover_data.py`).

What recovery keeps as it was:

- the baseline: it is read through a second module tree sharing its tensors (hooks never touch its modules),
  under no_grad; its state_dict digest is unchanged;
- unstructured zeros stay zero: their gradients are masked and the masks are re-applied after every optimiser
  step, and the zero count is measured before and after (it must be equal, to the weight);
- structured pruning keeps its smaller shapes (the student is the pruned UNet itself);
- quantization comes after: prune -> recover -> quantize (`build_recovered`), so a quantized recovered UNet is
  the recovered fp32 one passed through the same per-layer build as any other.

Training: AdamW, linear warm-up then a constant learning rate (so the state after k steps is the same whatever
the total: a 2,000-step run continues a 500-step one exactly, and a resumed run matches an uninterrupted one),
gradient clipping, every random draw a function of (seed, step), bf16 autocast where the device computes bf16
natively (CUDA with bf16; on a CPU only with AMX/AVX512-BF16: emulated bf16 is slower than fp32), checkpoints
every K steps (atomic: Ctrl-C keeps the last one) and resume, a tqdm bar with the loss, a cancel token. One code
path for one CPU, one GPU or several processes: `accelerate` (or torchrun) starts them, and this module only
asks `Accelerator` for its rank; on a CPU that is gloo (`Accelerator(cpu=True)`), with the world size checked
against WORLD_SIZE.

Example:
    >>> spec = CompressionSpec(prune_amount=0.7, recover_steps=300)
    >>> pair = engine.generate_pair(prompt, seed=0, steps=20, guidance=4.0, spec=spec)   # trains, then caches
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import recover_data as data
from .build import build_compressed, layerwise_supported, state_dict_digest
from .cost import module_cost
from .spec import CompressionSpec

CHECKPOINT_FORMAT = "dcl-recovery-checkpoint/1"
# Where recovered UNets (their checkpoints) are kept between runs, keyed by what decides their weights; None:
# in memory only (the engine's cache). The sweep CLI points it at DIR/recovered, so 2,000 steps continue 500.
STORE_DIR: Path | None = Path(os.environ["DCL_RECOVERY_DIR"]) if os.environ.get("DCL_RECOVERY_DIR") else None
# One recovery step of the embedded model at the default batch (8) costs about as much CPU time as this many
# denoising image-steps at guidance (the app's unit of work): measured ~0.26 s per step at 1 thread here, against
# ~8.7 ms per image-step (app_service.MAX_JOB_STEPS).
IMAGE_STEPS_PER_RECOVERY_STEP = 30
Progress = Callable[[float, str], None]


class RecoveryCancelled(RuntimeError):
    """Raised when a cancel token without `raise_if_cancelled` is set; the last checkpoint is kept."""


@dataclass(frozen=True)
class RecoveryConfig:
    """How recovery trains (the spec says how long and on what data).

    Args:
        batch_size (`int`, defaults to 8): global batch (split across processes; a multiple of their number).
            A step costs ~5 UNet forwards per sample on a CPU: 8 keeps a few hundred steps near a minute here.
        lr (`float`, defaults to 3e-4): AdamW learning rate after warm-up (the embedded model trained at 5e-4;
            at 300 steps of L1 70%, 3e-4 reached 82% held-out accuracy where 1e-4 reached 71%, N = 100).
        warmup_steps (`int`, defaults to 50): linear warm-up from lr / warmup_steps; constant afterwards.
        weight_decay (`float`, defaults to 0.0): AdamW decoupled weight decay (0 keeps the pruned weights as
            the baseline left them, but for the updates).
        grad_clip (`float`, defaults to 1.0): max global gradient norm (as the embedded model was trained).
        loss_weights (`tuple[float, float, float]`, defaults to (1, 1, 1)): task, output-level and feature-level
            distillation, BK-SDM's weights. Measured on L1 70%, 300 steps, N = 100 held-out prompts (accuracy,
            +-8 points): (1, 1, 1) 71%, (1, 1, 0) 75%, (1, 1, 0.1) 68%: no setting measurably better, so BK-SDM's.
        uncond_prob (`float`, defaults to 0.1): captions replaced by "" (the guidance's unconditional branch).
        seed (`int`, defaults to 0): seed of every draw (data, noise, timesteps, caption dropout).
        checkpoint_every (`int`, defaults to 500): steps between checkpoints (with a checkpoint folder).
        autocast (`str`, defaults to `"auto"`): `"auto"` (bf16 where native), `"bf16"` or `"off"`.
        real_pool (`int`, defaults to 2048): real data: images rendered and VAE-encoded once (~10 s at one
            thread), drawn from with fresh noise and timesteps every step (2,000 steps see each ~8 times).
        pool_size (`int`, defaults to 256): data-free: clean latents the teacher draws first.
        pool_steps (`int`, defaults to 10): data-free: denoising steps of each pool latent.
    """

    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    uncond_prob: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    autocast: str = "auto"
    real_pool: int = 2048
    pool_size: int = 256
    pool_steps: int = 10

    def __post_init__(self) -> None:
        def number(name, lo, hi, integer=False):
            v = getattr(self, name)
            kind = numbers.Integral if integer else numbers.Real
            if isinstance(v, bool) or not isinstance(v, kind) or not (lo <= v <= hi) or v != v:
                raise ValueError(
                    f"{name} must be {'an integer' if integer else 'a number'} from {lo} to {hi}, got {v!r}"
                )

        number("batch_size", 1, 4096, True)
        number("lr", 1e-8, 1.0)
        number("warmup_steps", 0, 100_000, True)
        number("weight_decay", 0.0, 1.0)
        number("grad_clip", 1e-6, 1e6)
        number("uncond_prob", 0.0, 1.0)
        number("seed", 0, 2**31 - 1, True)
        number("checkpoint_every", 1, 10**9, True)
        number("real_pool", 1, 1_000_000, True)
        number("pool_size", 1, 100_000, True)
        number("pool_steps", 1, 1000, True)
        w = self.loss_weights
        if (
            not isinstance(w, (tuple, list))
            or len(w) != 3
            or not all(isinstance(x, numbers.Real) and 0 <= x < math.inf for x in w)
            or not any(w)
        ):
            raise ValueError(f"loss_weights must be 3 numbers >= 0 (task, output, feature), not all 0, got {w!r}")
        object.__setattr__(self, "loss_weights", tuple(float(x) for x in w))
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError(f"autocast must be 'auto', 'bf16' or 'off', got {self.autocast!r}")

    def key(self) -> dict:
        """What decides the weights (not how often they are saved)."""
        d = dataclasses.asdict(self)
        d.pop("checkpoint_every")
        return d


DEFAULT_CONFIG = RecoveryConfig()


@dataclass
class RecoveryRun:
    """What a recovery did (one call; `losses` and `seconds` span every call that led to the final step).

    Args:
        steps (`int`): the step reached.
        resumed_from (`int`): the checkpoint step this call started from (0: from the pruned UNet).
        losses (`dict[str, list[float]]`): per step: "total", "task", "output_kd", "feature_kd".
        seconds (`float`): training wall time over all calls (pool drawing included, evaluation not).
        zeros_before, zeros_after, weights (`int`): zero Linear/Conv2d weights before and after, and their total.
        processes (`int`), threads (`int`), device (`str`), autocast (`str`): where it ran.
        config (`RecoveryConfig`), data (`str`), prompts_digest (`str`, *optional*).
    """

    steps: int
    resumed_from: int
    losses: dict[str, list[float]]
    seconds: float
    zeros_before: int
    zeros_after: int
    weights: int
    processes: int
    threads: int
    device: str
    autocast: str
    config: RecoveryConfig
    data: str
    prompts_digest: str | None = None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = dataclasses.asdict(self.config)
        d["seconds_per_step"] = self.seconds_per_step
        d["sparsity_unchanged"] = self.zeros_before == self.zeros_after
        return d


# Recovered UNets -> their run (the sweep reports recovery time from it); weak: a dropped UNet drops its record.
RECORDS: weakref.WeakKeyDictionary[nn.Module, RecoveryRun] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------------------- checks


def check_recoverable(model: str, device: torch.device | str, recover_data: str) -> None:
    """Refuse what recovery cannot do well here, before any work.

    Raises:
        ValueError: a hub model on a CPU, or real data for a model without a world of real images.
    """
    from .models import resolve_model

    try:
        entry = resolve_model(model)
    except ValueError:
        return  # a pipeline the caller built (tests, notebooks): the caller knows its data
    if torch.device(device).type == "cpu" and not entry.local:
        raise ValueError(
            f"recovering {model} on a CPU is refused: one step (teacher and student forward, student backward, "
            "batch 16) of an SD-sized UNet takes minutes here; run it on a GPU, or recover the embedded model"
        )
    if recover_data == "real" and not entry.metrics.real_reference:
        raise ValueError(
            f"{model} has no real images of its world to train on: use recover_data='prompts' (data-free "
            "distillation against the baseline)"
        )


def recovery_cost(steps: int, batch_size: int = DEFAULT_CONFIG.batch_size) -> int:
    """A recovery's price in the app's unit (denoising image-steps of the embedded model, guidance on)."""
    return int(steps) * math.ceil(IMAGE_STEPS_PER_RECOVERY_STEP * batch_size / DEFAULT_CONFIG.batch_size)


def _autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if mode == "bf16":
        return torch.bfloat16
    # "auto" on a CPU: only where bf16 is native; emulated it was slower than fp32 (AVX512 without BF16, here).
    return torch.bfloat16 if torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX") else None


# --------------------------------------------------------------------------------------- processes


class _Processes:
    """One process, or several through accelerate (DDP; gloo on a CPU). The training loop is the same."""

    def __init__(self, device: torch.device, distributed: bool):
        self.acc = None
        if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            if device.type == "cpu" and os.environ.get("MASTER_ADDR") in ("127.0.0.1", "localhost"):
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo picks no interface for a loopback address
            # cpu=True: without it accelerate gives every CPU process DistributedType.NO and the whole workload.
            self.acc = Accelerator(cpu=device.type == "cpu")
            expected = int(os.environ["WORLD_SIZE"])
            if self.acc.num_processes != expected:
                raise RuntimeError(
                    f"accelerate sees {self.acc.num_processes} process(es), WORLD_SIZE says {expected}: launch with "
                    "torchrun --nproc_per_node N or accelerate launch --multi_gpu --num_processes N "
                    "(see docs/recovery.md)"
                )

    @property
    def rank(self) -> int:
        return self.acc.process_index if self.acc else 0

    @property
    def size(self) -> int:
        return self.acc.num_processes if self.acc else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module, opt):
        return self.acc.prepare(model, opt) if self.acc else (model, opt)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc:
            self.acc.backward(loss)
        else:
            loss.backward()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(values, "mean") if self.acc else values

    def wait(self) -> None:
        if self.acc:
            self.acc.wait_for_everyone()


# -------------------------------------------------------------------------------------- checkpoints


def _checkpoints(folder: Path | None) -> dict[int, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {int(p.stem.split("-")[1]): p for p in folder.glob("step-*.pt") if p.stem.split("-")[1].isdigit()}


def _save_checkpoint(folder: Path, step: int, key: str, student, opt, losses, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "step": step,
        "student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "optimizer": opt.state_dict(),
        "losses": losses,
        "seconds": seconds,
    }
    path = folder / f"step-{step:07d}.pt"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes of a data-parallel sweep may write it
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never replaces a good checkpoint with half of one


def _load_checkpoint(folder: Path | None, key: str, steps: int) -> dict | None:
    """The latest checkpoint at or before `steps` of this recovery; one of another recovery is refused."""
    found = {s: p for s, p in _checkpoints(folder).items() if s <= steps}
    if not found:
        return None
    state = torch.load(found[max(found)], map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != key:
        raise ValueError(
            f"{folder} holds checkpoints of another recovery (other model, pruning, data or settings): "
            "give a new folder, or remove it to start over"
        )
    return state


# ------------------------------------------------------------------------------------------ training


def _lr_at(step: int, cfg: RecoveryConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr  # constant: the state after k steps does not depend on the total


def zero_masks(unet: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(weight, mask of its non-zeros) for every Linear/Conv2d weight holding a zero: the pruning to keep."""
    out = []
    for m in unet.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            mask = m.weight.detach() != 0
            if not bool(mask.all()):
                out.append((m.weight, mask))
    return out


def _make_source(pipe, teacher, data_kind: str, cfg: RecoveryConfig, procs: _Processes, prompts, guidance: float):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the noising the model was trained with
    common = (pipe, scheduler, cfg.batch_size, procs.rank, procs.size, cfg.seed, cfg.uncond_prob)
    if data_kind == "real":
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return data.WorldSource(*common, side=side, pool=cfg.real_pool)
    pool = data.teacher_pool(pipe, teacher, prompts, cfg.pool_size, cfg.pool_steps, guidance, cfg.seed)
    return data.PromptSource(*common, prompts=prompts, pool=pool)


def _step_losses(model, teacher, taps, batch, weights, cast) -> dict[str, torch.Tensor]:
    w_task, w_out, w_feat = weights
    ctx = torch.autocast(batch.noisy.device.type, dtype=cast) if cast is not None else contextlib.nullcontext()
    with ctx:
        with torch.no_grad():
            t_pred = teacher(batch.noisy, batch.timesteps, batch.text).sample.float()
        s_pred = model(batch.noisy, batch.timesteps, batch.text).sample.float()
    student_taps, teacher_taps = taps
    zero = s_pred.new_zeros(())
    parts = {
        "task": F.mse_loss(s_pred, batch.target.float()) if batch.target is not None and w_task else zero,
        "output_kd": F.mse_loss(s_pred, t_pred) if w_out else zero,
        "feature_kd": data.feature_loss(student_taps.outputs, teacher_taps.outputs) if w_feat else zero,
    }
    parts["total"] = w_task * parts["task"] + w_out * parts["output_kd"] + w_feat * parts["feature_kd"]
    return parts


def _cancel_check(cancel, save: Callable[[], None]) -> None:
    if cancel is not None and getattr(cancel, "cancelled", False):
        save()
        if hasattr(cancel, "raise_if_cancelled"):
            cancel.raise_if_cancelled()
        raise RecoveryCancelled("recovery cancelled; the last checkpoint is kept")


def recover_(
    pipe,
    student: nn.Module,
    steps: int,
    data_kind: str = "real",
    config: RecoveryConfig = DEFAULT_CONFIG,
    *,
    key: str = "",
    checkpoint_dir: str | Path | None = None,
    prompts: list[str] | None = None,
    guidance: float = 4.0,
    progress: Progress | None = None,
    cancel=None,
    show_bar: bool = True,
    distributed: bool = False,
) -> RecoveryRun:
    """Fine-tune `student` IN PLACE against `pipe.unet` (read only) for `steps` optimiser steps.

    Args:
        pipe: the baseline pipeline (its UNet is the teacher; text encoder, tokenizer, VAE, scheduler are used).
        student (`nn.Module`): the pruned UNet (fp32 is trained; another float dtype is trained in fp32 and
            cast back). Its zeros stay zero; its shapes stay.
        steps (`int`): the step to reach, >= 0 (a checkpoint at or before it is resumed).
        data_kind (`str`): `"real"` (shapes world pairs) or `"prompts"` (data-free; `prompts` needed).
        config (`RecoveryConfig`): optimiser, loss weights, seed, checkpoints.
        key (`str`): what identifies this recovery; checkpoints of another key are refused.
        checkpoint_dir (`str` or `Path`, *optional*): where `step-NNNNNNN.pt` are written every
            `config.checkpoint_every` steps, on cancel, and at the end.
        prompts (`list[str]`, *optional*): data-free captions.
        guidance (`float`, defaults to 4.0): data-free: guidance of the teacher's pool samples.
        progress (`Callable[[float, str], None]`, *optional*): (fraction, text with the loss) after each step.
        cancel (*optional*): any object with a `cancelled` attribute (a `CancelToken`); checked every step.
        show_bar (`bool`, defaults to True): a tqdm bar with the loss (main process only).
        distributed (`bool`, defaults to False): join the processes accelerate/torchrun started (DDP).

    Returns:
        `RecoveryRun`.

    Raises:
        ValueError: bad arguments, or checkpoints of another recovery in `checkpoint_dir`.
        RuntimeError: the world size accelerate sees is not WORLD_SIZE.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if data_kind not in ("real", "prompts"):
        raise ValueError(f"data must be 'real' or 'prompts', got {data_kind!r}")
    if data_kind == "prompts" and not prompts:
        raise ValueError("data-free recovery needs prompts")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    device = next(pipe.unet.parameters()).device
    procs = _Processes(device, distributed)
    cast = _autocast_dtype(device, config.autocast)
    cost = module_cost(student)
    state = _load_checkpoint(folder, key, steps)
    if state is not None:
        student.load_state_dict(state["student"])
    start = state["step"] if state else 0
    run = RecoveryRun(
        steps=start,
        resumed_from=start,
        losses=state["losses"] if state else {k: [] for k in LOSSES},
        seconds=state["seconds"] if state else 0.0,
        zeros_before=cost.zeros,
        zeros_after=cost.zeros,
        weights=cost.weights,
        processes=procs.size,
        threads=torch.get_num_threads(),
        device=device.type,
        autocast=str(cast).removeprefix("torch.") if cast else "off",
        config=config,
        data=data_kind,
    )
    if start < steps:
        io_dtype = next(p.dtype for p in student.parameters() if p.is_floating_point())
        with torch.enable_grad():  # the engine may call this under no_grad (generate_batch)
            trainer = _Trainer(pipe, student, config, procs, cast, run, folder, key, state)
            try:
                trainer.source = _make_source(pipe, trainer.teacher, data_kind, config, procs, prompts, guidance)
                _loop(trainer, start, steps, progress, cancel, show_bar and procs.is_main)
            finally:
                trainer.close()
        student.eval().requires_grad_(False)
        if io_dtype != torch.float32:
            student.to(io_dtype)
    run.zeros_after = module_cost(student).zeros
    if run.zeros_after != run.zeros_before:  # a live weight that an update left at exactly 0.0
        raise RuntimeError(f"recovery changed the zero count: {run.zeros_before} -> {run.zeros_after}")
    return run


LOSSES = ("total", "task", "output_kd", "feature_kd")


class _Trainer:
    """The state of one training call: student (wrapped for DDP if need be), optimiser, teacher view and the
    block taps of both, the masks of the zeros, the data source; one optimiser step at a time."""

    def __init__(self, pipe, student, config, procs, cast, run, folder, key, state):
        self.student, self.config, self.procs, self.cast, self.run = student, config, procs, cast, run
        self.folder, self.key = folder, key
        self.seconds_before, self.t0 = run.seconds, time.perf_counter()
        device = next(pipe.unet.parameters()).device
        student.float().to(device).train().requires_grad_(True)
        self.masks = zero_masks(student)
        opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
        self.model, self.opt = procs.prepare(student, opt)
        self.params = list(student.parameters())
        self.teacher = data.shared_view(pipe.unet)
        names = data.block_names(student)
        self.taps = (data.BlockTaps(student, names), data.BlockTaps(self.teacher, names))
        self.source = None

    def step(self, k: int) -> float:
        """Optimiser step `k` (0-based); returns the total loss (averaged over processes)."""
        cfg = self.config
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(k, cfg)
        parts = _step_losses(self.model, self.teacher, self.taps, self.source.batch(k), cfg.loss_weights, self.cast)
        self.opt.zero_grad(set_to_none=True)
        self.procs.backward(parts["total"])
        with torch.no_grad():
            for w, mask in self.masks:
                if w.grad is not None:
                    w.grad.mul_(mask)  # AdamW's moments of a pruned weight stay 0
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            for w, mask in self.masks:
                w.mul_(mask)  # and the weight itself, whatever the optimiser did
        logged = self.procs.mean(torch.stack([parts[name].detach() for name in LOSSES])).tolist()
        for name, v in zip(LOSSES, logged):
            self.run.losses[name].append(v)
        self.run.steps = k + 1
        self.run.seconds = self.seconds_before + time.perf_counter() - self.t0
        return logged[0]

    def save(self) -> None:
        """A checkpoint of the steps done so far (every process waits; the main one writes)."""
        self.procs.wait()
        if self.folder is not None and self.procs.is_main:
            run = self.run
            _save_checkpoint(self.folder, run.steps, self.key, self.student, self.opt, run.losses, run.seconds)

    def close(self) -> None:
        for tap in self.taps:
            tap.remove()


def _loop(trainer: _Trainer, start: int, steps: int, progress, cancel, show_bar: bool) -> None:
    bar = tqdm(range(start, steps), desc="recover", unit="step", initial=start, total=steps, disable=not show_bar)
    try:
        for k in bar:
            _cancel_check(cancel, trainer.save)
            loss = trainer.step(k)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if progress is not None:
                progress((k + 1) / steps, f"recovering: step {k + 1}/{steps}, loss {loss:.4f}")
            if (k + 1) % trainer.config.checkpoint_every == 0 or k + 1 == steps:
                trainer.save()
    finally:
        bar.close()


# ------------------------------------------------------------------------------------- the engine's hook


_BASE_DIGESTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def recovery_key(base_unet: nn.Module, spec: CompressionSpec, config: RecoveryConfig, prompts_digest: str | None):
    """What decides a recovered UNet's weights but the step count: the baseline, the pruning, data, settings."""
    if base_unet not in _BASE_DIGESTS:
        _BASE_DIGESTS[base_unet] = state_dict_digest(base_unet)[:16]
    what = dict(
        base=_BASE_DIGESTS[base_unet],
        prune=[spec.prune_amount, spec.prune_method, spec.prune_scope, spec.seed],
        data=spec.recover_data,
        prompts=prompts_digest,
        config=config.key(),
    )
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def pruned_copy(base: nn.Module, spec: CompressionSpec, source_zeros: int | None = None):
    """The pruned fp32 UNet that recovery starts from (a new module; `base` is only read), and its report."""
    from .pruning import apply_pruning_

    pruned = CompressionSpec(spec.prune_amount, spec.prune_method, spec.prune_scope, seed=spec.seed)
    if layerwise_supported(base, pruned):
        return build_compressed(base, pruned, source_zeros)
    unet = copy.deepcopy(base)
    return unet, apply_pruning_(unet, pruned.prune_method, pruned.prune_amount, pruned.prune_scope, pruned.seed)


def quantized_copy(unet: nn.Module, quant_mode: str, bits: int | None) -> nn.Module:
    """`unet` quantized by the usual per-layer build (a new module; `unet` is only read)."""
    from .quantization import apply_quantization_

    spec = CompressionSpec(quant_mode=quant_mode, bits=bits)
    if layerwise_supported(unet, spec):
        return build_compressed(unet, spec)[0]
    out = apply_quantization_(copy.deepcopy(unet), quant_mode, bits)
    return out.eval().requires_grad_(False)


def build_recovered(engine, spec: CompressionSpec, progress: Progress | None = None, cancel=None):
    """The engine's recovered UNet for `spec`: prune -> recover -> quantize, with the default `RecoveryConfig`.

    The quantized form is made from the recovered fp32 one, which comes through `engine.compress` (so it is
    cached too). With `STORE_DIR` set, checkpoints are kept there: a longer recovery continues a shorter one.

    Returns:
        `(unet, prune_report)`: sparsity is the same as before recovery, so is the report.

    Raises:
        ValueError: see `check_recoverable`.
    """
    if spec.quant_mode != "fp32":
        entry, _ = engine.compress(dataclasses.replace(spec, quant_mode="fp32", bits=None), progress, cancel)
        unet = quantized_copy(entry.unet, spec.quant_mode, spec.bits)
        if entry.unet in RECORDS:
            RECORDS[unet] = RECORDS[entry.unet]
        return unet, entry.prune_report
    from .models import resolve_model

    check_recoverable(engine.model_name, engine.device, spec.recover_data)
    prompts, digest = None, None
    if spec.recover_data == "prompts":
        try:
            prompt_set = resolve_model(engine.model_name).prompt_set
        except ValueError:
            prompt_set = "general"
        prompts, digest = data.recovery_prompts(prompt_set)
    student, report = pruned_copy(engine.pipeline.unet, spec, engine.baseline_cost.zeros)
    key = recovery_key(engine.pipeline.unet, spec, DEFAULT_CONFIG, digest)
    run = recover_(
        engine.pipeline,
        student,
        spec.recover_steps,
        spec.recover_data,
        DEFAULT_CONFIG,
        key=key,
        checkpoint_dir=STORE_DIR / key if STORE_DIR is not None else None,
        prompts=prompts,
        progress=progress,
        cancel=cancel,
    )
    run.prompts_digest = digest
    RECORDS[student] = run
    return student, report


def recovery_estimates(unet: nn.Module) -> list:
    """A sweep's rows for a recovered UNet: the recovery's wall time over all its steps and its final loss."""
    from . import metrics

    run = RECORDS.get(unet)
    if run is None:
        return []
    where = f"{run.threads} thread(s) x {run.processes} process(es) on {run.device}, {run.seconds_per_step:.3f} s/step"
    tail = run.losses["total"][-50:]
    return [
        metrics.exact_estimate("recovery time", run.seconds, "s", False, note=f"{run.steps} steps, {where}"),
        metrics.exact_estimate(
            "recovery loss", sum(tail) / len(tail) if tail else math.nan, "", False, note="mean of the last 50 steps"
        ),
    ]


# ------------------------------------------------------------------------------------------------- CLI


def _parser():
    import argparse

    from .pruning import PRUNERS, SCOPES
    from .quantization import QUANT_MODES

    p = argparse.ArgumentParser(
        prog="python -m compression.recover",
        description="Prune a model's UNet, fine-tune it against the baseline (distillation), quantize it, "
        "and write it as a bundle with DIR/recovery.json (loss curve, sparsity, held-out quality before/after).",
    )
    p.add_argument("--model", default="tiny-shapes", help="catalog name (default: tiny-shapes)")
    p.add_argument("--prune", type=float, required=True, help="percent of the scope's weights (or channels) to prune")
    p.add_argument("--method", default="l1-unstructured", choices=list(PRUNERS))
    p.add_argument("--scope", default="all", choices=list(SCOPES))
    p.add_argument("--quant", default="fp32", choices=list(QUANT_MODES), help="applied after recovery")
    p.add_argument("--bits", type=int, default=None, help="bit width for simulated-int")
    p.add_argument("--steps", type=int, required=True, help="recovery steps (a checkpoint in DIR is resumed)")
    p.add_argument("--data", default="real", choices=["real", "prompts"], help="real pairs, or data-free prompts")
    p.add_argument("--prompt-file", type=Path, help="data-free prompts, one a line (default: the model's set)")
    d = DEFAULT_CONFIG
    p.add_argument("--batch", type=int, default=d.batch_size, help=f"global batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate after warm-up (default {d.lr:g})")
    p.add_argument("--warmup", type=int, default=d.warmup_steps, help=f"warm-up steps (default {d.warmup_steps})")
    p.add_argument("--loss-weights", default="1,1,1", help="task,output,feature distillation (default BK-SDM's 1,1,1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every draw (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts measured before/after (0: none)")
    p.add_argument("--latency-repeats", type=int, default=3, help="latency repeats of the evaluation")
    p.add_argument("--no-bar", action="store_true", help="no progress bar")
    p.add_argument("--out", type=Path, required=True, help="folder: checkpoints/, bundle/, eval/, recovery.json")
    return p


def _args_to_run(p, args):
    from .models import default_device, resolve_model

    try:
        spec = CompressionSpec(
            args.prune / 100, args.method, args.scope, args.quant, args.bits, 0, args.steps, args.data
        )
        weights = tuple(float(x) for x in args.loss_weights.split(","))
        config = RecoveryConfig(
            batch_size=args.batch,
            lr=args.lr,
            warmup_steps=args.warmup,
            loss_weights=weights,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            autocast=args.autocast,
        )
        entry = resolve_model(args.model)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = default_device()
        if device == "cuda" and world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        check_recoverable(args.model, device, args.data)
        prompts = digest = None
        if args.data == "prompts":
            prompts, digest = data.recovery_prompts(entry.prompt_set, args.prompt_file)
    except ValueError as err:
        p.error(str(err).replace("prune_amount must be", "--prune/100 must be").replace("recover_steps", "--steps"))
    return spec, config, entry, device, prompts, digest


def main(argv: list[str] | None = None) -> int:
    import sys

    p = _parser()
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in recovery.json
    if args.steps < 1:
        p.error(f"--steps must be a whole number from 1 to 100,000, got {args.steps}")
    spec, config, entry, device, prompts, digest = _args_to_run(p, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .models import load_pipeline

    pipe, info = load_pipeline(args.model, device=device)
    student, report = pruned_copy(pipe.unet, spec)
    key = recovery_key(pipe.unet, spec, config, digest)
    try:
        run = recover_(
            pipe,
            student,
            spec.recover_steps,
            spec.recover_data,
            config,
            key=key,
            checkpoint_dir=args.out / "checkpoints",
            prompts=prompts,
            guidance=entry.guidance,
            show_bar=not args.no_bar,
            distributed=True,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last checkpoint in {args.out / 'checkpoints'} is kept; rerun the command to resume")
        return 130
    run.prompts_digest = digest
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from .recover_report import write_outputs

    write_outputs(args, pipe, info.name, spec, student, report, run, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
