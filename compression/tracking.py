"""Experiment tracking of sweeps through accelerate's tracker interface (`Accelerator(log_with=...)`).

    python -m compression.sweep --track trackio --out runs/x        # local SQLite under TRACKIO_DIR, offline
    WANDB_MODE=offline python -m compression.sweep --track wandb --out runs/x
    python -m compression.sweep --track mlflow --out runs/x         # ./mlruns unless MLFLOW_TRACKING_URI

What is logged (by process 0 only): the configuration (model, weights digest, prompts digest, sampler, grid);
per setting, one step with every aggregate, its interval and N, and the setting's image strip; at the end
results.csv, summary.json and report.html as an artifact. results.csv and summary.json stay the source of truth:
a tracker is a view of them.

trackio is the tested backend (pinned in requirements.txt); wandb and mlflow are optional and named in the error
when chosen and missing.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_PROJECT = "diffusion-compression-lab"


@dataclass(frozen=True)
class TrackerBackend:
    """One tracker: the package it needs and how it logs what accelerate's generic `log` does not.

    Args:
        package (`str`): the import name, also the pip name.
        hint (`str`): appended to the missing-package message.
        log_image (`Callable`): (accelerator, key, png path, caption, step) -> None.
        log_files (`Callable`): (accelerator, name, paths) -> None.
    """

    package: str
    hint: str
    log_image: Callable
    log_files: Callable


def _trackio_image(acc, key, path, caption, step):
    import trackio

    acc.get_tracker("trackio", unwrap=True).log({key: trackio.Image(str(path), caption=caption)}, step=step)


def _trackio_files(acc, name, paths):
    import trackio

    art = trackio.Artifact(name, type="report")
    for p in paths:
        art.add_file(str(p))
    acc.get_tracker("trackio", unwrap=True).log_artifact(art)


def _wandb_image(acc, key, path, caption, step):
    import wandb

    acc.get_tracker("wandb", unwrap=True).log({key: wandb.Image(str(path), caption=caption)}, step=step)


def _wandb_files(acc, name, paths):
    import wandb

    art = wandb.Artifact(name, type="report")
    for p in paths:
        art.add_file(str(p))
    acc.get_tracker("wandb", unwrap=True).log_artifact(art)


def _mlflow_image(acc, key, path, caption, step):
    acc.get_tracker("mlflow").log_artifact(str(path), artifact_path=f"samples/{step:03d}")


def _mlflow_files(acc, name, paths):
    for p in paths:
        acc.get_tracker("mlflow").log_artifact(str(p), artifact_path=name)


TRACKERS: dict[str, TrackerBackend] = {
    "trackio": TrackerBackend("trackio", "(local, offline: logs go to TRACKIO_DIR)", _trackio_image, _trackio_files),
    "wandb": TrackerBackend("wandb", "(set WANDB_MODE=offline to log without an account)", _wandb_image, _wandb_files),
    "mlflow": TrackerBackend(
        "mlflow", "(logs to ./mlruns unless MLFLOW_TRACKING_URI is set)", _mlflow_image, _mlflow_files
    ),
}


def check_tracker(name: str) -> TrackerBackend:
    """The backend for `name`, its package importable.

    accelerate itself drops a tracker whose package is missing with a debug message; a sweep that was asked to
    log must not run for hours and log nothing.

    Raises:
        ValueError: unknown tracker (the message lists the known ones).
        ImportError: its package is not installed (the message names it and the pip command).
    """
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
    backend = TRACKERS[name]
    if importlib.util.find_spec(backend.package) is None:
        raise ImportError(
            f"--track {name} needs the {backend.package} package, which is not installed: "
            f"pip install {backend.package} {backend.hint}"
        )
    return backend


def _key(text: str) -> str:
    # MLflow allows letters, digits, _ - . space and /; the same keys everywhere keep dashboards alike.
    return re.sub(r"[^A-Za-z0-9_\-. /]+", "_", re.sub(r"[():]", "", text)).strip("_ ")


def flat_config(config: dict, prefix: str = "") -> dict:
    """Nested config -> flat {key: bool/int/float/str} (what every tracker's config accepts)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, f"{key}."))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = v
        else:
            out[key] = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def row_values(rows: list[dict]) -> dict[str, float]:
    """A cell's rows -> {"metric vs reference": value, ".../ci_low", ".../ci_high", ".../n"}, finite numbers only
    (e.g. "FD-tinyCLIP vs real", "accuracy all vs prompt", "UNet size")."""
    out = {}
    for r in rows:
        name = _key(f"{r['metric']} vs {r['reference']}" if r.get("reference") else r["metric"])
        for suffix, col in (("", "value"), ("/ci_low", "ci_low"), ("/ci_high", "ci_high"), ("/n", "n")):
            v = r.get(col)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[name + suffix] = float(v)
    return out


class SweepTracker:
    """Logs one sweep to one tracker through an `Accelerator(log_with=name)`; every method is a no-op outside
    process 0 (accelerate's trackers run on the main process only).

    Args:
        name (`str`): "trackio", "wandb" or "mlflow" (see `TRACKERS`).
        project (`str`, defaults to "diffusion-compression-lab"): the tracker's project / experiment.
        run_name (`str`, *optional*): the run's name (defaults to the tracker's own).

    Raises:
        ValueError, ImportError: from `check_tracker`.
    """

    def __init__(self, name: str, project: str = DEFAULT_PROJECT, run_name: str | None = None):
        from accelerate import Accelerator

        self.backend = check_tracker(name)
        self.name, self.project, self.run_name = name, project, run_name
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=name)
        self.started = False

    @property
    def active(self) -> bool:
        return self.accelerator.is_main_process

    def start(self, config: dict) -> None:
        """Open the run and store the configuration."""
        kwargs = {}
        if self.name == "trackio":
            kwargs = {"trackio": {"name": self.run_name, "auto_log_cpu": False, "auto_log_gpu": False}}
        elif self.name == "wandb" and self.run_name:
            kwargs = {"wandb": {"name": self.run_name}}
        elif self.name == "mlflow":
            kwargs = {"mlflow": {"run_name": self.run_name}}
        self.accelerator.init_trackers(self.project, config=flat_config(config), init_kwargs=kwargs)
        self.started = True

    def log_cell(self, step: int, cell: dict, strip: Path | None = None) -> None:
        """One setting: its aggregates (value, interval, N) and its image strip, at `step`."""
        if not (self.started and self.active):
            return
        self.accelerator.log({"prune_amount": float(cell["spec"]["prune_amount"]), **row_values(cell["rows"])}, step)
        if strip is not None and Path(strip).is_file():
            self.backend.log_image(self.accelerator, "samples", strip, cell["label"], step)

    def finish(self, out_dir: Path | None) -> None:
        """Attach results.csv, summary.json and report.html (where written) and close the run."""
        if not self.started:
            return
        if self.active and out_dir is not None:
            files = [out_dir / f for f in ("results.csv", "summary.json", "report.html") if (out_dir / f).is_file()]
            if files:
                self.backend.log_files(self.accelerator, "sweep-report", files)
        for t in self.accelerator.trackers:  # not end_training(): that also tears down the process group
            t.finish()
        self.started = False
