"""A model card (markdown) for each exported version: data, split, hyperparameters, metrics,
threshold and known limitations. Every count and share is the run's own (its split, its masks,
its threshold rule); nothing about the data is hard-coded."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

# Used only when a card is rendered without the run's masks (tailings_share is None).
DATASET_README_SHARE = ("in the bundled tailings-br dataset tailings cover 0.16 % to 73 % of a "
                        "chip, median 3.4 %, mean 9.5 % (data/tailings-br/README.md)")
PARTS = ("train", "val", "test")


def tailings_share(masks: Iterable[np.ndarray]) -> dict:
    """Share of tailings pixels (mask == 1): per chip (median, mean, lowest, highest) and
    pooled over all pixels of the masks."""
    fractions, positive, total = [], 0, 0
    for mask in masks:
        count = int(np.count_nonzero(mask == 1))
        fractions.append(count / mask.size)
        positive, total = positive + count, total + mask.size
    if not fractions:
        raise ValueError("tailings share needs at least one mask")
    return {"chips": len(fractions), "median": float(np.median(fractions)),
            "mean": float(np.mean(fractions)), "min": min(fractions), "max": max(fractions),
            "pooled": positive / total}


def _share_text(share: dict | None) -> str:
    if not share:
        return f"Tailings are a small minority of pixels: {DATASET_README_SHARE}."
    return (f"Tailings cover {share['median']:.1%} of a chip's pixels at the median and "
            f"{share['mean']:.1%} on average ({share['min']:.2%} to {share['max']:.1%}; "
            f"{share['pooled']:.1%} of all pixels), over the {share['chips']} chips of this run.")


def _excluded_text(excluded: dict[str, str] | None) -> str:
    if excluded is None:
        return "Excluded chips: not recorded for this card."
    if not excluded:
        return "Excluded chips: none."
    lines = [f"- {chip_id}: {reason}" for chip_id, reason in sorted(excluded.items())]
    return f"Excluded chips ({len(excluded)}, in no split):\n" + "\n".join(lines)


def threshold_rule(config: dict, metrics: dict) -> tuple[str, bool]:
    """How the decision threshold was set, and whether it was chosen on the validation split
    (evaluation.threshold "best_val_iou") rather than fixed by the configuration."""
    selection = str(metrics.get("threshold_selection",
                                config.get("evaluation", {}).get("threshold", "best_val_iou")))
    if selection != "best_val_iou":
        return (f"fixed by the run configuration (`evaluation.threshold: {selection}`), "
                "not tuned on data", False)
    edge = ("; it lies at the end of the sweep, so the best may lie beyond it"
            if metrics.get("threshold_at_sweep_end") else "")
    return f"chosen to maximise IoU on the validation split{edge}", True


OVERLAP_LINES = {
    "merge": "Chips that share ground stayed in one part of the split, and each chip was given "
             "the labels of the chips overlapping it (data.overlaps: merge).",
    "group": "Chips that share ground stayed in one part of the split; their labels were not "
             "merged, so a site labelled in one is background in the other (data.overlaps: "
             "group).",
    "ignore": "Chips that share ground were split independently (data.overlaps: ignore): test "
              "chips may cover training ground, and overlapping chips contradict each other's "
              "labels; the test scores are optimistic.",
}


def _limitations(sizes: dict[str, int], share: dict | None, chosen: bool,
                 overlaps: str = "merge") -> str:
    rule = ("The decision threshold was chosen on the validation split; re-check it on new "
            "areas." if chosen else "The decision threshold was fixed by configuration, not "
            "tuned on these data; check it on new areas.")
    share_line = (f"Tailings cover about {share['median']:.1%} of a chip's pixels at the median "
                  f"({share['mean']:.1%} on average)" if share else
                  "Tailings are a small minority of pixels")
    return f"""\
- Trained on {sizes.get("train", 0)} Sentinel-2 L1C RGB median composites of 2021 (bands B2, B3, B4
  only), validated on {sizes.get("val", 0)} and tested on {sizes.get("test", 0)} chips in Brazil.
  Other seasons, sensors, processing baselines or regions may fail silently; published work
  reports large IoU drops under region shift.
- Labels are partial: each chip labels one tailings site and leaves other tailings as background,
  so precision is underestimated and the model may learn to miss some sites.
  {OVERLAP_LINES[overlaps]}
- {share_line}: pixel accuracy is not informative; judge by IoU and F1.
- Water bodies, bare soil and open-pit mines look alike in RGB; expect false positives there.
- {rule}"""


def _table(rows: dict) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in rows.items()]
    return "\n".join(lines)


def _model_text(training: dict) -> str:
    schedules = training.get("member_schedules") or []
    if len(schedules) < 2:
        return "U-Net"
    return (f"Ensemble of {len(schedules)} U-Nets (seeds "
            f"{', '.join(str(m['seed']) for m in schedules)}; the output is the mean of their "
            "probabilities; each U-Net as below)")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _schedule_text(training: dict) -> str:
    """Planned and run epochs, and whether the learning-rate decay completed."""
    budget = training.get("budget_minutes")
    plan = (f"planned {training.get('planned_epochs')} of at most {training.get('max_epochs')} "
            f"to fit a {budget:g}-minute budget" if budget else
            f"planned {training.get('planned_epochs')} (no time budget)")
    stop = {"completed": "the learning-rate schedule completed",
            "early_stopping": "stopped early: validation IoU stopped improving",
            "time_budget": "**cut by the time budget before the learning-rate decay "
                           "completed**"}.get(str(training.get("stop_reason")), "unknown stop")
    restore = training.get("restore_from")
    kept = (f" (best validation IoU among the epochs at least {restore:.0%} into the decay)"
            if restore else " (best validation IoU)")
    if training.get("weight_average"):
        kept += f", moving average of the weights (momentum {training['weight_average']:g})"
    if schedules := training.get("member_schedules"):
        members = "; ".join(
            f"seed {m['seed']}: {m.get('epochs_run')} of {m.get('planned_epochs')} planned "
            f"epochs, kept epoch {m.get('best_epoch')} (validation IoU "
            f"{_number(m.get('kept_val_iou'))}), {m.get('stop_reason')}"
            for m in schedules)
        budget_share = (f" and a {budget / len(schedules):g}-minute share of the budget"
                        if budget else "")
        return (f"Ensemble of {len(schedules)} U-Nets (training.members), each with its own "
                f"seed{budget_share}; the model outputs the mean of their probabilities. "
                f"{members}. Overall: {stop}{kept}; training time "
                f"{training.get('seconds', 0):.0f} s.")
    return (f"Epochs run: {training.get('epochs_run')}, {plan}; {stop}. Kept epoch: "
            f"{training.get('best_epoch')}{kept}, training time: "
            f"{training.get('seconds', 0):.0f} s "
            f"({training.get('seconds_per_epoch', 0):.1f} s per epoch).")


def _sites_text(sites: dict | None) -> str:
    """The site-level section: labelled sites found, false sites, area error."""
    if not sites:
        return ""

    def show(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    rows = {
        "labelled sites found": f"{sites['sites_found']} of {sites['sites_labelled']} "
                                f"({show(sites['site_recall'], '.0%')})",
        "false sites": f"{sites['false_sites']} ({show(sites['false_sites_per_100km2'], '.1f')}"
                       f" per 100 km2 of {sites['area_km2']:.1f} km2)",
        "area error of found sites, median": show(sites["area_error_median"], "+.0%"),
        "area error of found sites, mean absolute": show(sites["area_abs_error_mean"], ".0%"),
    }
    return (f"## Site-level test metrics\nSites are {sites.get('connectivity', 8)}-connected "
            f"groups of tailings pixels; {sites.get('rule', '')}. False sites touch no labelled "
            "tailings; labels are partial, so some of them are real, unlabelled tailings."
            f"{_minimum_text(sites)}\n\n{_table(rows)}\n\n")


def _minimum_text(sites: dict) -> str:
    minimum = sites.get("min_site_ha") or 0
    return (f" Predicted sites under {minimum:g} ha are not counted, as `tailseg predict` "
            "drops them." if minimum else "")


def render_model_card(name: str, version: int | str, config: dict, split: dict,
                      metrics: dict, threshold: float, training: dict, decision: dict,
                      share: dict | None = None, excluded: dict[str, str] | None = None) -> str:
    """Markdown model card.

    Args:
        config: the resolved run configuration as a dict.
        split: the run's split ({"train", "val", "test"} chip ids and what produced them).
        metrics: test metrics; "threshold_selection" says how the threshold was set.
        share: tailings_share of the run's masks; None states the dataset README's figures.
        excluded: {chip id: reason} for chips of the dataset in no split (quarantined by
            validation); None when not known.
    """
    sizes = {part: len(split.get(part, [])) for part in PARTS}
    rule, chosen = threshold_rule(config, metrics)
    pooled = {k: metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy")}
    return f"""# Model card: {name} version {version}

Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} by tailseg.

## Intended use
Mapping mining tailings (dams, ponds, spoil) in Sentinel-2 RGB top-of-atmosphere reflectance
of Brazil, as a screening layer for analysts. Not a substitute for field inspection.

## Model
{_model_text(training)}, input `image` float32 [N, H, W, 3] reflectance in band order B2, B3,
B4 (normalised inside the model), output `probability` [N, H, W, 1].

{_table(config.get("model", {}))}

## Data and split
Dataset `{config.get("data", {}).get("data_dir")}`; split seed {config.get("data", {}).get("seed")}.
Chips: {sizes["train"]} for training, {sizes["val"]} for validation, {sizes["test"]} for test.
Test chips: {", ".join(split.get("test", []))}.

{_share_text(share)}

{_excluded_text(excluded)}

## Training
{_table({k: v for k, v in config.get("training", {}).items()
         if k in ("epochs", "batch_size", "learning_rate", "loss", "crop_size", "members")})}

{_schedule_text(training)}

## Test metrics (tailings class, pooled over all test pixels)
Decision threshold: **{threshold:.2f}** ({rule}).

{_table(pooled)}

{_sites_text(metrics.get("sites"))}
## Release decision
Blessed: {decision.get("blessed")}. {" ".join(decision.get("reasons", []))}

## Known limitations
{_limitations(sizes, share, chosen, config.get("data", {}).get("overlaps", "merge"))}
"""
