"""Publishing a blessed model: model card, versioned SavedModel/ONNX export, serving files."""

from __future__ import annotations

import keras
import numpy as np

from tailseg.budget import training_schedule_summary
from tailseg.config import RunConfig
from tailseg.dataset import find_pairs, load_chip
from tailseg.errors import TailsegError
from tailseg.model import model_multiple
from tailseg.model_card import PARTS, render_model_card, tailings_share
from tailseg.raster import read_mask
from tailseg.serving.package import export_for_serving
from tailseg.workflow import chips_for

MODEL_CARD = "model_card.md"


def new_version(export_dir: str, model_name: str, taken_versions: tuple[int, ...] = ()) -> int:
    """One past every version under export_dir (serving and ONNX) and in taken_versions."""
    from tailseg.export import next_version

    local = next_version(f"{export_dir}/serving/{model_name}", f"{export_dir}/onnx/{model_name}")
    return max(local, 1 + max(taken_versions, default=0))


def publish_model(model: keras.Model, config: RunConfig, split: dict, metrics: dict,
                  decision: dict, training: dict, zenml_version: str = "",
                  taken_versions: tuple[int, ...] = (),
                  excluded: dict[str, str] | None = None) -> tuple[dict, str]:
    """Export a new version if the gate blessed the model.

    Args:
        taken_versions: versions that exist elsewhere (the model repository a pod's local
            export is copied to): the new version is past them too.
        excluded: {chip id: reason} of the chips validation quarantined, for the model card;
            default: the dataset's chips in no split, with the reason excluded_chips finds.

    Returns:
        (info, model card markdown); info["exported"] is False with the reasons when rejected,
        and nothing is written then.
    """
    export = config.export
    version = new_version(export.export_dir, export.model_name, taken_versions)
    card = render_model_card(export.model_name, version if decision["blessed"] else "(rejected)",
                             {**config.model_dump(mode="json"),
                              "model": training.get("model", {}),
                              "training": training.get("training", {})},
                             split, metrics, metrics["threshold"], training, decision,
                             share=_split_tailings_share(config, split),
                             excluded=excluded_chips(config, split) if excluded is None
                             else excluded)
    if not decision["blessed"]:
        return {"exported": False, "reasons": decision["reasons"]}, card
    pooled = {k: metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy")}
    metadata = {"threshold": metrics["threshold"], "test_metrics": pooled,
                "training_history": training.get("history", {}),
                "training_schedule": training_schedule_summary(training),
                "test_sites": {k: v for k, v in metrics.get("sites", {}).items()
                               if k != "per_chip"},
                "zenml_model_version": zenml_version,
                "overlaps": config.data.overlaps}  # the labels it was scored on (evaluate)
    info = export_for_serving(model, export.export_dir, export.model_name,
                              model_multiple(model), _parity_sample(config, split),
                              opset=export.onnx_opset, metadata=metadata,
                              canary=config.gate.promote_to == "staging",
                              extra_assets={MODEL_CARD: card}, version=version)
    return {"exported": True, **info}, card


def _parity_sample(config: RunConfig, split: dict, count: int = 3) -> np.ndarray:
    """Up to count real test chips of the first chip's size, for warm-up and parity checks."""
    chips = chips_for(config, split["test"])
    size = chips[0].image.shape
    return np.stack([c.image for c in chips if c.image.shape == size][:count])


def _split_tailings_share(config: RunConfig, split: dict) -> dict | None:
    """tailings_share of the stored masks of the split's chips found in the data folder (masks
    only, no images); None when none is there (the card then cites the dataset README)."""
    pairs = {pair.chip_id: pair for pair in find_pairs(config.data.data_dir)[0]}
    found = [pairs[chip_id].mask for part in PARTS for chip_id in split[part]
             if chip_id in pairs]
    return tailings_share(read_mask(path).data for path in found) if found else None


def excluded_chips(config: RunConfig, split: dict) -> dict[str, str]:
    """{chip id: reason} for the dataset's files in no split: unpaired files, chips that do not
    load (e.g. a truncated image), chips past data.max_chips, else quarantined by validation."""
    pairs, excluded = find_pairs(config.data.data_dir)
    used = {chip_id for part in PARTS for chip_id in split[part]}
    cap = config.data.max_chips
    for pair in pairs:
        if pair.chip_id in used:
            continue
        try:
            load_chip(pair, config.data.convention)
        except TailsegError as error:
            excluded[pair.chip_id] = str(error)
            continue
        beyond_cap = cap and len(used) >= cap and pair.chip_id > max(used)
        excluded[pair.chip_id] = ("left out by data.max_chips" if beyond_cap else
                                  "quarantined by dataset validation (see the validation report)")
    return dict(sorted(excluded.items()))
