"""Aggregation of a sweep's points over seeds, and its markdown report.

A *setting* is a sweep point's overrides without the seed (usually ``{"sleep.passes": N}``);
every number of a setting is reported as the mean and the sample standard deviation over its
seeds, next to every seed's own value, so a reader sees the spread a single run hides.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "values"}``; ``std`` is the sample std (ddof=1), 0 for one value."""
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()) if arr.size else math.nan, "std": std,
            "values": [float(v) for v in arr]}


def _loss_by_level(evaluation: Mapping) -> dict[str, float]:
    return dict(evaluation.get("loss_by_difficulty") or {"all": evaluation["loss"]})


def _curves(histories: Sequence[Sequence[Mapping]], key) -> dict:
    """Per evaluation step common to every seed: tokens and mean/min/max of ``key(entry)``."""
    steps = sorted(set.intersection(*[{h["step"] for h in hist} for hist in histories]))
    tokens, rows = [], []
    for step in steps:
        entries = [next(h for h in hist if h["step"] == step) for hist in histories]
        tokens.append(entries[0]["tokens_seen"])
        rows.append([key(e) for e in entries])
    arr = np.asarray(rows, np.float64).reshape(len(steps), len(histories))
    return {"tokens": tokens, "mean": arr.mean(1).tolist(), "min": arr.min(1).tolist(),
            "max": arr.max(1).tolist()}


def _adaptive(members: Sequence[Mapping]) -> dict:
    """Per adaptive-sleep evaluation key (``tol<t>_cap<n>``): accuracy and mean passes used."""
    keys = sorted({k for p in members for k in p.get("adaptive_eval", {})},
                  key=lambda k: float(k.split("_")[0][3:]))
    out = {}
    for key in keys:
        runs = [p["adaptive_eval"][key] for p in members if key in p.get("adaptive_eval", {})]
        out[key] = {"accuracy": mean_std([r["accuracy"]["all"] for r in runs]),
                    "mean_passes": mean_std([r["sleep_passes"]["mean"] for r in runs
                                             if "sleep_passes" in r])}
    return out


def setting_label(setting: Mapping) -> str:
    parts = [f"N={v}" if k == "sleep.passes" else f"{k}={v}" for k, v in setting.items()]
    return ", ".join(parts) or "base"


def summarize(points: Sequence[Mapping], baselines: Mapping, difficulty_name: str) -> dict:
    """Group points by setting; mean/std over seeds of accuracy, loss, cross-evaluation, time."""
    groups: dict[str, list[Mapping]] = {}
    for point in points:
        groups.setdefault(setting_label(point["setting"]), []).append(point)
    settings = []
    for label, members in groups.items():
        finals = [p["final_eval"] for p in members]
        levels = sorted({k for f in finals for k in f["accuracy"]}, key=_level_key)
        loss_levels = sorted({k for f in finals for k in _loss_by_level(f)}, key=_level_key)
        cross = sorted({int(n) for p in members for n in p.get("cross_eval", {})})
        histories = [p["history"] for p in members]
        settings.append({
            "label": label, "setting": dict(members[0]["setting"]),
            "passes": members[0]["passes"], "seeds": [p["seed"] for p in members],
            "tokens_seen": finals[0]["tokens_seen"],
            "accuracy": {k: mean_std([f["accuracy"].get(k, math.nan) for f in finals])
                         for k in levels},
            "loss": {k: mean_std([_loss_by_level(f).get(k, math.nan) for f in finals])
                     for k in loss_levels},
            "final_train_loss": mean_std([p["final_train_loss"] for p in members]),
            "wall_time_s": mean_std([p["wall_time_s"] for p in members]),
            "cross_eval": {str(n): mean_std([p["cross_eval"][str(n)]["accuracy"]["all"]
                                             for p in members if str(n) in p["cross_eval"]])
                           for n in cross},
            "adaptive_eval": _adaptive(members),
            "accuracy_curve": {k: _curves(histories, lambda e, k=k: e["accuracy"].get(k, math.nan))
                               for k in levels},
            "loss_curve": {k: _curves(histories, lambda e, k=k: _loss_by_level(e).get(k, math.nan))
                           for k in loss_levels},
        })
    _add_paired_differences(settings, groups)
    return {"difficulty_name": difficulty_name, "baselines": dict(baselines), "settings": settings}


def _add_paired_differences(settings: list[dict], groups: Mapping[str, Sequence[Mapping]]) -> None:
    """Accuracy minus the reference setting's (the fewest passes) on the same seed.

    Runs with the same seed share the initialisation and the data order, so the per-seed
    difference removes most of the seed-to-seed spread that an unpaired mean ± std carries.
    """
    reference = min(settings, key=lambda s: s["passes"])
    by_seed = {p["seed"]: p["final_eval"]["accuracy"]["all"] for p in groups[reference["label"]]}
    for s in settings:
        diffs = [p["final_eval"]["accuracy"]["all"] - by_seed[p["seed"]]
                 for p in groups[s["label"]] if p["seed"] in by_seed]
        if s is not reference and diffs:
            s["paired_difference"] = {"reference": reference["label"], **mean_std(diffs)}


def _level_key(level: str):
    return (1, 0) if level == "all" else (0, int(level))


def _fmt(stat: Mapping, digits: int = 3) -> str:
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _per_seed(stat: Mapping, digits: int = 3) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in stat["values"])


def _paired(diff: Mapping | None) -> str:
    if diff is None:
        return "-"
    return f"{diff['mean']:+.3f} ± {diff['std']:.3f} ({_per_seed(diff)})"


def format_report(summary: Mapping) -> str:
    """The markdown tables: accuracy and loss per setting, baselines, and cross-evaluation."""
    name = summary["difficulty_name"]
    base = summary["baselines"]
    settings = summary["settings"]
    levels = sorted({k for s in settings for k in s["accuracy"]}, key=_level_key)
    shown = [k for k in levels if k != "all"] if len(levels) > 2 else []
    reference = next((s["paired_difference"]["reference"] for s in settings
                      if "paired_difference" in s), None)
    header = (["setting", "seeds", "acc all (mean ± std)", "acc all per seed"]
              + ([f"Δ acc vs {reference}, same seed"] if reference else [])
              + [f"acc {name}={k}" for k in shown]
              + ["answer loss", "tokens", "wall time per run (s)"])
    lines = ["Exact-match accuracy on the test split after training; mean ± sample std over "
             "seeds, then every seed's value (seeds listed per row).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in settings:
        cells = ([s["label"], ",".join(map(str, s["seeds"])), _fmt(s["accuracy"]["all"]),
                  _per_seed(s["accuracy"]["all"])]
                 + ([_paired(s.get("paired_difference"))] if reference else [])
                 + [_fmt(s["accuracy"][k]) if k in s["accuracy"] else "-" for k in shown]
                 + [_fmt(s["loss"]["all"]), f"{s['tokens_seen']:,}",
                    f"{s['wall_time_s']['mean']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    for label, key in (("chance", "chance"), ("always-majority answer", "majority")):
        cells = ([label, "-", f"{base[key]['all']:.3f}", "-"] + (["-"] if reference else [])
                 + [f"{base[key].get(k, math.nan):.3f}" for k in shown]
                 + [f"{base['marginal_loss']['all']:.3f}" if key == "majority" else "-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Baselines from the {base['answers']['all']} test answers evaluated: chance = "
                 "uniform guessing over the possible answers; always-majority = accuracy of always "
                 "giving the most frequent answer; its answer loss column is the loss of predicting "
                 "each answer token from its marginal distribution (nats per token).")
    loss_levels = sorted({k for s in settings for k in s["loss"] if k != "all"}, key=_level_key)
    if len(loss_levels) > 1:
        lines += ["", f"Answer loss per {name} (nats per answer token; mean ± std over seeds):", "",
                  "| setting | " + " | ".join(f"{name}={k}" for k in loss_levels) + " |",
                  "|---|" + "---|" * len(loss_levels)]
        for s in settings:
            lines.append(f"| {s['label']} | " + " | ".join(
                _fmt(s["loss"][k]) if k in s["loss"] else "-" for k in loss_levels) + " |")
        lines.append("| marginal (no context) | " + " | ".join(
            f"{base['marginal_loss'].get(k, math.nan):.3f}" for k in loss_levels) + " |")
    cross = sorted({int(n) for s in settings for n in s["cross_eval"]})
    if cross:
        lines += ["", "Trained with the row's setting, evaluated with N' sleep passes (columns): "
                  "exact-match accuracy, mean ± std over seeds:", "",
                  "| setting | " + " | ".join(f"N'={n}" for n in cross) + " |",
                  "|---|" + "---|" * len(cross)]
        for s in settings:
            lines.append(f"| {s['label']} | " + " | ".join(
                _fmt(s["cross_eval"][str(n)]) if str(n) in s["cross_eval"] else "-"
                for n in cross) + " |")
    adaptive = sorted({k for s in settings for k in s.get("adaptive_eval", {})},
                      key=lambda k: float(k.split("_")[0][3:]))
    if adaptive:
        lines += ["", "Adaptive sleep (a window stops sleeping once every looped GDN layer's fast "
                  "weights change by less than tol between two passes, at most cap passes): "
                  "accuracy / mean passes used per sleeping window, mean ± std over seeds:", "",
                  "| setting | " + " | ".join(k.replace("_", ", ") for k in adaptive) + " |",
                  "|---|" + "---|" * len(adaptive)]
        for s in settings:
            cells = []
            for k in adaptive:
                entry = s.get("adaptive_eval", {}).get(k)
                cells.append("-" if entry is None else
                             f"{_fmt(entry['accuracy'])} / {_fmt(entry['mean_passes'], 2)}")
            lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
