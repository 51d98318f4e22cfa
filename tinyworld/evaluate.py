"""Evaluate the embedded model against the bars of its issue; prints JSON (and writes it with --json).

    python -m tinyworld.evaluate                       # the full evaluation (~10 min on 2 cores)
    python -m tinyworld.evaluate --quick               # a few prompts, seconds; what the tests run

What it measures, all with fixed seeds:
- prompt following on held-out prompts (captions the diffusion model never saw in training), judged per
  attribute twice: by the metric CLIP (zero-shot among the alternatives of that attribute, the rest of the
  caption kept) and by the pixel-level judge of `compression.world`; and how often the two judges agree;
- the metric CLIP's own zero-shot accuracy per attribute on held-out real images;
- Frechet distance and KID on metric-CLIP features between generated and real images, next to the same
  distances between two independent real sets (the noise floor);
- seconds per 64x64 image at the given steps, with 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compression import metrics, world

REPO = Path(__file__).resolve().parent.parent
ALTERNATIVES = {
    "background": list(world.COLOURS),
    "colour": list(world.COLOURS),
    "position": list(world.POSITIONS),
    "shape": list(world.SHAPES),
}


def candidates(a: world.Attributes, attribute: str) -> list[world.Attributes]:
    """`a` with `attribute` set to each alternative the grammar allows (shape colour != background)."""
    out = []
    for value in ALTERNATIVES[attribute]:
        try:
            out.append(a.replace(**{attribute: value}))
        except ValueError:
            pass
    return out


def clip_judge(judge: metrics.MetricClip, images: np.ndarray, attrs: list[world.Attributes]) -> dict[str, list[str]]:
    """Per attribute, the value the metric CLIP picks for each image (zero-shot among the alternatives)."""
    picks = {}
    for attribute in ALTERNATIVES:
        options = [candidates(a, attribute) for a in attrs]
        chosen = judge.choose(images, [[world.caption(o) for o in group] for group in options])
        picks[attribute] = [getattr(group[i], attribute) for group, i in zip(options, chosen)]
    return picks


def accuracy(picked: dict[str, list], attrs: list[world.Attributes]) -> dict[str, float]:
    return {k: round(float(np.mean([p == getattr(a, k) for p, a in zip(v, attrs)])), 4) for k, v in picked.items()}


@torch.no_grad()
def generate(
    pipe, attrs: list[world.Attributes], seeds: list[int], steps: int, guidance: float, batch: int = 25
) -> np.ndarray:
    images = []
    for i in tqdm(range(0, len(attrs), batch), desc="generate", unit="batch"):
        prompts = [world.caption(a) for a in attrs[i : i + batch]]
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np")
        images.append((out.images * 255).round().astype(np.uint8))
    return np.concatenate(images)


@torch.no_grad()
def seconds_per_image(pipe, steps: int, guidance: float, threads: int, repeats: int = 5) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for r in range(repeats + 1):  # the first run is a warm-up
            t = time.perf_counter()
            pipe(
                "a red circle on the left on a blue background",
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(r),
                output_type="np",
            )
            times.append(time.perf_counter() - t)
        return round(statistics.median(times[1:]), 4)
    finally:
        torch.set_num_threads(before)


def evaluate(
    pipeline_path: Path,
    clip_path: Path,
    n_prompts: int,
    n_fd: int,
    steps: int,
    guidance: float,
    timing_repeats: int = 5,
) -> dict:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(pipeline_path), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    judge = metrics.MetricClip(str(clip_path))
    result: dict = {"prompts": n_prompts, "steps": steps, "guidance": guidance, "split": "heldout"}

    attrs = world.sample_attributes(2024, n_prompts, "heldout")
    images = generate(pipe, attrs, list(range(n_prompts)), steps, guidance)
    by_clip = clip_judge(judge, images, attrs)
    judged = [world.judge_image(im) for im in images]
    by_pixels = {k: [j[k] for j in judged] for k in ALTERNATIVES}
    result["generated_accuracy_clip"] = accuracy(by_clip, attrs)
    result["generated_accuracy_pixel"] = accuracy(by_pixels, attrs)
    result["judges_agree"] = {
        k: round(float(np.mean([a == b for a, b in zip(by_clip[k], by_pixels[k])])), 4) for k in ALTERNATIVES
    }

    real_attrs, real = world.real_images(777, max(n_prompts, 1000 if n_fd >= 1000 else n_prompts), "heldout")
    result["real_accuracy_clip"] = accuracy(clip_judge(judge, real, real_attrs), real_attrs)
    result["real_accuracy_pixel"] = accuracy(
        {k: [world.judge_image(im)[k] for im in real] for k in ALTERNATIVES}, real_attrs
    )

    # Distribution distances: generated vs real, and real vs real (the floor a perfect model would reach).
    fd_attrs = world.sample_attributes(99, n_fd, "heldout")
    generated = generate(pipe, fd_attrs, [10_000 + i for i in range(n_fd)], steps, guidance)
    _, real_a = world.real_images(1001, n_fd, "heldout")
    _, real_b = world.real_images(1002, n_fd, "heldout")
    features = judge.feature_extractor()
    name = judge.name
    result[f"FD-{name}"] = {
        "n": n_fd,
        "generated_vs_real": round(metrics.frechet_distance(features, real_a, generated), 5),
        "real_vs_real": round(metrics.frechet_distance(features, real_a, real_b), 5),
    }
    kid_gen = metrics.kernel_inception_distance(features, real_a, generated)
    kid_real = metrics.kernel_inception_distance(features, real_a, real_b)
    result[f"KID-{name}"] = {
        "n": n_fd,
        "generated_vs_real": round(kid_gen[0], 6),
        "real_vs_real": round(kid_real[0], 6),
    }

    result["seconds_per_image"] = {
        f"{t}_threads": seconds_per_image(pipe, steps, guidance, t, timing_repeats) for t in (1, 2)
    }
    result["unet_parameters"] = sum(p.numel() for p in pipe.unet.parameters())
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=REPO / "assets" / "tiny-shapes-sd")
    p.add_argument("--clip", type=Path, default=REPO / "assets" / "tiny-shapes-clip")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--fd-images", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="8 prompts, 32 images for the distances")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.fd_images = 8, 32
    torch.set_num_threads(args.threads)
    result = evaluate(
        args.pipeline,
        args.clip,
        args.prompts,
        args.fd_images,
        args.steps,
        args.guidance,
        timing_repeats=1 if args.quick else 5,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
