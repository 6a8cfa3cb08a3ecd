"""PNG plots of suite results: per case, one bar per provider at the median, whiskers from p10 to p90."""

from __future__ import annotations

from pathlib import Path


def _draw_suite(axis, suite: str, rows: list[dict]) -> None:
    import numpy as np

    timed = [row for row in rows if row.get("median_ms") is not None]
    if not timed:
        axis.set_title(f"{suite}: no timed rows")
        axis.axis("off")
        return
    cases = list(dict.fromkeys(row["case"] for row in timed))
    providers = list(dict.fromkeys(row["provider"] for row in timed))
    width = 0.8 / len(providers)
    positions = np.arange(len(cases))
    for slot, provider in enumerate(providers):
        by_case = {row["case"]: row for row in timed if row["provider"] == provider}
        medians = [by_case[c]["median_ms"] if c in by_case else np.nan for c in cases]
        low = [
            by_case[c]["median_ms"] - by_case[c].get("p10_ms", by_case[c]["median_ms"]) if c in by_case else 0
            for c in cases
        ]
        high = [
            by_case[c].get("p90_ms", by_case[c]["median_ms"]) - by_case[c]["median_ms"] if c in by_case else 0
            for c in cases
        ]
        axis.bar(
            positions + (slot - (len(providers) - 1) / 2) * width,
            medians,
            width,
            yerr=[low, high],
            capsize=2,
            label=provider,
        )
    axis.set_xticks(positions, cases, rotation=30, ha="right", fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("median ms (p10-p90)")
    axis.set_title(suite)
    axis.legend(fontsize=7)


def plot_results(documents: list[dict], path: Path, title: str = "") -> Path:
    """One panel per suite document ({"suite", "records"}), written as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or the GPU machine
    import matplotlib.pyplot as plt

    documents = [doc for doc in documents if doc.get("records")] or documents[:1]
    figure, axes = plt.subplots(len(documents), 1, figsize=(9, 3.6 * max(1, len(documents))), squeeze=False)
    for axis, document in zip(axes[:, 0], documents):
        _draw_suite(axis, document.get("suite", "?"), document.get("records", []))
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
