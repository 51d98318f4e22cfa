"""What recovery trains on: batches of (noisy latent, timestep, text embedding) and the targets that go with them.

Two sources of clean latents with captions, noised per step (batch k depends only on the seed and k, so a resumed
run draws exactly what an uninterrupted one would, and any number of processes splits the same global batch):

- `"real"`: real (image, caption) pairs of the shapes world, training captions only (`world.sample_attributes(...,
  "train")`, never the held-out ones that evaluation uses), rendered by tinyworld's own `Batches` stream and
  encoded once by the pipeline's VAE into a pool; noise and targets as the embedded model was trained (the
  scheduler's `add_noise` and, for v-prediction, `get_velocity`). The denoising task loss has a real target.
- `"prompts"`: data-free. Captions from a prompt file; the clean latents are drawn once by the baseline itself
  (a pool of its own samples), so the only target is the baseline's prediction (works for any model).

Also here: the baseline seen through a second module tree that shares its tensors (`shared_view`), so that hooks
for feature distillation never touch the baseline's own modules (other threads draw with it), and the hooks
(`BlockTaps`) that collect the outputs of the UNet's blocks, which keep their widths under structured pruning.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import world

REPO_ROOT = Path(__file__).resolve().parent.parent
RECOVERY_PROMPT_DIR = REPO_ROOT / "assets" / "prompts" / "recovery"


@dataclass
class Batch:
    """One process's share of one step's global batch.

    Args:
        noisy (`torch.Tensor`): x_t, (b, C, h, w).
        timesteps (`torch.Tensor`): t, (b,).
        text (`torch.Tensor`): encoder hidden states, (b, tokens, width).
        target (`torch.Tensor`, *optional*): the denoising task's target (noise, velocity or x_0, by the
            scheduler's prediction type); None for data-free batches.
    """

    noisy: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor
    target: torch.Tensor | None


def shared_view(module: nn.Module) -> nn.Module:
    """A second module tree over the same parameter and buffer tensors (no copy of any weight).

    Hooks registered on it fire only for forwards through it; the tensors are the module's own, so reading
    them is all this view may do (recovery never writes to it: the baseline's digest stays the same).
    """
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    view = copy.deepcopy(module, memo)
    for m in view.modules():  # hooks the source had (none in the lab) are not ours to fire twice
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return view


def block_names(unet: nn.Module) -> list[str]:
    """The UNet's blocks whose outputs are distilled: every down block, the mid block, every up block.

    Their outputs keep the model's widths under structured pruning (only inner channels, feed-forward widths
    and heads shrink), so teacher and student features have the same shapes."""
    names = [f"down_blocks.{i}" for i in range(len(getattr(unet, "down_blocks", [])))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i in range(len(getattr(unet, "up_blocks", [])))]
    return names


class BlockTaps:
    """Forward hooks that keep the last output of each named block (a down block's hidden states, not its
    residuals). `remove()` takes them off."""

    def __init__(self, unet: nn.Module, names: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [unet.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(module, args, output):
            self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.outputs.clear()


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """BK-SDM's feature-level distillation: the sum over blocks of the MSE between matching block outputs."""
    return sum(F.mse_loss(student[k].float(), teacher[k].float()) for k in teacher)


def task_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict, by the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"prediction type {kind!r} is not supported by recovery (epsilon, v_prediction, sample)")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random draws of one step (noise, timesteps, caption dropout, pool picks): a function of seed and step
    only, the same on every process, so resuming and data parallelism change nothing."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def recovery_prompts(prompt_set: str, path: str | Path | None = None) -> tuple[list[str], str]:
    """The data-free prompt list and its digest: `path`, else `assets/prompts/recovery/<prompt_set>.txt`
    (training captions for the shapes world, general prompts for hub models: never an evaluation set)."""
    p = Path(path) if path is not None else RECOVERY_PROMPT_DIR / f"{prompt_set}.txt"
    if not p.is_file():
        raise ValueError(f"no recovery prompt file {p.name!r} (give one with --prompt-file)")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"recovery prompt file {p.name!r} holds no prompt")
    return prompts, hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


class _Source:
    """Shared by both sources: a pool of clean latents with their captions, text embeddings (each caption
    encoded once), caption dropout for guidance, and the noising."""

    def __init__(self, pipe, scheduler, batch_size: int, rank: int, world_size: int, seed: int, uncond_prob: float):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({world_size})")
        self.pipe, self.scheduler, self.seed, self.uncond_prob = pipe, scheduler, seed, uncond_prob
        self.batch_size = batch_size
        per = batch_size // world_size
        self.own = slice(rank * per, (rank + 1) * per)
        self.device = next(pipe.unet.parameters()).device
        self._text: dict[str, torch.Tensor] = {}
        self.captions: list[str] = []
        self.latents = torch.empty(0)

    @torch.no_grad()
    def encode_all_(self, chunk: int = 64) -> None:
        """Encode every caption of the pool (and "") once, in a fixed order and fixed chunks: the text encoder is
        frozen, and a caption's embedding must not depend on which others shared its batch (the last bits do),
        or a resumed run would differ from an uninterrupted one."""
        from .engine import _TOKENIZER_LOCK

        tok = self.pipe.tokenizer
        texts = sorted({*self.captions, ""})
        for i in range(0, len(texts), chunk):
            part = texts[i : i + chunk]
            with _TOKENIZER_LOCK:  # the pipeline's tokenizer is shared with drawing threads (see engine.py)
                ids = tok(
                    part, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
                ).input_ids
            for c, e in zip(part, self.pipe.text_encoder(ids.to(self.device))[0]):
                self._text[c] = e

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Text embeddings of pool captions (or "")."""
        return torch.stack([self._text[c] for c in captions])

    @torch.no_grad()
    def batch(self, step: int) -> Batch:
        """This process's share of step `step`: pool entries, captions (some dropped), noise and timesteps all
        drawn from the global batch with the step's own generator, so every process count sees the same batch."""
        g = step_generator(self.seed, step)
        n = self.batch_size
        pick = torch.randint(0, len(self.latents), (n,), generator=g)
        drop = (torch.rand(n, generator=g) < self.uncond_prob).tolist()  # unconditional rows, as in training
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g)
        noise = torch.randn((n, *self.latents.shape[1:]), generator=g)
        own = pick[self.own]
        captions = ["" if d else self.captions[int(i)] for i, d in zip(pick.tolist(), drop)][self.own]
        latents = self.latents[own].to(self.device)
        noise, t = noise[self.own].to(self.device), timesteps[self.own].to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = task_target(self.scheduler, latents, noise, t) if self.has_target else None
        return Batch(noisy, t, self.encode(captions), target)


class WorldSource(_Source):
    """Real (image, caption) pairs of the shapes world's training split: `pool` images rendered with
    tinyworld's own stream (`Batches`: sizes and positions jittered, ~3 images per training caption at 2,048),
    encoded once by the VAE (one encode costs as much as a UNet forward: per step it was a fifth of the step)."""

    has_target = True

    def __init__(self, pipe, scheduler, batch_size, rank, world_size, seed, uncond_prob, side: int, pool: int):
        super().__init__(pipe, scheduler, batch_size, rank, world_size, seed, uncond_prob)
        from tinyworld.train import Batches

        stream = Batches(seed + 1, 256, "train")
        vae = self.pipe.vae
        parts = []
        with torch.no_grad():
            while len(self.captions) < pool:
                attrs, x = next(stream)
                take = min(len(attrs), pool - len(self.captions))
                x = x[:take]
                if x.shape[-1] != side:  # a pipeline of another native size (the tests' 32 px) sees the same world
                    x = F.interpolate(x, size=(side, side), mode="area")
                z = vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
                parts.append(z.float().cpu())
                self.captions += [world.caption(a) for a in attrs[:take]]
        self.latents = torch.cat(parts)
        self.encode_all_()


class PromptSource(_Source):
    """Data-free: captions from a prompt list, clean latents from a pool the baseline drew itself."""

    has_target = False

    def __init__(self, pipe, scheduler, batch_size, rank, world_size, seed, uncond_prob, prompts, pool):
        super().__init__(pipe, scheduler, batch_size, rank, world_size, seed, uncond_prob)
        idx, self.latents = pool
        self.captions = [prompts[int(i)] for i in idx]
        self.encode_all_()


@torch.no_grad()
def teacher_pool(pipe, teacher: nn.Module, prompts: list[str], size: int, steps: int, guidance: float, seed: int):
    """`size` clean latents drawn by the baseline (through `teacher`, its shared view) for prompts taken in turn;
    a fresh scheduler copy and one CPU generator per image, as the engine draws."""
    components = {**pipe.components, "unet": teacher, "scheduler": copy.deepcopy(pipe.scheduler)}
    params = inspect.signature(type(pipe).__init__).parameters
    extra = {k: pipe.config[k] for k in params if k not in components and k in pipe.config}
    sampler = type(pipe)(**components, **extra)
    sampler.set_progress_bar_config(disable=True)
    idx = torch.arange(size) % len(prompts)
    out = []
    for start in range(0, size, 32):
        chunk = idx[start : start + 32].tolist()
        gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        out.append(
            sampler(
                [prompts[i] for i in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="latent",
            ).images.float()
        )
    return idx, torch.cat(out).cpu()
