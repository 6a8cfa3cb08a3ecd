"""Tabulate finished or running runs: one row per run folder (config.json, metrics.jsonl, summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

from .plots import read_metrics

__all__ = ["collect_run", "format_table", "comparison_report"]

COLUMNS = ("run", "pde", "optimizer", "preset", "steps", "rel_l2", "best_rel_l2", "final_loss", "wall_s", "steps/s")


def collect_run(directory: str | Path) -> dict:
    """One row for the run in `directory`; ValueError if it is not a soap-pinn run folder."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ValueError(f"{directory} is not a soap-pinn run folder (no config.json)")
    config = json.loads(config_path.read_text())
    records = read_metrics(directory)
    summary_path = directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    last = records[-1] if records else {}
    steps = summary.get("steps", last.get("step", 0) + 1 if records else 0)
    wall = summary.get("wall_time_s", last.get("time"))
    return {
        "run": str(directory),
        "pde": config["pde"],
        "optimizer": config["optimizer"],
        "preset": config["preset"],
        "steps": steps,
        # whole-domain error once finished; the current window's error of the last record otherwise
        "rel_l2": summary.get("rel_l2", last.get("rel_l2")),
        "best_rel_l2": min((r["rel_l2"] for r in records), default=None),
        "final_loss": last.get("loss"),
        "wall_s": wall,
        "steps/s": steps / wall if wall else None,
    }


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(COLUMNS)] + [[_cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def comparison_report(directories: list[str | Path]) -> dict:
    """A JSON-ready comparison: machine, one row per run, and each run's rel L2 and time at every logged step
    (equal steps line up across runs that share log_every)."""
    import os
    import platform

    import torch

    runs = []
    for directory in directories:
        row = collect_run(directory)
        row["curve"] = [
            {"step": r["step"], "rel_l2": r["rel_l2"], "loss": r["loss"], "time_s": r["time"],
             "alignment": r["alignment"]}
            for r in read_metrics(directory)
        ]  # fmt: skip
        info_path = Path(directory) / "run_info.json"
        row["run_info"] = json.loads(info_path.read_text()) if info_path.exists() else None
        row["config"] = json.loads((Path(directory) / "config.json").read_text())
        runs.append(row)
    return {
        "machine": {
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "runs": runs,
    }
