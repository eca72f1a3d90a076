"""The figures of runs and reports, as PNG files written atomically (matplotlib only, no torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """One run's loss and accuracies per epoch (metrics.jsonl's records)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["valid_loss"] for h in history], label="valid")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train (segment)")
    ax_acc.plot(epochs, [h["valid_segment_acc"] for h in history], label="valid (segment)")
    ax_acc.plot(epochs, [h["valid_clip_acc"] for h in history], label="valid (clip)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(matrix, labels, path: Path, title: str) -> None:
    """The confusion matrix ``(n_classes, n_classes)`` of clip predictions as a PNG at ``path``."""
    plt = _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6 + 0.3 * len(labels), 5 + 0.3 * len(labels)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, colorbar=False,
                                                                           xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_learning_curves(histories: list[tuple[str, list[dict], bool]], path: Path) -> None:
    """Several runs' loss and valid accuracy per epoch in one figure.

    ``histories`` holds ``(name, metrics.jsonl records, chosen)`` per run; chosen runs
    are drawn bold.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history, chosen) in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        style = {"color": colors[i % len(colors)], "marker": "o", "markersize": 3,
                 "linewidth": 2.5 if chosen else 1.2}
        ax_loss.plot(epochs, [h["train_loss"] for h in history], linestyle="--", **style)
        ax_loss.plot(epochs, [h["valid_loss"] for h in history], label=name, **style)
        ax_acc.plot(epochs, [h["valid_clip_acc"] for h in history], label=name, **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (valid solid, train dashed)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="valid accuracy (clip level)", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    _save(fig, path)
