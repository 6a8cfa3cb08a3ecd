"""PNG plots of a finished run: solution (prediction, reference, error), loss and rel L2 curves, alignment.

Reads the run folder's prediction.npz and metrics.jsonl; uses matplotlib's file-only Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["plot_run", "read_metrics"]


def read_metrics(directory: str | Path) -> list[dict]:
    path = Path(directory) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_solution(directory: Path) -> Path:
    """Prediction, reference and |error| over (t, x); for 2-D systems, u at the final time over (x, y)."""
    plt = _pyplot()
    data = np.load(directory / "prediction.npz")
    prediction, reference, t = data["prediction"][..., 0], data["reference"][..., 0], data["t"]
    x = data["coordinate_0"]
    if prediction.ndim == 2:  # [t, x]
        panels, extent, labels = (prediction.T, reference.T), [t[0], t[-1], x[0], x[-1]], ("t", "x")
    else:  # [t, y, x]: the last time
        y = data["coordinate_1"]
        panels, extent, labels = (prediction[-1], reference[-1]), [x[0], x[-1], y[0], y[-1]], ("x", "y")
    error = np.abs(panels[0] - panels[1])
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, image, title in zip(axes, (*panels, error), ("prediction", "reference", "|error|")):
        shown = axis.imshow(image, origin="lower", aspect="auto", extent=extent, cmap="jet")
        axis.set_title(title)
        axis.set_xlabel(labels[0])
        axis.set_ylabel(labels[1])
        figure.colorbar(shown, ax=axis)
    figure.tight_layout()
    path = directory / "solution.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(directory: Path, records: list[dict]) -> Path:
    """Weighted total loss, each loss term, and the relative L2 error against the step."""
    plt = _pyplot()
    steps = [r["step"] for r in records]
    figure, (losses, errors) = plt.subplots(1, 2, figsize=(12, 4))
    losses.semilogy(steps, [r["loss"] for r in records], label="total (weighted)", color="black")
    for name in records[0]["losses"] if records else []:
        losses.semilogy(steps, [r["losses"][name] for r in records], label=name, alpha=0.7)
    losses.set_xlabel("step")
    losses.set_title("loss")
    losses.legend()
    errors.semilogy(steps, [r["rel_l2"] for r in records], color="tab:red")
    errors.set_xlabel("step")
    errors.set_title("relative L2 error (current window)")
    figure.tight_layout()
    path = directory / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_alignment(directory: Path, records: list[dict]) -> Path:
    """Intra-step (between loss terms' gradients) and inter-step (consecutive updates) alignment."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("intra_step", "intra-step (loss terms)"), ("inter_step", "inter-step (updates)")):
        points = [(r["step"], r["alignment"][key]) for r in records if r["alignment"].get(key) is not None]
        if points:
            axis.plot(*zip(*points), label=label, marker=".")
    axis.set_ylim(-1.05, 1.05)
    axis.set_xlabel("step")
    axis.set_ylabel("alignment score A")
    axis.legend()
    figure.tight_layout()
    path = directory / "alignment.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_run(directory: str | Path) -> list[Path]:
    """All plots of the run in `directory`; returns their paths."""
    directory = Path(directory)
    records = read_metrics(directory)
    paths = [plot_solution(directory)]
    if records:
        paths += [plot_curves(directory, records), plot_alignment(directory, records)]
    return paths
