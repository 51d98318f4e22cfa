"""Train the embedded default model and its metric CLIP from scratch, on the shapes world, on a CPU.

    python -m tinyworld.train                    # everything (~95 min on an idle 2-core CPU); writes assets/
    python -m tinyworld.train --stages unet      # one stage again (reuses the others' checkpoints)

Stages, in order (each writes a checkpoint under --work, so a later stage can be rerun alone):
1. tokenizer: a CLIP BPE tokenizer learned from the grammar's words (tinyworld/tokenizer.py).
2. vae: AutoencoderKL 64x64x3 -> 4x16x16, a nearly deterministic autoencoder (KL weight 1e-7); then the
   latent scaling factor (1 / std of the latents), as Stable Diffusion's 0.18215 was found.
3. clip: the metric CLIPModel (vision + text), trained with a full softmax over all 840 captions of the
   grammar (no false negatives from duplicate captions in a batch); a third of its images are VAE
   reconstructions with light noise so it judges generated images as well as real ones.
4. unet: UNet2DConditionModel + its own CLIPTextModel, trained jointly on the "train" split of captions (the
   "heldout" fifth is never seen, so evaluation measures composition, not recall). v-prediction with
   zero-terminal-SNR betas and "trailing" timesteps: training and sampling agree at the pure-noise end, so
   layout and colours follow the prompt, not the noise (a `squaredcos_cap_v2` trial here failed on that).
   EMA weights are saved.
5. save: the StableDiffusionPipeline under assets/tiny-shapes-sd and the CLIP under assets/tiny-shapes-clip,
   safetensors only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compression import world
from tinyworld.tokenizer import write_clip_tokenizer

REPO = Path(__file__).resolve().parent.parent
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_TOKENS = 77


# ---------------------------------------------------------------------------------------------- configs
def unet_config(vocab_size: int) -> dict:
    del vocab_size
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 96),
        # Cross-attention at 8x8 and 4x4 only: at 16x16 it doubled the step time for no visible gain here.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=4,  # diffusers' legacy name: this is the number of heads (SD 1.5 uses 8)
        norm_num_groups=8,  # 4-12 channels per group (SD 1.5: 10); fewer flattens per-channel means
    )


def text_config(vocab_size: int, bos: int, eos: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=128,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # three blocks = two downsamplings: 64 -> 16
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        # Few groups: with one or two channels per group, GroupNorm acts as instance norm and subtracts each
        # channel's spatial mean, which is exactly the flat background colour this world is made of.
        norm_num_groups=4,
        sample_size=64,
    )


def scheduler_kwargs() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


# ---------------------------------------------------------------------------------------------- data
def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> float (n, 3, 64, 64) in [-1, 1], the VAE's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> CLIP-normalized pixel values (what CLIPImageProcessor gives for 64x64 input)."""
    x = (x + 1) / 2
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Batches:
    """An endless, seeded stream of real (attributes, images) batches; each batch is fresh data."""

    def __init__(self, seed: int, batch: int, split: str):
        self.seed, self.batch, self.split, self.i = seed, batch, split, 0

    def __next__(self) -> tuple[list[world.Attributes], torch.Tensor]:
        attrs, images = world.real_images(self.seed * 1_000_000 + self.i, self.batch, self.split)
        self.i += 1
        return attrs, to_tensor(images)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------- stages
def train_tokenizer(work: Path) -> Path:
    words = sorted({w for a in world.all_attributes() for w in world.caption(a).split()})
    return write_clip_tokenizer(words, work / "tokenizer")


def load_tokenizer(work: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(work / "tokenizer")


def train_vae(work: Path, steps: int, batch: int, seed: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    data = Batches(seed, batch, "all")
    gen = torch.Generator().manual_seed(seed)
    full_from = int(steps * 0.9)  # the last 10% on whole images, so the mid-block attention sees 16x16 latents
    bar = tqdm(range(steps), desc="vae", unit="step")
    for step in bar:
        set_lr(opt, lr_at(step, steps, 1e-3, 100))
        _, x = next(data)
        if step < full_from:
            # Random 32x32 crops cost a quarter of a whole image and the layers are convolutional: four times
            # the updates for the same CPU time.
            i, j = (int(v) for v in torch.randint(0, 33, (2,), generator=gen))
            x = x[:, :, i : i + 32, j : j + 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 keeps flat colours and sharp edges better than MSE alone; KL ~1e-7 leaves a near-deterministic
        # autoencoder whose latents the diffusion model can still treat as Gaussian-scaled.
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        loss = rec + 1e-7 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(recon.detach(), x).item(), 1e-10))
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}dB")
    # Scaling factor: latents / std ~ unit variance, which the noise schedule assumes.
    vae.eval()
    with torch.no_grad():
        attrs, x = world.real_images(seed + 7, 512)
        z = vae.encode(to_tensor(x)).latent_dist.mean
        recon = vae.decode(z).sample.clamp(-1, 1)
        psnr = 10 * math.log10(4.0 / F.mse_loss(recon, to_tensor(x)).item())
        recon_u8 = ((recon + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    judged = [world.judge_image(im) for im in recon_u8]
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(work / "vae")
    report = {
        "psnr_db": round(psnr, 2),
        "latent_std": float(z.std()),
        "latent_mean": float(z.mean()),
        # The pixel judge on reconstructions: the ceiling for any image this VAE decodes.
        "judge_accuracy_on_reconstructions": {
            k: float(np.mean([j[k] == getattr(a, k) for j, a in zip(judged, attrs)])) for k in world.ATTRIBUTES
        },
    }
    (work / "vae" / "report.json").write_text(json.dumps(report, indent=2))
    print("vae:", report)


def load_vae(work: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae")
    vae.eval().requires_grad_(False)
    return vae


def caption_ids(tokenizer, captions: list[str], max_length: int = MAX_TOKENS) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids


def train_clip(work: Path, steps: int, batch: int, seed: int) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(work)
    vae = load_vae(work)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    config = CLIPConfig(
        text_config=text_config(len(tokenizer), bos, eos),
        vision_config=dict(
            image_size=64,
            patch_size=8,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
        ),
        projection_dim=128,
    )
    model = CLIPModel(config)
    everything = world.all_attributes()
    index = {world.caption(a): i for i, a in enumerate(everything)}
    # Causal attention makes padding after the end token irrelevant to the pooled output, so the 840
    # captions are encoded at their own length (14 tokens), not 77, which is 5x cheaper.
    all_ids = caption_ids(tokenizer, [world.caption(a) for a in everything], max_length=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    # A third of every batch comes from a pool of VAE reconstructions (made once: decoding per step cost more
    # than the CLIP step itself), so the judge reads generated images, which pass through the VAE, as well.
    pool_attrs, pool = world.real_images(seed + 3, 2048)
    with torch.no_grad():
        pool = torch.cat(
            [
                vae.decode(vae.encode(to_tensor(pool[i : i + 256])).latent_dist.mean).sample.clamp(-1, 1)
                for i in range(0, len(pool), 256)
            ]
        )
    data = Batches(seed + 1, batch - batch // 3, "all")
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="clip", unit="step")
    for step in bar:
        set_lr(opt, lr_at(step, steps, 1e-3, 100))
        attrs, x = next(data)
        pick = torch.randint(0, len(pool), (batch // 3,), generator=gen)
        attrs = attrs + [pool_attrs[i] for i in pick]
        x = torch.cat([x, pool[pick]])
        x = x + torch.randn(x.shape, generator=gen) * torch.rand(len(x), 1, 1, 1, generator=gen) * 0.1
        img = F.normalize(model.get_image_features(pixel_values=clip_normalize(x)).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=all_ids).pooler_output, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.tensor([index[world.caption(a)] for a in attrs])
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            acc = (logits.argmax(-1) == target).float().mean().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
    model.save_pretrained(work / "clip")


def train_unet(work: Path, steps: int, batch: int, seed: int, sample_every: int, check_prompts: int = 16) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(work)
    vae = load_vae(work)
    scale = vae.config.scaling_factor
    unet = UNet2DConditionModel(**unet_config(len(tokenizer)))
    text = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)))
    params = list(unet.parameters()) + list(text.parameters())
    ema = {"unet": copy.deepcopy(unet).requires_grad_(False), "text": copy.deepcopy(text).requires_grad_(False)}
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    sched = DDPMScheduler(**scheduler_kwargs())
    empty_ids = caption_ids(tokenizer, [""])
    data = Batches(seed + 2, batch, "train")
    gen = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = work / "unet_ckpt.pt"
    if ckpt.exists():  # resume an interrupted run where it stopped
        state = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        ema["unet"].load_state_dict(state["ema_unet"])
        ema["text"].load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start = data.i = state["step"]
        print(f"unet: resuming at step {start}")
    print(
        f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters, text encoder "
        f"{sum(p.numel() for p in text.parameters()) / 1e6:.2f}M"
    )
    bar = tqdm(range(start, steps), desc="unet", unit="step", initial=start, total=steps)
    losses: list[float] = []
    for step in bar:
        set_lr(opt, lr_at(step, steps, 5e-4, 500))
        attrs, x = next(data)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean * scale
        ids = caption_ids(tokenizer, [world.caption(a) for a in attrs])
        drop = torch.rand(batch, generator=gen) < 0.1  # 10% unconditional, for classifier-free guidance
        ids[drop] = empty_ids
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t)
        pred = unet(noisy, t, text(ids)[0]).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, live in (("unet", unet), ("text", text)):
                ema_params = list(ema[name].parameters())
                torch._foreach_lerp_(ema_params, list(live.parameters()), 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}")
        if (step + 1) % sample_every == 0 or step + 1 == steps:
            torch.save(
                {
                    "unet": unet.state_dict(),
                    "text": text.state_dict(),
                    "ema_unet": ema["unet"].state_dict(),
                    "ema_text": ema["text"].state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "step": step + 1,
                },
                ckpt,
            )
            pipe = build_pipeline(work, ema["unet"], ema["text"])
            score = quick_check(pipe, work / f"samples_{step + 1:06d}.png", check_prompts)
            tqdm.write(f"unet step {step + 1}: loss {np.mean(losses[-500:]):.4f}  pixel-judge accuracy {score}")
    pipe = build_pipeline(work, ema["unet"], ema["text"])
    pipe.save_pretrained(work / "pipeline", safe_serialization=True)


def build_pipeline(work: Path, unet, text):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=load_vae(work),
        text_encoder=text,
        tokenizer=load_tokenizer(work),
        unet=unet,
        scheduler=DDIMScheduler(**scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def quick_check(pipe, png: Path, n: int = 16) -> dict[str, float]:
    """Sample n held-out prompts at 20 steps, save a grid, return the pixel judge's accuracy per attribute."""
    from PIL import Image

    attrs = world.sample_attributes(12345, n, "heldout")
    images = []
    for i, a in enumerate(attrs):
        out = pipe(
            world.caption(a),
            num_inference_steps=20,
            guidance_scale=4.0,
            generator=torch.Generator("cpu").manual_seed(i),
            output_type="np",
            progress_bar=False,
        )
        images.append((out.images[0] * 255).round().astype(np.uint8))
    rows = [images[r : r + 8] + [np.zeros_like(images[0])] * (8 - len(images[r : r + 8])) for r in range(0, n, 8)]
    grid = np.concatenate([np.concatenate(row, 1) for row in rows], 0)
    Image.fromarray(grid).save(png)
    hits = {k: 0 for k in world.ATTRIBUTES}
    for a, im in zip(attrs, images):
        judged = world.judge_image(im)
        for k in hits:
            hits[k] += judged[k] == getattr(a, k)
    return {k: round(v / n, 2) for k, v in hits.items()}


def save_assets(work: Path, out: Path) -> None:
    import shutil

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    pipe = StableDiffusionPipeline.from_pretrained(str(work / "pipeline"), use_safetensors=True)
    target = out / "tiny-shapes-sd"
    shutil.rmtree(target, ignore_errors=True)
    pipe.save_pretrained(target, safe_serialization=True)
    clip = CLIPModel.from_pretrained(work / "clip")
    target = out / "tiny-shapes-clip"
    shutil.rmtree(target, ignore_errors=True)
    clip.save_pretrained(target, safe_serialization=True)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=CLIP_MEAN, image_std=CLIP_STD
        ),
        tokenizer=load_tokenizer(work),
    )
    processor.save_pretrained(target)
    # Ship the BPE source files beside tokenizer.json, so the vocabulary can be read and rebuilt by hand.
    for folder in (out / "tiny-shapes-sd" / "tokenizer", target):
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(work / "tokenizer" / name, folder / name)
    print(f"saved {out / 'tiny-shapes-sd'} and {target}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "assets", help="where the trained folders are written")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "tinyworld", help="checkpoints between stages")
    p.add_argument("--stages", default="tokenizer,vae,clip,unet,save")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--clip-steps", type=int, default=2500)
    p.add_argument("--unet-steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--check-prompts", type=int, default=16, help="held-out prompts sampled at each check")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    t0 = time.time()
    runs = {
        "tokenizer": lambda: train_tokenizer(args.work),
        "vae": lambda: train_vae(args.work, args.vae_steps, args.batch, args.seed),
        "clip": lambda: train_clip(args.work, args.clip_steps, 128, args.seed),
        "unet": lambda: train_unet(
            args.work, args.unet_steps, args.batch, args.seed, args.sample_every, args.check_prompts
        ),
        "save": lambda: save_assets(args.work, args.out),
    }
    unknown = set(stages) - set(runs)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(runs)}")
    for name, run in runs.items():
        if name in stages:
            t = time.time()
            run()
            print(f"stage {name}: {(time.time() - t) / 60:.1f} min")
    print(f"done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
