"""Pruning scopes: which Linear/Conv2d layers of a UNet a method may touch.

Each scope is one `Scope` object in `SCOPE_REGISTRY`: a name, a one-line description and a
`select(module, name)` that says whether the layer called `name` inside `module` belongs to it (like torchao's
`filter_fn(module, fqn)`). Adding a scope is one entry here; the app, the API checks, the sweep CLI and the
tests read the registry (`SCOPES` is its name -> description view).

Class names, not imports: a scope must also work on a quantized copy and on models other than diffusers' UNet
(a scope that matches nothing raises, it never silently prunes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn


def _short_repr(value: object, limit: int = 40) -> str:
    # Messages end up in HTML in the app: never echo a huge or hostile input in full.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_prunable(module: nn.Module) -> bool:
    # quanto's QLinear/QConv2d subclass these, so quantized copies still count as the same layers.
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _chain(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
    """(prefix, submodule) from `module` itself down to the layer `name`, each enclosing module once."""
    yield "", module
    parts = name.split(".") if name else []
    sub = module
    for i, part in enumerate(parts):
        sub = sub.get_submodule(part)
        yield ".".join(parts[: i + 1]), sub


def _inside(*classes: str) -> Callable[[nn.Module, str], bool]:
    """The layer sits inside (or is) a submodule whose class name is in `classes`."""

    def select(module: nn.Module, name: str) -> bool:
        return any(type(sub).__name__ in classes for _, sub in _chain(module, name))

    return select


def _in_attention(cross: bool) -> Callable[[nn.Module, str], bool]:
    """The layer sits inside a diffusers `Attention` that is (or is not) cross-attention."""

    def select(module: nn.Module, name: str) -> bool:
        return any(
            type(sub).__name__ == "Attention" and bool(getattr(sub, "is_cross_attention", False)) == cross
            for _, sub in _chain(module, name)
        )

    return select


def _under(top: str) -> Callable[[nn.Module, str], bool]:
    def select(module: nn.Module, name: str) -> bool:
        return name.split(".")[0] == top

    return select


def _of_type(cls: type) -> Callable[[nn.Module, str], bool]:
    def select(module: nn.Module, name: str) -> bool:
        return isinstance(module.get_submodule(name), cls)

    return select


# The UNet's entry/exit convs and its timestep / class / added-condition embeddings: tiny, but the most
# sensitive layers (every output pixel or every timestep goes through them).
_IO_NAMES = ("conv_in", "conv_out", "time_embedding", "class_embedding", "add_embedding")


def _not_io(module: nn.Module, name: str) -> bool:
    return name.split(".")[0] not in _IO_NAMES


def _everything(module: nn.Module, name: str) -> bool:
    return True


def _transformer_projection(module: nn.Module, name: str) -> bool:
    """The proj_in / proj_out layer (1x1 conv or Linear) of a Transformer2DModel."""
    parent, _, child = name.rpartition(".")
    return child in ("proj_in", "proj_out") and type(module.get_submodule(parent)).__name__ == "Transformer2DModel"


@dataclass(frozen=True)
class Scope:
    """One pruning scope.

    Args:
        name (`str`): the registry key.
        description (`str`): one line for the UI and docs: which layers it covers.
        select (`Callable[[nn.Module, str], bool]`): `(module, name)` -> whether the Linear/Conv2d layer
            `module.get_submodule(name)` belongs to the scope; only asked about Linear/Conv2d layers.
    """

    name: str
    description: str
    select: Callable[[nn.Module, str], bool]


SCOPE_REGISTRY: dict[str, Scope] = {
    s.name: s
    for s in (
        Scope("all", "every nn.Linear and nn.Conv2d (the seed study's choice)", _everything),
        Scope("no-io", "all but conv_in, conv_out and the time/class embeddings", _not_io),
        Scope(
            "attention",
            "only the transformer blocks (q/k/v/out projections, feed-forward, proj_in/out)",
            _inside("Transformer2DModel", "BasicTransformerBlock", "Attention"),
        ),
        Scope("resnet", "only the ResNet blocks (conv1, conv2, time_emb_proj, shortcut)", _inside("ResnetBlock2D")),
        # Finer parts, for the layer-sensitivity study (one part pruned at a time): where in the UNet ...
        Scope("down", "only the encoder half (every layer under down_blocks)", _under("down_blocks")),
        Scope("mid", "only the bottleneck (every layer under mid_block)", _under("mid_block")),
        Scope("up", "only the decoder half (every layer under up_blocks)", _under("up_blocks")),
        # ... and which kind of layer inside the transformer blocks ("attention" is the union of these four).
        Scope(
            "self-attention",
            "only the q/k/v/out projections of self-attention (image tokens to image tokens)",
            _in_attention(cross=False),
        ),
        Scope(
            "cross-attention",
            "only the q/k/v/out projections of cross-attention (where the text enters the image)",
            _in_attention(cross=True),
        ),
        Scope(
            "feed-forward",
            "only the transformer feed-forward layers (GEGLU projection and output Linear)",
            _inside("FeedForward"),
        ),
        Scope(
            "projection",
            "only proj_in/proj_out, which map feature maps into and out of the transformer blocks",
            _transformer_projection,
        ),
        # By kind of layer, wherever it sits (the seed study's second experiment): "all" is exactly these two.
        Scope(
            "linear",
            "every nn.Linear (attention and feed-forward projections, time embedding, time_emb_proj)",
            _of_type(nn.Linear),
        ),
        Scope(
            "conv",
            "every nn.Conv2d (ResNet convolutions, samplers, conv_in/conv_out, 1x1 proj_in/out where used)",
            _of_type(nn.Conv2d),
        ),
    )
}

#: Scope name -> description: the view the app, the API checks and the docs list.
SCOPES: dict[str, str] = {name: s.description for name, s in SCOPE_REGISTRY.items()}


def get_scope(scope: str) -> Scope:
    """The registry entry for `scope`; ValueError naming the known scopes otherwise."""
    try:
        return SCOPE_REGISTRY[scope]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning scope {_short_repr(scope)}; known: {', '.join(SCOPES)}") from None


def scope_layers(module: nn.Module, scope: str = "all") -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of `module` that a scope covers, in module order.

    Args:
        module (`nn.Module`): usually a UNet2DConditionModel, but any module works for "all".
        scope (`str`, defaults to `"all"`): a key of `SCOPES`.

    Raises:
        ValueError: unknown scope, or a scope that selects no Linear/Conv2d layer of this module.
    """
    select = get_scope(scope).select
    layers = [(n, m) for n, m in module.named_modules() if _is_prunable(m) and select(module, n)]
    if not layers:
        raise ValueError(f"pruning scope {scope!r} selects no nn.Linear/nn.Conv2d layer in {type(module).__name__}")
    return layers
