"""A model card (markdown) for each exported version: data, split, hyperparameters, metrics,
threshold and known limitations."""

from __future__ import annotations

from datetime import UTC, datetime

LIMITATIONS = """\
- Trained on 99 Sentinel-2 L1C RGB median composites of 2021 (bands B2, B3, B4 only), 448 x 448
  chips in Brazil. Other seasons, sensors, processing baselines or regions may fail silently;
  published work reports large IoU drops under region shift.
- Labels are partial: each chip labels one tailings site and leaves other tailings as background,
  so precision is underestimated and the model may learn to miss some sites.
- Tailings cover about 3 % of pixels: pixel accuracy is not informative; judge by IoU and F1.
- Water bodies, bare soil and open-pit mines look alike in RGB; expect false positives there.
- The decision threshold was chosen on the validation split; re-check it on new areas."""


def _table(rows: dict) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in rows.items()]
    return "\n".join(lines)


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
                      metrics: dict, threshold: float, training: dict, decision: dict) -> str:
    """Markdown model card. config: the resolved run configuration as a dict."""
    sizes = {part: len(ids) for part, ids in split.items() if isinstance(ids, list)}
    pooled = {k: metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy")}
    return f"""# Model card: {name} version {version}

Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} by tailseg.

## Intended use
Mapping mining tailings (dams, ponds, spoil) in Sentinel-2 RGB top-of-atmosphere reflectance
of Brazil, as a screening layer for analysts. Not a substitute for field inspection.

## Model
U-Net, input `image` float32 [N, H, W, 3] reflectance in band order B2, B3, B4 (normalised
inside the model), output `probability` [N, H, W, 1].

{_table(config.get("model", {}))}

## Data and split
Dataset `{config.get("data", {}).get("data_dir")}`; split seed {config.get("data", {}).get("seed")}.
Chips per split: {sizes}. Test chips: {", ".join(split.get("test", []))}.

## Training
{_table({k: v for k, v in config.get("training", {}).items()
         if k in ("epochs", "batch_size", "learning_rate", "loss", "crop_size")})}

{_schedule_text(training)}

## Test metrics (tailings class, pooled over all test pixels)
Decision threshold: **{threshold:.2f}** (chosen on the validation split).

{_table(pooled)}

{_sites_text(metrics.get("sites"))}
## Release decision
Blessed: {decision.get("blessed")}. {" ".join(decision.get("reasons", []))}

## Known limitations
{LIMITATIONS}
"""
