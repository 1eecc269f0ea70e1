"""Stage 01 (baseline) views: the training history and the confusion matrix."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from playbook.views.core import PALETTE, Chart, _figure


def plot_history(history: Sequence[dict[str, float]]) -> Any:
    """Training loss and validation top-1 per epoch."""
    fig, ax = _figure(6, 3)
    if not history:
        ax.text(0.5, 0.5, "loaded from checkpoint: no training history", ha="center", va="center")
        ax.set_axis_off()
        return Chart(fig, "no training history: the model was loaded from a checkpoint")
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", color=PALETTE[0], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_top1"] for h in history], "s--", color=PALETTE[2], label="val top-1 (%)")
    ax2.set_ylabel("val top-1 (%)")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    last = history[-1]
    return Chart(fig, f"training loss and validation top-1 over {len(history)} epoch(s); last epoch: loss "
                      f"{last['loss']:.3f}, validation top-1 {last['val_top1']:.2f}%")


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Any:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = _figure(size, size)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return Chart(fig, f"confusion matrix over {len(class_names)} classes, rows true class, columns predicted")
