"""Structured pruning: whole channels removed from coupled UNet layers, so layers really shrink.

The coupled groups are the UNet's own: a ResNet block's inner channels (conv1 outputs = conv2 inputs, with norm2
and the time projection, the same number in each GroupNorm group), a transformer feed-forward's hidden width
(both GEGLU halves) and an attention layer's heads (q/k/v rows and out columns together).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .plan import Alloc, PrunePlan, _fresh
from .scopes import scope_layers

_STRUCTURED_TEXT = (
    "Remove whole channels, so layers really shrink (fewer parameters and MACs, faster on any hardware): the "
    "amount is the fraction removed of the inner channels of every ResNet block (conv1 outputs = conv2 inputs, "
    "with norm2 and the time projection; the same number in each GroupNorm group), of the hidden width of "
    "every transformer feed-forward and of the heads of every attention layer, ranked by the {norm} norm of "
    "their weights. Parameters shrink by about 0.88x the amount on SD 1.5 (shortcuts, up/down-samplers, "
    "proj_in/out and I/O layers keep their width); measured parameters are reported."
)


def _group_scores(parts: list[tuple[torch.Tensor, int]], channels: int, p: int) -> torch.Tensor:
    """One importance per channel from its coupled weight slices, each layer's norms scaled to mean 1.

    Args:
        parts: (weight, channel dim) pairs; a weight whose channel dim is twice `channels` (GEGLU's hidden
            and gate halves, scale_shift time projections) contributes both halves to a channel.
        p: 1 for L1 norms, 2 for L2.
    """
    total = torch.zeros(channels, dtype=torch.float32)
    for w, dim in parts:
        if w.device.type == "meta":
            continue  # sizing a plan on the meta device (budget.py): equal scores, the same counts kept
        w = w.detach().float()
        other = [d for d in range(w.dim()) if d != dim]
        norms = torch.linalg.vector_norm(w, ord=p, dim=other).cpu()
        if norms.numel() != channels:
            norms = torch.linalg.vector_norm(norms.view(-1, channels), ord=p, dim=0)
        total += norms / norms.mean().clamp_min(1e-12)  # each coupled layer weighs the same
    return total


def _kept_per_group(amount: float, units: int, groups: int = 1) -> int:
    """How many of `units` channels (or heads) a plan keeps in each of `groups` groups: the one rounding rule,
    shared by the plans and by `structured_size`, so that the size worked out beforehand is the size made."""
    return max(1, round((1 - amount) * (units // groups)))


def _norm_groups(block: nn.Module) -> int:
    # GroupNorm normalises channel groups together: every group keeps the same number of channels.
    return block.norm2.num_groups if isinstance(block.norm2, nn.GroupNorm) else 1


def _keep(scores: torch.Tensor, amount: float, groups: int) -> torch.Tensor:
    """Indices (sorted) of the channels to keep: the same number in each of `groups` contiguous groups."""
    channels = scores.numel()
    per = channels // groups
    keep = _kept_per_group(amount, channels, groups)
    top = scores.view(groups, per).topk(keep, dim=1).indices + torch.arange(groups)[:, None] * per
    return top.flatten().sort().values


class _ChannelPlan(PrunePlan):
    """Structured: keep only the chosen channels of coupled tensors; layers shrink physically."""

    def __init__(self, amount: float, p: int):
        self.amount = amount
        self.p = p
        self.slices: dict[tuple[str, str], tuple[int, torch.Tensor]] = {}  # (layer, param) -> (dim, kept)
        self.attrs: dict[str, dict[str, int]] = {}  # layer -> attribute -> new value
        self.module_attrs: dict[str, dict[str, int]] = {}  # the same for modules without tensors (Attention)
        self.units = 0
        self.channels_before = 0
        self.channels_after = 0
        self.zeros = None

    def _cut(self, layer: str, param: str, dim: int, keep: torch.Tensor) -> None:
        self.slices[(layer, param)] = (dim, keep)

    def add_resnet(self, prefix: str, block: nn.Module) -> None:
        c = block.conv1.out_channels
        norm = block.norm2
        groups = _norm_groups(block)
        parts = [(block.conv1.weight, 0), (block.conv2.weight, 1)]
        tproj = block.time_emb_proj
        if tproj is not None:
            parts.append((tproj.weight, 0))
        keep = _keep(_group_scores(parts, c, self.p), self.amount, groups)
        self._cut(f"{prefix}.conv1", "weight", 0, keep)
        self._cut(f"{prefix}.conv1", "bias", 0, keep)
        self.attrs[f"{prefix}.conv1"] = {"out_channels": keep.numel()}
        self._cut(f"{prefix}.conv2", "weight", 1, keep)
        self.attrs[f"{prefix}.conv2"] = {"in_channels": keep.numel()}
        if isinstance(norm, nn.GroupNorm) or hasattr(norm, "num_channels"):
            self._cut(f"{prefix}.norm2", "weight", 0, keep)
            self._cut(f"{prefix}.norm2", "bias", 0, keep)
            self.attrs[f"{prefix}.norm2"] = {"num_channels": keep.numel()}
        if tproj is not None:
            # "scale_shift" projects to 2c (scale and shift halves, chunked): keep channel i in both halves.
            rows = keep if tproj.out_features == c else torch.cat([keep, keep + c])
            self._cut(f"{prefix}.time_emb_proj", "weight", 0, rows)
            self._cut(f"{prefix}.time_emb_proj", "bias", 0, rows)
            self.attrs[f"{prefix}.time_emb_proj"] = {"out_features": rows.numel()}
        self.units += 1
        self.channels_before += c
        self.channels_after += keep.numel()

    def add_feed_forward(self, prefix: str, ff: nn.Module) -> None:
        act, out = ff.net[0], ff.net[2]
        hidden = out.in_features
        gated = act.proj.out_features == 2 * hidden  # GEGLU / SwiGLU: hidden and gate halves, chunked
        parts = [(act.proj.weight, 0), (out.weight, 1)]
        keep = _keep(_group_scores(parts, hidden, self.p), self.amount, 1)
        rows = torch.cat([keep, keep + hidden]) if gated else keep
        self._cut(f"{prefix}.net.0.proj", "weight", 0, rows)
        self._cut(f"{prefix}.net.0.proj", "bias", 0, rows)
        self.attrs[f"{prefix}.net.0.proj"] = {"out_features": rows.numel()}
        self._cut(f"{prefix}.net.2", "weight", 1, keep)
        self.attrs[f"{prefix}.net.2"] = {"in_features": keep.numel()}
        self.units += 1
        self.channels_before += hidden
        self.channels_after += keep.numel()

    def add_attention(self, prefix: str, attn: nn.Module) -> None:
        heads, inner = attn.heads, attn.to_q.out_features
        width = inner // heads
        parts = [(attn.to_q.weight, 0), (attn.to_k.weight, 0), (attn.to_v.weight, 0), (attn.to_out[0].weight, 1)]
        per_head = _group_scores(parts, inner, self.p).view(heads, width).sum(dim=1)
        kept_heads = per_head.topk(_kept_per_group(self.amount, heads)).indices.sort().values
        keep = (kept_heads[:, None] * width + torch.arange(width)).flatten()
        for proj in ("to_q", "to_k", "to_v"):
            self._cut(f"{prefix}.{proj}", "weight", 0, keep)
            self._cut(f"{prefix}.{proj}", "bias", 0, keep)
            self.attrs[f"{prefix}.{proj}"] = {"out_features": keep.numel()}
        self._cut(f"{prefix}.to_out.0", "weight", 1, keep)
        self.attrs[f"{prefix}.to_out.0"] = {"in_features": keep.numel()}
        # The processor splits q/k/v by `heads`; the head width (and so the softmax scale) stays as it was.
        self.module_attrs[prefix] = {
            "heads": kept_heads.numel(),
            "inner_dim": keep.numel(),
            "inner_kv_dim": keep.numel(),
        }
        self.units += 1
        self.channels_before += inner
        self.channels_after += keep.numel()

    def finish_(self, module: nn.Module) -> None:
        for name, attrs in self.module_attrs.items():  # modules that hold no tensor of their own
            target = module.get_submodule(name)
            for attr, value in attrs.items():
                setattr(target, attr, value)

    def tensor(self, layer: str, name: str, src: torch.Tensor, alloc: Alloc | None = None) -> torch.Tensor | None:
        cut = self.slices.get((layer, name))
        if cut is None:
            return None
        dim, keep = cut
        shape = list(src.shape)
        shape[dim] = keep.numel()
        out = alloc(tuple(shape), src.dtype) if alloc is not None else _fresh(tuple(shape), src.dtype, src.device)
        return torch.index_select(src, dim, keep.to(src.device), out=out)

    def fix_(self, layer: str, module: nn.Module) -> None:
        for attr, value in self.attrs.get(layer, {}).items():
            setattr(module, attr, value)


_FF_ACTIVATIONS = ("GEGLU", "SwiGLU", "GELU", "ApproximateGELU", "LinearActivation")
_HEAD_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # they split q/k/v by `attn.heads`, nothing else


def _head_prunable(attn: nn.Module) -> bool:
    # diffusers' Attention with plain q/k/v/out Linears and a processor that only reads `heads`: no added
    # k/v projections, no per-head norms, as many k/v heads as query heads.
    return (
        type(getattr(attn, "processor", None)).__name__ in _HEAD_PROCESSORS
        and all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("to_q", "to_k", "to_v"))
        and isinstance(getattr(attn, "to_out", [None])[0], nn.Linear)
        and getattr(attn, "add_k_proj", None) is None
        and getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and attn.to_q.out_features == attn.to_k.out_features
        and attn.heads > 1
        and attn.to_q.out_features % attn.heads == 0
    )


def _channel_units(module: nn.Module, scope: str) -> tuple[list, list, list]:
    """The ResNet blocks, feed-forwards and attention layers whose channels the scope covers (by first layer)."""
    names = {n for n, _ in scope_layers(module, scope)}
    resnets, ffs, attns = [], [], []
    for prefix, sub in module.named_modules():
        kind = type(sub).__name__
        if kind == "ResnetBlock2D" and f"{prefix}.conv1" in names and isinstance(sub.conv1, nn.Conv2d):
            resnets.append((prefix, sub))
        elif (
            kind == "FeedForward"
            and len(sub.net) >= 3
            and type(sub.net[0]).__name__ in _FF_ACTIVATIONS
            and f"{prefix}.net.0.proj" in names
            and isinstance(sub.net[2], nn.Linear)
        ):
            ffs.append((prefix, sub))
        elif kind == "Attention" and f"{prefix}.to_q" in names and _head_prunable(sub):
            attns.append((prefix, sub))
    return resnets, ffs, attns


def _channel_planner(p: int) -> Callable[[nn.Module, float, str, int], PrunePlan]:
    def plan(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
        resnets, ffs, attns = _channel_units(module, scope)
        if not resnets and not ffs and not attns:
            raise ValueError(
                f"pruning scope {scope!r} holds no channels that structured pruning removes (it takes the inner "
                "channels of ResNet blocks, the hidden width of transformer feed-forwards and attention heads); "
                "use all, no-io, resnet, attention, self-attention, cross-attention, feed-forward, down, mid or up"
            )
        result = _ChannelPlan(amount, p)
        with torch.no_grad():
            for prefix, block in resnets:
                result.add_resnet(prefix, block)
            for prefix, ff in ffs:
                result.add_feed_forward(prefix, ff)
            for prefix, attn in attns:
                result.add_attention(prefix, attn)
        return result

    return plan


def structured_size(module: nn.Module, amount: float, scope: str = "all") -> tuple[int, int, int]:
    """What a structured amount means before pruning: (parameters removed, channels before, channels after).

    Worked out from the layer shapes alone (no weight is read, a meta-device module works), with the same
    rounding as the structured methods (the same number of channels kept in every GroupNorm group), so
    `PruneReport.params_after == params_before - structured_size(...)[0]`.

    Args:
        module (`nn.Module`): the UNet.
        amount (`float`): fraction of channels to remove, 0.0 to `MAX_AMOUNT`.
        scope (`str`, defaults to `"all"`): a key of `SCOPES`.
    """
    resnets, ffs, attns = _channel_units(module, scope)
    removed = before = after = 0
    for _, b in resnets:
        c = b.conv1.out_channels
        groups = _norm_groups(b)
        keep = _kept_per_group(amount, c, groups) * groups
        per_channel = math.prod(b.conv1.weight.shape[1:]) + (b.conv1.bias is not None)
        per_channel += b.conv2.weight.shape[0] * math.prod(b.conv2.weight.shape[2:])
        per_channel += sum(t is not None for t in (getattr(b.norm2, "weight", None), getattr(b.norm2, "bias", None)))
        if b.time_emb_proj is not None:
            rows = b.time_emb_proj.out_features // c
            per_channel += rows * (b.time_emb_proj.in_features + (b.time_emb_proj.bias is not None))
        removed += per_channel * (c - keep)
        before, after = before + c, after + keep
    for _, ff in ffs:
        proj, out = ff.net[0].proj, ff.net[2]
        hidden = out.in_features
        keep = _kept_per_group(amount, hidden)
        per_channel = (proj.out_features // hidden) * (proj.in_features + (proj.bias is not None)) + out.out_features
        removed += per_channel * (hidden - keep)
        before, after = before + hidden, after + keep
    for _, attn in attns:
        inner, heads = attn.to_q.out_features, attn.heads
        keep = _kept_per_group(amount, heads) * (inner // heads)
        per_channel = sum(p.in_features + (p.bias is not None) for p in (attn.to_q, attn.to_k, attn.to_v))
        per_channel += attn.to_out[0].out_features
        removed += per_channel * (inner - keep)
        before, after = before + inner, after + keep
    return removed, before, after
