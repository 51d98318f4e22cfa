"""What the app needs besides its layout: the loaded models, request checking, and the files it writes.

app.py holds the gr.Blocks layout, the event wiring and the formatting of results; the work itself (compressing,
drawing, measuring, sweeping) lives in `compression/`. This module sits between the two and never imports gradio:

- `Lab`: the models this process serves. The startup model is loaded once and warmed; another catalog model is
  loaded on first use, and at most `max_models` stay loaded (the startup model is never dropped). Each model has
  two engines over ONE baseline pipeline: the Compare tab's (an LRU of compressed UNets) and the sweeps' (cache
  of one), so a sweep of 20 settings does not flush the UNets a person is flipping between. Both keep their
  UNets in one `UNetCache` bounded in bytes (`APP_CACHE_MB`, default from the memory left once the model is
  loaded: `compression.budget.cache_budget`); a setting that cannot fit it alone is refused at the checks.
- `parse_compare` / `parse_sweep`: every argument is checked here, server-side, before any model work. Gradio's
  sliders check their range but not NaN, infinities or the step, and API callers skip the UI altogether. A bad
  value raises `RequestError` whose message names the valid range and never echoes the value (Gradio renders
  error messages as HTML).
- output files: CSV downloads under `OUTPUT_DIR/downloads/` (pruned after `DOWNLOAD_TTL_S`), sweep work folders
  under `OUTPUT_DIR/sweeps/<model>/` (finished settings are reused by the next sweep with the same sampler
  settings).

Example:
    >>> lab = Lab()
    >>> lab.startup()                                 # load + warm the default model
    >>> req = parse_compare(lab, "a red circle on the left on a blue background", "", 0, 20, 4.0,
    ...                     lab.default_model, 30, "l1-unstructured", "all", "fp32", 4, None, None)
    >>> result = lab.get(req.model).engine.generate_pair(req.prompt, req.seed, req.steps, req.guidance, req.spec)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import numbers
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from compression import (
    CATALOG,
    SCOPES,
    CompressionSpec,
    Engine,
    available_pruners,
    available_quant_modes,
)
from compression.budget import BudgetError, cache_budget
from compression.engine import SIZE_MULTIPLE
from compression.latency import COMPARE_ROUNDS, COMPARE_STEPS, COMPARE_WARMUP
from compression.models import (
    DEFAULT_MODEL,
    DISTILLED,
    CatalogEntry,
    UnsafeModelError,
    default_device,
    load_pipeline,
    load_unet,
    resolve_model,
    unet_config,
)
from compression.prompt_reader import PromptReading
from compression.pruning import MAX_AMOUNT
from compression.quantization import MAX_BITS, MIN_BITS, QUANT_MODES
from compression.recover import check_recoverable, recovery_cost
from compression.spec import MAX_RECOVER_STEPS, MAX_SEED
from compression.sweep import PRESETS
from compression.unet_cache import UNetCache

log = logging.getLogger("dcl.app")

REPO_ROOT = Path(__file__).resolve().parent
OUTPUT_DIR = Path(os.environ.get("APP_OUTPUT_DIR", REPO_ROOT / "outputs")).resolve()
DOWNLOAD_DIR = OUTPUT_DIR / "downloads"  # the only folder Gradio may serve besides its own cache
SWEEP_DIR = OUTPUT_DIR / "sweeps"
DOWNLOAD_TTL_S = 3600  # CSVs older than this are deleted when the next one is written: disk stays bounded

# Limits of the public app (the library's are wider: a researcher on their own machine uses the CLI). Where the
# app allows what the library allows (seed, pruning amount, bits, size multiple), the library's constant is read.
MAX_PROMPT_CHARS = 1000  # the model reads 77 CLIP tokens (~300-400 characters); more is certainly a mistake
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_PRUNE_PERCENT = round(MAX_AMOUNT * 100, 6)
MAX_SWEEP_SETTINGS = 24  # settings per sweep, the baseline included
MAX_SWEEP_IMAGES = 1200  # settings x prompts per sweep: about 5 minutes of the tiny model on one CPU core
MAX_SWEEP_PROMPTS = 200
MAX_LATENCY_REPEATS = 10
SWEEP_BOOTSTRAP = 200  # resamples per bootstrap interval (means, KID); FD's interval is a jackknife, not resampled
# Admission by cost, in denoising image-steps (one image through one denoising step; a latency repeat counts as
# one image). The embedded model on this CPU (one thread): a step at batch 25 (50 with guidance) takes ~0.22 s,
# ~8.7 ms per image-step, so 30,000 image-steps is ~4.3 minutes of UNet plus decoding and scoring: about 5
# minutes, the most one job may hold the only model worker on a public Space. A bigger model costs more per
# step: lower the budget with the env var there.
MAX_JOB_STEPS = int(os.environ.get("APP_MAX_JOB_STEPS", "30000"))
COMPARE_LATENCY_ROUNDS = COMPARE_ROUNDS  # both UNets timed warm in alternating rounds after each comparison
# Smallest image side the app accepts (0: half the model's native side). A CPU Space serving SD 1.5 may lower it
# (64: 8x8 latents, ~0.3 s a step here) so that a comparison takes seconds, not minutes; the pictures of a model
# drawn far from its native size are poor, and the page says which size was drawn.
MIN_SIDE = int(os.environ.get("APP_MIN_SIDE", "0"))
HISTORY_LIMIT = 100  # comparisons kept per session (the oldest go first)
SWEEP_PERCENTS = (0, 10, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 95)
SWEEP_RECOVER_STEPS = (0, 100, 300, 500, 1000)  # the Sweep tab's recovery choices (the CLI takes any)
# The layer-sensitivity study prunes one of these at a time: the same parts as the CLI's preset.
LAYER_SCOPES = tuple(PRESETS["layer-sensitivity"]["scope"].split(","))
# The layer-type study prunes each of these over the same amounts: the CLI's preset again.
LAYER_TYPE_SCOPES = tuple(PRESETS["layer-types"]["scope"].split(","))
# The Sweep tab's studies: name -> what it runs (the UI's labels).
SWEEP_STUDIES = {
    "grid": "pruning x quantization grid",
    "layer-sensitivity": "layer sensitivity (one part of the UNet at a time)",
    "layer-types": "layer types (all layers, only Linear, only Conv2d)",
}


class RequestError(ValueError):
    """A request the app refuses; the message is plain text, safe to show, and names the valid values.

    Args:
        message (`str`): what is wrong and what is valid.
        field (`str`, *optional*): the endpoint parameter at fault (the UI marks that input).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _checked(checks) -> tuple[dict, dict[str, str]]:
    """Run (field, check) pairs; return the values of the good fields and the message of each bad one."""
    values, problems = {}, {}
    for field, check in checks:
        try:
            values[field] = check()
        except RequestError as err:
            problems[field] = str(err)
    return values, problems


def _raise_first(problems: dict[str, str]) -> None:
    if problems:
        field, message = next(iter(problems.items()))
        raise RequestError(message, field)


# ---------------------------------------------------------------------------------------- argument checks


def _number(value: object) -> float | None:
    """The value as a float if it is a real number (not a bool, not text), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def whole_number(name: str, value: object, lo: int, hi: int) -> int:
    """An integer from lo to hi. 42.0 is accepted (JSON and JavaScript have one number type); 3.5, NaN,
    infinities, None, text and booleans are refused."""
    v = _number(value)
    if v is None or not math.isfinite(v) or v != math.floor(v) or not lo <= v <= hi:
        raise RequestError(f"{name} must be a whole number from {lo} to {hi}.")
    return int(v)


def real_number(name: str, value: object, lo: float, hi: float, unit: str = "") -> float:
    """A finite number from lo to hi."""
    v = _number(value)
    if v is None or not math.isfinite(v) or not lo <= v <= hi:
        raise RequestError(f"{name} must be a number from {lo:g} to {hi:g}{unit}.")
    return v


def text(name: str, value: object, required: bool, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Text of at most max_chars characters; required text must hold more than whitespace."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text.")
    try:  # JSON can carry lone UTF-16 surrogates ("\ud800"): the tokenizer would fail on them later
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            f"{name} holds characters that are not valid Unicode (a lone surrogate); send UTF-8 text."
        ) from None
    if len(value) > max_chars:
        raise RequestError(f"{name} must be at most {max_chars} characters (the model reads about 77 words).")
    if required and not value.strip():
        raise RequestError(f"{name} is empty: type what the model should draw.")
    return value.strip()


def choice(name: str, value: object, known: Sequence[str], hint: str = "") -> str:
    """One of `known`; the message lists them (never the value given)."""
    if not isinstance(value, str) or value not in known:
        raise RequestError(f"unknown {name}; choose one of: {', '.join(known)}{hint}.")
    return value


def choices(name: str, values: object, known: Sequence[str], hint: str = "") -> list[str]:
    """A non-empty list of distinct members of `known`, in the order given."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise RequestError(f"choose at least one {name} from: {', '.join(known)}{hint}.")
    return list(dict.fromkeys(choice(name, v, known, hint) for v in values))


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelDefaults:
    """What the UI shows for a model before it is loaded: its catalog entry's sampler defaults and examples."""

    steps: int
    guidance: float
    side: int  # native image side in pixels
    prompt_set: str  # the sweep's prompt set
    examples: tuple[str, ...]  # example prompts
    grammar: str  # a note on the only prompts the model understands ("" for general models)


def model_defaults(name: str) -> ModelDefaults:
    """The catalog entry's defaults (a name the catalog does not know gets a general model's)."""
    try:
        entry = resolve_model(name)
    except ValueError:
        entry = CatalogEntry(str(name), str(name), "", local=False)
    return ModelDefaults(entry.steps, entry.guidance, entry.side, entry.prompt_set, entry.examples, entry.grammar)


@dataclass
class LoadedModel:
    """One model this process serves.

    Args:
        name (`str`): catalog name.
        engine (`Engine`): the Compare tab's engine (LRU of compressed UNets, cache of baseline images).
        sweep_engine (`Engine`): the sweeps' engine over the same baseline pipeline (cache of one UNet).
        metric_set (`compression.sweep.MetricSet`): CLIP judge and feature extractors for this model.
        native (`tuple[int, int]`): the size the model draws by default (height, width).
        device (`str`): where it runs.
        fingerprint (`str`): digest of the weight files (names the sweep folder).
        budget_note (`str`): how the byte budget of its cached compressed UNets was chosen (for the page).
    """

    name: str
    engine: Engine
    sweep_engine: Engine
    metric_set: object
    native: tuple[int, int]
    device: str
    fingerprint: str = ""
    budget_note: str = ""

    @property
    def cache(self) -> UNetCache:
        """The compressed UNets of both engines, bounded in bytes."""
        return self.engine.cache

    @property
    def judge(self):
        return getattr(self.metric_set, "judge", None)

    def size_range(self) -> tuple[int, int]:
        """Allowed image sides: half (or `APP_MIN_SIDE`) to twice the native size (a UNet trained at one size
        draws noise far from it, and memory grows with the square of the side)."""
        side = min(self.native)
        lo = min(MIN_SIDE, side) if MIN_SIDE > 0 else side // 2
        return max(8, lo - lo % SIZE_MULTIPLE), side * 2


class Lab:
    """The models this process serves, loaded once and shared by every session.

    Args:
        default_model (`str`, *optional*): catalog name of the startup model; default env `MODEL_ID`, else
            "tiny-shapes".
        cache_size (`int`, defaults to env `APP_CACHE_SIZE` or 3): compressed UNets kept per model for Compare.
        max_models (`int`, defaults to env `APP_MAX_MODELS` or 2): models loaded at once.
    """

    def __init__(self, default_model: str | None = None, cache_size: int | None = None, max_models: int | None = None):
        self.default_model = default_model or os.environ.get("MODEL_ID") or DEFAULT_MODEL
        self.cache_size = int(os.environ.get("APP_CACHE_SIZE", 3)) if cache_size is None else cache_size
        self.max_models = max(1, int(os.environ.get("APP_MAX_MODELS", 2)) if max_models is None else max_models)
        self.device = default_device()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.startup_error: str | None = None
        self.warm_seconds: float | None = None

    # The names the UI offers: the catalog, plus the startup model when ALLOW_ANY_MODEL let in another id.
    @property
    def model_names(self) -> list[str]:
        names = list(CATALOG)
        if self.default_model not in names:
            names.insert(0, self.default_model)
        return names

    def pruners(self) -> list[str]:
        return available_pruners(self.device)

    def quant_modes(self) -> list[str]:
        return available_quant_modes(self.device)

    def unavailable_quant_modes(self) -> list[tuple[str, str]]:
        """(mode, reason) for the modes this device cannot run (shown, not offered)."""
        return [(n, q.available(self.device)[1]) for n, q in QUANT_MODES.items() if not q.available(self.device)[0]]

    def loaded(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name`, loading it now if needed (evicting the least recently used other model).

        Raises:
            RequestError: unknown name, or the model could not be loaded (the reason in plain words; the
                traceback goes to the server log).
        """
        choice("model", name, self.model_names)
        with self._lock:  # one load at a time: two SD-sized loads at once would double the peak memory
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            started = time.perf_counter()
            try:
                pipe, info = load_pipeline(name)
                from compression.sweep import default_metric_set

                # Hub models score with openai CLIP / DINOv2 from the local cache; a Space with network may fetch
                # them (APP_DOWNLOAD_METRIC_MODELS=1). Missing ones are left out with a logged reason, never faked.
                allow = os.environ.get("APP_DOWNLOAD_METRIC_MODELS", "").strip().lower() in ("1", "true", "yes")
                metric_set = default_metric_set(info.name, allow_download=allow, log=log.info)
            except Exception as err:  # noqa: BLE001 - any loader failure becomes one plain message
                log.exception("could not load model %s", name)
                raise RequestError(_load_failure(name, err)) from None
            budget, budget_note = cache_budget(info.device)  # read now: the baseline is in memory
            cache = UNetCache(budget)  # Compare's and the sweeps' UNets together
            engine = Engine(pipe, info.name, cache_size=self.cache_size, cache=cache)
            sweep_engine = Engine(pipe, info.name, cache_size=1, baseline_cache_size=0, cache=cache, pool="sweep")
            loaded = LoadedModel(
                info.name,
                engine,
                sweep_engine,
                metric_set,
                engine.default_size(),
                info.device,
                weight_files_digest(info.source),
                budget_note,
            )
            self._models[name] = loaded
            while len(self._models) > self.max_models:
                victim = next((k for k in self._models if k != self.default_model), None)
                if victim is None:
                    break
                self._models.pop(victim)  # freed once no running request holds it
            log.info(
                "loaded %s on %s in %.1f s; compressed UNets: %s",
                name,
                info.device,
                time.perf_counter() - started,
                budget_note,
            )
            return loaded

    def startup(self, warm: bool = True) -> None:
        """Load the startup model and warm it (the first forward of a module pays allocator and kernel set-up
        costs; a visitor's first comparison should not). Failures are recorded, not raised: the page still
        serves and says what went wrong."""
        try:
            model = self.get(self.default_model)
        except RequestError as err:
            self.startup_error = str(err)
            return
        if warm:
            started = time.perf_counter()
            # Two steps at a small size the app accepts, a seed no one uses by default: warms every module on
            # both paths without putting the default comparison's baseline into the cache (the first real
            # comparison is measured honestly). A 1% pruned copy exercises the compression path, if it fits.
            spec = CompressionSpec(prune_amount=0.01)
            try:
                model.engine.check_fits(spec)
            except BudgetError:
                spec = CompressionSpec()
            side = min(model.native[0], max(model.size_range()[0], 64))  # 64 px: the tiny model's native size
            model.engine.generate_pair(
                "warm up", seed=MAX_SEED, steps=2, guidance=4.0, spec=spec, height=side, width=side
            )
            if model.judge is not None:
                model.judge.clip_score(np.zeros((1, *model.native, 3), np.uint8), ["warm up"])
            model.engine.clear_cache()
            self.warm_seconds = time.perf_counter() - started


def _load_failure(name: str, err: Exception) -> str:
    entry = CATALOG.get(name)
    if entry is not None and not entry.local:
        return (
            f"could not load {name} from the Hugging Face hub ({type(err).__name__}): it needs network access "
            "and a few GB of disk; this server may be offline. The embedded tiny-shapes model always works."
        )
    if isinstance(err, UnsafeModelError):  # our own plain refusal (pickles, custom code): names no server path
        return f"could not load {name}: {err}."
    if isinstance(err, FileNotFoundError):
        return f"could not load {name}: its weights are not in this copy of the app (assets/ incomplete)."
    return f"could not load {name} ({type(err).__name__}); see the server log."


# -------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class CompareRequest:
    """One checked comparison request; `prompt` is what the model reads (`reading` says how it was read).
    `against`: "" draws the compressed copy for `spec`; a distilled catalog model's name draws that model's UNet
    instead (over `model`'s VAE and text encoder; `spec` is the identity)."""

    model: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    spec: CompressionSpec
    reading: PromptReading | None = None
    against: str = ""

    def to_fields(self) -> dict:
        """As JSON (what crosses the ZeroGPU boundary); `reading` stays on this side (the page's warnings)."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ("spec", "reading")}
        return {**fields, "spec": self.spec.to_dict()}

    @classmethod
    def from_fields(cls, fields: dict) -> CompareRequest:
        return cls(**{**fields, "spec": CompressionSpec.from_dict(fields["spec"])})


def _size(name: str, value, lo: int, hi: int, default: int, model: str) -> int:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return default  # empty / 0: the model's native size
    v = _number(value)
    if v is None or not math.isfinite(v) or v != math.floor(v) or not lo <= v <= hi or int(v) % SIZE_MULTIPLE:
        raise RequestError(
            f"{name} must be a multiple of {SIZE_MULTIPLE} from {lo} to {hi} pixels for {model} (0: native size)."
        )
    return int(v)


def _compare_values(
    lab: Lab,
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    load: bool,
    recover_steps=0,
) -> tuple[dict, dict[str, str]]:
    values, problems = _checked(
        [
            ("prompt", lambda: text("prompt", prompt, required=True)),
            ("negative_prompt", lambda: text("negative prompt", negative_prompt, required=False)),
            ("seed", lambda: whole_number("seed", seed, 0, MAX_SEED)),
            ("steps", lambda: whole_number("steps", steps, 1, MAX_STEPS)),
            ("guidance", lambda: real_number("guidance", guidance, 0, MAX_GUIDANCE)),
            ("model", lambda: choice("model", model, lab.model_names)),
            ("prune_percent", lambda: round(real_number("pruning", prune_percent, 0, MAX_PRUNE_PERCENT, "%") / 100, 6)),
            ("prune_method", lambda: choice("pruning method", prune_method, lab.pruners())),
            ("prune_scope", lambda: choice("pruning scope", prune_scope, list(SCOPES))),
            (
                "quant_mode",
                lambda: choice(
                    "quantization mode", quant_mode, lab.quant_modes(), " (modes this device cannot run are hidden)"
                ),
            ),
        ]
    )
    if "steps" in values and compare_cost(values["steps"]) > MAX_JOB_STEPS:
        problems["steps"] = (
            f"this comparison costs {compare_cost(values['steps']):,} denoising image-steps (2 images "
            f"x {values['steps']} steps, and the latency timing); the app runs at most {MAX_JOB_STEPS:,} per job "
            "(APP_MAX_JOB_STEPS). Lower the steps."
        )
    values.update(_recovery_values(lab, values, problems, recover_steps))
    # bits only for the simulated mode (its slider is hidden otherwise and its value ignored), so two requests
    # that do the same thing share a cache entry.
    mode = values.get("quant_mode")
    if mode is not None and QUANT_MODES[mode].uses_bits:
        more, bad = _checked([("bits", lambda: whole_number("bits", bits, MIN_BITS, MAX_BITS))])
        values.update(more)
        problems.update(bad)
    else:
        values["bits"] = None
    if "model" in values:
        name = values["model"]
        if load and not problems:
            try:
                loaded = lab.get(name)
            except RequestError as err:
                return values, {"model": str(err)}
        else:
            loaded = lab.loaded(name)  # a check alone never loads a model
        if loaded is not None:
            lo, hi = loaded.size_range()
            more, bad = _checked(
                [
                    ("height", lambda: _size("height", height, lo, hi, loaded.native[0], name)),
                    ("width", lambda: _size("width", width, lo, hi, loaded.native[1], name)),
                ]
            )
            values.update(more)
            problems.update(bad)
            problems.update(_budget_problem(loaded, values, problems))
    return values, problems


def _recovery_values(lab: Lab, values: dict, problems: dict[str, str], recover_steps) -> dict:
    """The recovery request (steps and data) of a comparison; its problems go into `problems`, priced with the
    comparison in the same unit and refused before any work."""
    more, bad = _checked(
        [("recover_steps", lambda: whole_number("recovery steps", recover_steps, 0, MAX_RECOVER_STEPS))]
    )
    problems.update(bad)
    steps = more.get("recover_steps", 0)
    model = values.get("model")
    data = "real" if model and resolve_model(model).metrics.real_reference else "prompts"
    if not steps or "model" not in values:
        return {"recover_steps": steps, "recover_data": "real"}
    if values.get("prune_percent") == 0:
        problems["recover_steps"] = "recovery fine-tunes a pruned UNet: choose a pruning amount above 0, or 0 steps."
    try:
        check_recoverable(model, lab.device, data)
    except ValueError as err:
        problems["recover_steps"] = f"{err}."
    cost = compare_cost(values.get("steps", 1), steps)
    if cost > MAX_JOB_STEPS and "recover_steps" not in problems:
        problems["recover_steps"] = (
            f"this comparison costs {cost:,} denoising image-steps, recovery included (each recovery step costs "
            f"{recovery_cost(1)}); the app runs at most {MAX_JOB_STEPS:,} per job (APP_MAX_JOB_STEPS). "
            f"Lower the recovery steps (at most {max_recover_steps(values.get('steps', 1), 1):,} here), or use "
            "`python -m compression.recover`."
        )
    return {"recover_steps": steps, "recover_data": data}


def _spec_of(values: dict) -> CompressionSpec:
    return CompressionSpec(
        prune_amount=values["prune_percent"],
        prune_method=values["prune_method"],
        prune_scope=values["prune_scope"],
        quant_mode=values["quant_mode"],
        bits=values["bits"],
        recover_steps=values.get("recover_steps", 0),
        recover_data=values.get("recover_data", "real"),
    )


def _budget_problem(loaded: LoadedModel, values: dict, problems: dict) -> dict[str, str]:
    """{"quant_mode": why} when the setting's compressed UNet cannot fit the model's byte budget alone."""
    if problems or any(k not in values for k in ("prune_percent", "prune_method", "prune_scope", "quant_mode")):
        return {}
    try:
        loaded.engine.check_fits(_spec_of(values))
    except BudgetError as err:
        return {"quant_mode": str(err)}
    except ValueError:
        return {}  # the spec's own check (e.g. 2:4 takes 50% only) speaks when the request is parsed
    return {}


def compare_problems(
    lab: Lab,
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps=0,
) -> dict[str, str]:
    """What is wrong with a comparison request, by parameter name (empty: nothing). Cheap and never loads a
    model: the app runs it before the request joins the queue, so bad input is refused at once however busy
    the queue is."""
    return _compare_values(
        lab,
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        load=False,
        recover_steps=recover_steps,
    )[1]


def parse_compare(
    lab: Lab,
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps=0,
) -> CompareRequest:
    """Check every argument of a comparison (before any model work) and load the model if needed.

    Raises:
        RequestError: the first bad argument, with its valid range and its parameter name in `.field`.
    """
    v, problems = _compare_values(
        lab,
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        load=True,
        recover_steps=recover_steps,
    )
    _raise_first(problems)
    spec = _spec_of(v)
    reading = read_prompt(v["model"], v["prompt"])
    return CompareRequest(
        v["model"],
        reading.text,
        v["negative_prompt"],
        v["seed"],
        v["steps"],
        v["guidance"],
        v["height"],
        v["width"],
        spec,
        reading,
    )


def read_prompt(model: str, prompt: str) -> PromptReading:
    """What `model` reads from `prompt`: its catalog entry's reader (the embedded model's grammar), or the
    prompt as typed (hub models, and names outside the catalog)."""
    try:
        entry = resolve_model(model)
    except ValueError:
        return PromptReading(prompt, prompt, True)
    return entry.read_prompt(prompt)


# ------------------------------------------------------------------------------------- distilled comparisons
# A distilled SD 1.x UNet (BK-SDM, Segmind SD-Small/Tiny) drawn beside the model it was trained against, over
# that model's VAE and text encoder, with the same prompt and seed: its own endpoint, /compare_distilled.


def distilled_base(name: str) -> str:
    """The catalog model a distilled UNet draws against (its VAE, text encoder and baseline UNet)."""
    return CATALOG[name].compare_with


def _distilled_values(lab, prompt, negative_prompt, seed, steps, guidance, distilled, height, width, load):
    picked, problems = _checked([("distilled", lambda: choice("distilled model", distilled, DISTILLED))])
    if problems:
        return {}, problems
    base = distilled_base(picked["distilled"])
    values, problems = _compare_values(
        lab,
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        base,
        0,
        "l1-unstructured",
        "all",
        "fp32",
        None,
        height,
        width,
        load,
    )
    problems = {("distilled" if k == "model" else k): v for k, v in problems.items()}
    return {**values, **picked}, problems


def distilled_problems(lab: Lab, prompt, negative_prompt, seed, steps, guidance, distilled, height, width):
    """What is wrong with a distilled comparison, by parameter name; cheap and never loads a model."""
    return _distilled_values(lab, prompt, negative_prompt, seed, steps, guidance, distilled, height, width, False)[1]


def parse_distilled(lab: Lab, prompt, negative_prompt, seed, steps, guidance, distilled, height, width):
    """Check a distilled comparison and load its base model: a `CompareRequest` with `against` set.

    Raises:
        RequestError: the first bad argument, with its valid range and its parameter name in `.field`.
    """
    v, problems = _distilled_values(lab, prompt, negative_prompt, seed, steps, guidance, distilled, height, width, True)
    _raise_first(problems)
    return CompareRequest(
        v["model"],
        v["prompt"],
        v["negative_prompt"],
        v["seed"],
        v["steps"],
        v["guidance"],
        v["height"],
        v["width"],
        CompressionSpec(),
        against=v["distilled"],
    )


def distilled_unet(loaded: LoadedModel, name: str):
    """The distilled model's UNet, loaded once (only its UNet: `models.load_unet`, safetensors only) on the base
    model's device and dtype and kept in the base model's cache of UNets, under its byte budget.

    Returns:
        `(CompressedUNet, cached)`.

    Raises:
        BudgetError: the UNet alone is over the budget (worked out from its config before loading).
    """
    import torch

    dtype = next(loaded.engine.pipeline.unet.parameters()).dtype

    def estimate() -> int:  # from its config on the meta device: no weights read
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            skeleton = UNet2DConditionModel.from_config(unet_config(name))
        return sum(p.numel() for p in skeleton.parameters()) * dtype.itemsize

    return loaded.engine.prepared(name, lambda: load_unet(name, loaded.device, dtype)[0], estimate)


@dataclass(frozen=True)
class SweepRequest:
    """One checked sweep request."""

    model: str
    specs: tuple[CompressionSpec, ...]
    prompts: tuple[str, ...]
    prompt_set: str
    steps: int
    guidance: float
    latency_repeats: int
    layer_study: bool

    def to_fields(self) -> dict:
        """As JSON (what crosses the ZeroGPU boundary)."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return {**fields, "specs": [s.to_dict() for s in self.specs], "prompts": list(self.prompts)}

    @classmethod
    def from_fields(cls, fields: dict) -> SweepRequest:
        specs = tuple(CompressionSpec.from_dict(s) for s in fields["specs"])
        return cls(**{**fields, "specs": specs, "prompts": tuple(fields["prompts"])})


def sweep_quant_choices(lab: Lab) -> list[str]:
    """Quantization entries of the sweep grid: the device's modes, the simulated one at 8, 4 and 2 bits."""
    out = []
    for mode in lab.quant_modes():
        out += [f"{mode}:{b}" for b in (8, 4, 2)] if QUANT_MODES[mode].uses_bits else [mode]
    return out


def _amounts(prune_percents) -> list[float]:
    if isinstance(prune_percents, (int, float)) and not isinstance(prune_percents, bool):
        prune_percents = [prune_percents]
    if not isinstance(prune_percents, (list, tuple)) or not prune_percents:
        raise RequestError(f"choose at least one pruning percentage from 0 to {MAX_PRUNE_PERCENT:g}.")
    if len(prune_percents) > len(SWEEP_PERCENTS):
        raise RequestError(f"choose at most {len(SWEEP_PERCENTS)} pruning percentages.")
    return sorted(
        {round(real_number("each pruning percentage", p, 0, MAX_PRUNE_PERCENT, "%") / 100, 6) for p in prune_percents}
    )


def _sweep_values(
    lab: Lab,
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps=(0,),
) -> tuple[dict, dict[str, str]]:
    from compression.sweep import grid, load_prompts

    values, problems = _checked(
        [
            ("model", lambda: choice("model", model, lab.model_names)),
            ("prune_percents", lambda: _amounts(prune_percents)),
            ("prune_methods", lambda: choices("pruning method", prune_methods, lab.pruners())),
            ("study", lambda: choice("study", study, list(SWEEP_STUDIES))),
            ("n_prompts", lambda: whole_number("prompts", n_prompts, 1, MAX_SWEEP_PROMPTS)),
            ("steps", lambda: whole_number("steps", steps, 1, MAX_STEPS)),
            ("guidance", lambda: real_number("guidance", guidance, 0, MAX_GUIDANCE)),
            ("latency_repeats", lambda: whole_number("latency repeats", latency_repeats, 0, MAX_LATENCY_REPEATS)),
            ("recover_steps", lambda: _recover_choices(recover_steps)),
        ]
    )
    if values.get("study") == "grid":  # the layer studies ignore the quantization choice (fp32 only)
        more, bad = _checked(
            [("quant_modes", lambda: choices("quantization mode", quant_modes, sweep_quant_choices(lab)))]
        )
        values.update(more)
        problems.update(bad)
    if problems:
        return values, problems

    amounts, methods = values["prune_percents"], values["prune_methods"]
    if values["study"] == "grid":
        quant = [(e.split(":")[0], int(e.split(":")[1])) if ":" in e else (e, None) for e in values["quant_modes"]]
        recover = values["recover_steps"]
        data = "real" if resolve_model(values["model"]).metrics.real_reference else "prompts"
        if any(recover):
            try:
                check_recoverable(values["model"], lab.device, data)
            except ValueError as err:
                return values, {"recover_steps": f"{err}."}
        specs = grid(amounts, methods, quant, ["all"], recover_steps=recover, recover_data=data)
    elif values["study"] == "layer-types":  # the same L1 curve over every layer, the Linears, the Conv2ds
        specs = grid(amounts, methods[:1], [("fp32", None)], list(LAYER_TYPE_SCOPES))
    else:
        pruned = [a for a in amounts if a > 0]
        if not pruned:
            return values, {
                "prune_percents": "the layer-sensitivity study needs a pruning percentage above 0 (50 is a good start)."
            }
        specs = [CompressionSpec(), *(CompressionSpec(a, methods[0], s) for a in pruned for s in LAYER_SCOPES)]
    specs = list(dict.fromkeys(specs))
    n = values["n_prompts"]
    if len(specs) > MAX_SWEEP_SETTINGS:
        return values, {
            "prune_percents": (
                f"this sweep has {len(specs)} settings (baseline included); the app runs at most {MAX_SWEEP_SETTINGS} "
                f"per sweep (the layer study uses {len(LAYER_SCOPES)} per percentage). Choose fewer, or use "
                "`python -m compression.sweep`."
            )
        }
    if len(specs) * n > MAX_SWEEP_IMAGES:
        return values, {
            "n_prompts": (
                f"{len(specs)} settings x {n} prompts = {len(specs) * n} images; the app draws at most "
                f"{MAX_SWEEP_IMAGES} per sweep. Choose fewer prompts or settings."
            )
        }
    cost = sweep_price(specs, n, values["steps"], values["latency_repeats"])
    if cost > MAX_JOB_STEPS:
        return values, {
            "n_prompts": (
                f"this sweep costs {cost:,} denoising image-steps ({len(specs)} settings x {values['steps']} steps x "
                f"({n} prompts + {values['latency_repeats']} latency repeats), recovery training included); the app "
                f"runs at most {MAX_JOB_STEPS:,} per job (APP_MAX_JOB_STEPS). Lower the prompts, steps, latency "
                "repeats, recovery steps or settings, or use `python -m compression.sweep`."
            )
        }
    loaded = lab.loaded(values["model"])  # a check alone never loads a model; the handler checks again
    for spec in specs if loaded is not None else ():
        try:
            loaded.sweep_engine.check_fits(spec)
        except BudgetError as err:
            return values, {"quant_modes" if values["study"] == "grid" else "prune_percents": str(err)}
    prompt_set = model_defaults(values["model"]).prompt_set
    available = load_prompts(prompt_set)
    if n > len(available):
        return values, {
            "n_prompts": f"prompts must be a whole number from 1 to {len(available)} for the {prompt_set} prompt set."
        }
    values.update(specs=tuple(specs), prompt_set=prompt_set, prompts=tuple(available[:n]))
    return values, {}


def _recover_choices(values) -> list[int]:
    """The Sweep tab's recovery steps: a list of SWEEP_RECOVER_STEPS entries (0: the pruned settings as they are)."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise RequestError(
            f"choose at least one number of recovery steps from {', '.join(map(str, SWEEP_RECOVER_STEPS))}."
        )
    return sorted({whole_number("each number of recovery steps", v, 0, max(SWEEP_RECOVER_STEPS)) for v in values})


def check_sweep_fits(loaded: LoadedModel, req: SweepRequest) -> None:
    """Refuse a sweep with a setting whose compressed UNet cannot fit the model's byte budget alone (the checks
    before the queue do this only for a model already loaded).

    Raises:
        RequestError: naming the setting, its size and the budget.
    """
    for spec in req.specs:
        try:
            loaded.sweep_engine.check_fits(spec)
        except BudgetError as err:
            raise RequestError(str(err), "quant_modes") from None


def sweep_cost(n_settings: int, n_prompts: int, steps: int, latency_repeats: int) -> int:
    """A sweep's price in denoising image-steps: every setting draws every prompt, then times its latency
    repeats (one image each), all at `steps` steps."""
    return n_settings * steps * (n_prompts + latency_repeats)


def sweep_price(specs, n_prompts: int, steps: int, latency_repeats: int) -> int:
    """A sweep's whole price in denoising image-steps: `sweep_cost`, and the training of each recovered setting
    (it trains before it draws) at its measured price (`compression.recover.recovery_cost`)."""
    training = sum(recovery_cost(s.recover_steps) for s in specs)
    return sweep_cost(len(specs), n_prompts, steps, latency_repeats) + training


def max_recover_steps(steps: int = 20, step: int = 50) -> int:
    """The most recovery steps (a multiple of `step`) a comparison of `steps` denoising steps may ask for."""
    n = 0
    while compare_cost(steps, n + step) <= MAX_JOB_STEPS and n + step <= MAX_RECOVER_STEPS:
        n += step
    return n


def compare_cost(steps: int, recover_steps: int = 0) -> int:
    """A comparison's price in denoising image-steps: the baseline and the compressed image, both UNets' warm
    timing rounds (`latency.COMPARE_*`: 2 x (1 + 8) one-step runs), and the recovery's training steps at their
    measured price (`compression.recover.recovery_cost`)."""
    return 2 * steps + 2 * (COMPARE_WARMUP + COMPARE_LATENCY_ROUNDS) * COMPARE_STEPS + recovery_cost(recover_steps)


def sweep_problems(
    lab: Lab,
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps=(0,),
) -> dict[str, str]:
    """What is wrong with a sweep request, by parameter name (empty: nothing); cheap, loads nothing."""
    return _sweep_values(
        lab,
        model,
        prune_percents,
        prune_methods,
        quant_modes,
        study,
        n_prompts,
        steps,
        guidance,
        latency_repeats,
        recover_steps,
    )[1]


def parse_sweep(
    lab: Lab,
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps=(0,),
) -> SweepRequest:
    """Check a sweep request and build its grid.

    Grid study: every pruning percentage x method x quantization entry over the whole UNet (scope "all").
    Layer-sensitivity study: one part of the UNet pruned at a time (`LAYER_SCOPES`), at each non-zero
    percentage, with the first method, no quantization.
    Layer-type study: every percentage over all layers, only the Linears and only the Conv2ds
    (`LAYER_TYPE_SCOPES`), with the first method, no quantization.
    Recovery steps (grid study only): every pruned setting once per number of steps (0: as pruned).

    Raises:
        RequestError: a bad argument, or a grid over the app's limits (the message says which).
    """
    v, problems = _sweep_values(
        lab,
        model,
        prune_percents,
        prune_methods,
        quant_modes,
        study,
        n_prompts,
        steps,
        guidance,
        latency_repeats,
        recover_steps,
    )
    _raise_first(problems)
    return SweepRequest(
        v["model"],
        v["specs"],
        v["prompts"],
        v["prompt_set"],
        v["steps"],
        v["guidance"],
        v["latency_repeats"],
        v["study"] == "layer-sensitivity",
    )


# ----------------------------------------------------------------------------------------------- files


def download_path(stem: str, suffix: str) -> Path:
    """A fresh, unguessable file name under DOWNLOAD_DIR; files there older than DOWNLOAD_TTL_S are deleted
    first, so the folder stays small however long the app runs."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in DOWNLOAD_DIR.iterdir():
        try:
            if old.is_file() and now - old.stat().st_mtime > DOWNLOAD_TTL_S:
                old.unlink()
        except OSError:
            pass  # another request removed it first
    return DOWNLOAD_DIR / f"{stem}-{uuid.uuid4().hex[:12]}{suffix}"


def write_download(frame, stem: str) -> Path:
    """Write a DataFrame as a CSV download and return its path."""
    path = download_path(stem, ".csv")
    frame.to_csv(path, index=False)
    return path


def weight_files_digest(source: str) -> str:
    """A short digest of a model's weight files (names, sizes, modification times), without reading them.

    Part of the sweep folder's name: the sweep reuses finished settings by model NAME, so retraining the
    embedded model in place must not serve the old model's results."""
    folder = Path(source)
    if not folder.is_dir():
        return hashlib.sha256(source.encode()).hexdigest()[:10]
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".json"):
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:10]


model_fingerprint = weight_files_digest  # the former name; `compression.sweep.model_fingerprint` digests weights


def sweep_dir(model: str, fingerprint: str) -> Path:
    """The sweep work folder of a model version (finished settings and baseline images are reused from here)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[:80]
    return SWEEP_DIR / f"{safe}-{fingerprint}"


_SWEEP_LOCKS: dict[str, threading.Lock] = {}
_SWEEP_LOCKS_GUARD = threading.Lock()


def sweep_lock(folder: Path) -> threading.Lock:
    """The lock of one sweep work folder: sweeps in the same folder take turns.

    With APP_MODEL_CONCURRENCY > 1 two sweeps of one model could run at once; they would write the same
    memory-mapped baseline file (one truncating it under the other), the same results.csv and report.html (a
    visitor could download the other sweep's report), and share the model's sweep engine, whose cache holds one
    UNet. With the default concurrency of 1 the lock is always free.
    """
    with _SWEEP_LOCKS_GUARD:
        return _SWEEP_LOCKS.setdefault(str(Path(folder).resolve()), threading.Lock())


# ------------------------------------------------------------------------------------------ pictures


def image_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's RGB pixels (lets API clients and tests check which image they got)."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


# Anchor colours of a dark-to-bright heat scale (close to matplotlib's "inferno", which we do not depend on).
_HEAT = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def difference_heatmap(baseline: Image.Image, compressed: Image.Image, gain: float = 4.0) -> tuple[Image.Image, dict]:
    """|compressed - baseline| per pixel (mean over RGB), multiplied by a FIXED gain and coloured.

    A fixed gain (not "stretch to the maximum") keeps heatmaps comparable between settings: a near-identical
    pair stays near black instead of having its noise blown up to full scale.

    Returns:
        `(image, stats)`: stats holds mean and max absolute difference in 8-bit steps and the gain.
    """
    a = np.asarray(baseline.convert("RGB"), dtype=np.float64)
    b = np.asarray(compressed.convert("RGB"), dtype=np.float64)
    diff = np.abs(a - b).mean(axis=2)
    t = np.clip(diff * gain / 255.0, 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(_HEAT) - 1)
    frac = (t - lo)[..., None]
    rgb = _HEAT[lo] * (1 - frac) + _HEAT[hi] * frac
    stats = {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()), "gain": gain}
    return Image.fromarray(rgb.round().astype(np.uint8)), stats


def nonfinite_placeholder(size: tuple[int, int], what: str = "NaN / inf") -> Image.Image:
    """A striped image standing in for an output that held NaN/inf, so it is never mistaken for a picture."""
    h, w = size
    scale = max(1, 256 // max(h, w))
    H, W = h * scale, w * scale
    yy, xx = np.mgrid[0:H, 0:W]
    stripes = ((xx + yy) // max(4, W // 16)) % 2 == 0
    arr = np.where(stripes[..., None], np.array([200, 30, 30]), np.array([40, 40, 40])).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    draw.rectangle([W * 0.1, H * 0.38, W * 0.9, H * 0.62], fill=(255, 255, 255))
    draw.text((W * 0.14, H * 0.45), what, fill=(0, 0, 0))
    return img


def progress_adapter(progress) -> Callable[[float, str], None]:
    """The library's `progress(fraction, text)` callback on top of a gr.Progress (or anything alike)."""

    def update(fraction: float, description: str) -> None:
        progress(max(0.0, min(1.0, float(fraction))), desc=description)

    return update


# ------------------------------------------------------------------------------ export, recipes, shared links
# Additions for taking a comparison away: the compressed UNet as a zipped safetensors bundle, and links that
# reopen the same comparison. The bundle is built in a temporary folder and zipped into DOWNLOAD_DIR, so the
# downloads' expiry (DOWNLOAD_TTL_S) deletes it like any CSV.

EXPORT_MAX_BYTES = int(float(os.environ.get("EXPORT_MAX_MB", "512")) * 2**20)  # a public Space's disk and bandwidth
SHARE_FIELDS = (
    "prompt",
    "seed",
    "steps",
    "guidance",
    "model",
    "prune_percent",
    "prune_method",
    "prune_scope",
    "quant_mode",
    "bits",
)


def export_bundle(lab: Lab, req: CompareRequest) -> tuple[Path, int]:
    """Build the bundle of `req`'s compressed UNet (with its comparison drawn) and zip it as a download.

    Returns:
        `(zip_path, zip_bytes)`.

    Raises:
        RequestError: the compressed UNet is larger than EXPORT_MAX_BYTES, or the mode cannot be stored.
    """
    import shutil

    target = download_path("compressed-unet", ".zip")
    with _bundle(lab, req) as folder:
        made = shutil.make_archive(str(target.with_suffix("")), "zip", root_dir=folder)
    path = Path(made)
    return path, path.stat().st_size


@contextlib.contextmanager
def _bundle(lab: Lab, req: CompareRequest, build: Callable[[CompareRequest], Path] | None = None):
    """The bundle of `req` in a temporary folder under DOWNLOAD_DIR, deleted on leaving the block.

    `build` makes the folder (default `build_bundle`; the app passes its ZeroGPU function, which runs it on the
    GPU side)."""
    import shutil

    folder = build(req) if build is not None else build_bundle(lab, req)
    try:
        yield folder
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def build_bundle(lab: Lab, req: CompareRequest) -> Path:
    """Build `req`'s bundle (compressed UNet, its sample pair, card, recipe) into a new temporary folder under
    DOWNLOAD_DIR; returns `<temporary>/bundle` (the caller deletes its parent)."""
    import shutil
    import tempfile

    from compression.export import ExportError, save_compressed

    engine = lab.get(req.model).engine
    entry, _ = engine.compress(req.spec)
    if entry.cost.bytes > EXPORT_MAX_BYTES:
        raise RequestError(
            f"This compressed UNet is {entry.cost.bytes / 2**20:.0f} MiB; downloads here are limited "
            f"to {EXPORT_MAX_BYTES / 2**20:.0f} MiB (EXPORT_MAX_MB). Use the CLI: "
            "python -m compression.export."
        )
    sample = {
        "prompt": req.prompt,
        "seed": req.seed,
        "steps": req.steps,
        "guidance": req.guidance,
        "height": req.height,
        "width": req.width,
    }
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=DOWNLOAD_DIR))
    try:
        save_compressed(work / "bundle", req.spec, engine=engine, sample=sample)
    except ExportError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise RequestError(str(err)) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work / "bundle"


# Pushing a bundle to the Hub with the visitor's own OAuth token: off unless a Space sets APP_HUB_PUSH=1 (and
# `hf_oauth: true` in its README; see docs/export.md). Off, the page has no login button and the API no endpoint.
HUB_PUSH = os.environ.get("APP_HUB_PUSH", "").strip().lower() in ("1", "true", "yes")


def hub_push_missing() -> str:
    """Why Hub push cannot be offered here ("" when it can): Gradio's login needs its `oauth` extras."""
    import importlib.util

    missing = [m for m in ("authlib", "itsdangerous") if importlib.util.find_spec(m) is None]
    return f"Hub push needs gradio[oauth] ({', '.join(missing)} missing)" if missing else ""


def push_to_hub(
    lab: Lab,
    req: CompareRequest,
    repo_name,
    username: str | None,
    token: str | None,
    build: Callable[[CompareRequest], Path] | None = None,
) -> str:
    """Build `req`'s bundle and push it to the visitor's Hub repo with their token; returns the repo URL.

    Args:
        repo_name: "name" (under `username`) or "namespace/name".
        username (`str`, *optional*): the logged-in visitor (the default namespace).
        token (`str`, *optional*): the visitor's OAuth token (never this server's own).
        build (`Callable[[CompareRequest], Path]`, *optional*): builds the bundle folder (see `_bundle`); the
            upload then runs here, not on the GPU side.

    Raises:
        RequestError: not logged in, a bad repo name, or the Hub refused (plain text, no token).
    """
    from compression.publish import PublishError, check_repo_id, push_bundle

    if not token or not username:
        raise RequestError("Log in with Hugging Face first (the button above): the bundle is pushed as you.")
    name = text("Hub repo name", repo_name, required=True, max_chars=200)
    repo_id = name if "/" in name else f"{username}/{name}"
    try:
        check_repo_id(repo_id)
        with _bundle(lab, req, build) as folder:
            published = push_bundle(folder, repo_id, token, private=True)
    except PublishError as err:
        raise RequestError(str(err), "repo_name") from None
    return published.url


def recipe_of(req: CompareRequest) -> dict:
    """The recipe JSON of a comparison (accepted by `python -m compression.export --recipe`)."""
    from compression.export import make_recipe

    return make_recipe(
        req.model,
        req.spec,
        {
            "prompt": req.prompt,
            "seed": req.seed,
            "steps": req.steps,
            "guidance": req.guidance,
            "height": req.height,
            "width": req.width,
        },
    )


def parse_share_query(lab: Lab, params: dict, current: dict) -> tuple[dict, list[str]]:
    """Values of a shared link's query parameters, checked exactly like API input.

    Args:
        params (`dict`): the query parameters (strings).
        current (`dict`): the controls' present values by SHARE_FIELDS name (what a bad or absent value keeps).

    Returns:
        `(values, notes)`: the accepted values by field name, and one plain note per ignored parameter.
    """
    notes = [f"ignored unknown link parameter {k[:20]!r}" for k in params if k not in SHARE_FIELDS]
    given = {k: params[k] for k in SHARE_FIELDS if k in params}
    if not given:
        return {}, notes
    numeric = {"seed", "steps", "guidance", "prune_percent", "bits"}
    merged = dict(current)
    not_numbers = set()
    for k, v in given.items():
        if k in numeric:
            try:
                v = float(v)
                v = int(v) if v.is_integer() else v
            except (TypeError, ValueError):
                notes.append(f"ignored link parameter {k}: not a number")
                not_numbers.add(k)
                continue
        merged[k] = v
    m = merged
    problems = compare_problems(
        lab,
        m["prompt"],
        "",
        m["seed"],
        m["steps"],
        m["guidance"],
        m["model"],
        m["prune_percent"],
        m["prune_method"],
        m["prune_scope"],
        m["quant_mode"],
        m["bits"],
        None,
        None,
    )
    values = {}
    for k in given:
        if k in not_numbers:
            continue
        if k in problems:
            notes.append(f"ignored link parameter {k}: {problems[k]}")
        else:
            values[k] = merged[k]
    return values, notes


def share_query(values: dict) -> str:
    """The query string of a comparison's shareable link."""
    from urllib.parse import urlencode

    return urlencode({k: values[k] for k in SHARE_FIELDS if values.get(k) is not None})


# ------------------------------------------------------------------------------------------- request bodies
# Gradio parses a JSON body before any check of ours runs: a 60 MB prompt cost 100 MB of memory and slowed every
# other client. This cap answers 413 before parsing. Uploads have their own limit (launch's max_file_size).

MAX_BODY_BYTES = int(float(os.environ.get("APP_MAX_BODY_MB", "2")) * 2**20)  # the largest valid request is ~20 KB
BODY_LIMIT_EXEMPT = ("/gradio_api/upload",)  # multipart uploads: Gradio streams them to disk and enforces 5 MB


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with HTTP 413, before the app reads them.

    A Content-Length over the cap is refused without reading a byte; a body without one (chunked) is read up to
    the cap and refused as soon as it passes it, else handed on unchanged. Paths ending in an exempt suffix
    pass untouched.

    Args:
        app: the ASGI app to wrap.
        max_bytes (`int`, defaults to `MAX_BODY_BYTES`): the largest body accepted.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, exempt: Sequence[str] = BODY_LIMIT_EXEMPT):
        self.app, self.max_bytes, self.exempt = app, max_bytes, tuple(exempt)

    async def _refuse(self, send) -> None:
        body = (
            f'{{"detail": "request body over {self.max_bytes} bytes (APP_MAX_BODY_MB); '
            f'nothing this app takes is that large"}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").rstrip("/").endswith(self.exempt):
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # no Content-Length: read (at most the cap) here, then replay to the app
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return replayed.pop() if replayed else await receive()

        return await self.app(scope, replay, send)


def cap_request_bodies(server_app, max_bytes: int = MAX_BODY_BYTES) -> None:
    """Wrap a started Starlette/FastAPI app's middleware stack in `BodyLimit` (outermost, so it runs first).

    Starlette refuses `add_middleware` once the app has started; its stack is an attribute it builds on the
    first request, so it is built here if needed and wrapped."""
    if getattr(server_app, "middleware_stack", None) is None:
        server_app.middleware_stack = server_app.build_middleware_stack()
    if not isinstance(server_app.middleware_stack, BodyLimit):
        server_app.middleware_stack = BodyLimit(server_app.middleware_stack, max_bytes)
