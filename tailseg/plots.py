"""Figures a person would rather look at than read, rendered to PNG bytes (matplotlib Agg)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tailseg.dataset import Chip  # noqa: E402


class PNGImage(bytes):
    """PNG-encoded image bytes; a ZenML materializer shows it as an image visualization."""


def _to_png(figure) -> PNGImage:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return PNGImage(buffer.getvalue())


def training_curves(history: dict[str, list[float]]) -> PNGImage:
    """Loss and tailings IoU per epoch, training and validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, metric in zip(axes, ("loss", "iou"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(range(1, len(values) + 1), values, style,
                          label=("validation " if prefix else "training ") + metric)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        if metric == "loss":
            axis.set_yscale("log")  # the first validation epochs can be orders larger
        axis.grid(alpha=0.3)
        axis.legend()
    return _to_png(figure)


def precision_recall_curve(sweep: list[dict], chosen: float) -> PNGImage:
    """Precision against recall over decision thresholds, the chosen threshold marked."""
    figure, axis = plt.subplots(figsize=(5, 4.5))
    recall = [row["recall"] for row in sweep]
    precision = [row["precision"] for row in sweep]
    axis.plot(recall, precision, marker=".")
    best = min(sweep, key=lambda row: abs(row["threshold"] - chosen))
    axis.scatter([best["recall"]], [best["precision"]], color="red", zorder=3,
                 label=f"threshold {chosen:.2f} (IoU {best['iou']:.3f})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Tailings precision-recall (test split)")
    return _to_png(figure)


def _rgb(image: np.ndarray) -> np.ndarray:
    """B2,B3,B4 reflectance to a display RGB with a 2-98 % stretch."""
    rgb = image[..., ::-1]
    low, high = np.nanpercentile(rgb, (2, 98))
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)


def prediction_panels(chips: list[Chip], probabilities: list[np.ndarray], scores: list[float],
                      threshold: float, title: str) -> PNGImage:
    """Rows of image / ground truth / prediction for the given chips."""
    figure, axes = plt.subplots(len(chips), 3, figsize=(9, 3 * len(chips)), squeeze=False)
    for row, (chip, probability, score) in enumerate(zip(chips, probabilities, scores,
                                                         strict=True)):
        axes[row, 0].imshow(_rgb(chip.image))
        axes[row, 0].set_title(f"{chip.chip_id} (IoU {score:.2f})")
        axes[row, 1].imshow(chip.mask, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title("ground truth")
        axes[row, 2].imshow(probability >= threshold, cmap="gray", vmin=0, vmax=1)
        axes[row, 2].set_title(f"prediction (p >= {threshold:.2f})")
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(title)
    return _to_png(figure)


def evaluation_figures(chips: list[Chip], probabilities: list[np.ndarray], metrics: dict,
                       sweep: list[dict], panels: int = 3) -> dict[str, PNGImage]:
    """The precision-recall curve and panels of the best and worst chips by IoU."""
    threshold = metrics["threshold"]
    figures = {"precision_recall_curve": precision_recall_curve(sweep, threshold)}
    order = np.argsort([row["iou"] for row in metrics["per_chip"]])
    count = min(panels, len(chips))
    if count:
        for name, picks in (("best_test_chips", order[::-1][:count]),
                            ("worst_test_chips", order[:count])):
            figures[name] = prediction_panels(
                [chips[i] for i in picks], [probabilities[i] for i in picks],
                [metrics["per_chip"][i]["iou"] for i in picks], threshold,
                name.replace("_", " "))
    return figures
