"""The paper's learning-rate protocol: tune the Muon rate on N = 1 only, then reuse it for every N.

``python -m sleepjax.sweep --config=experiments/rule110.py:cpu --workdir=runs/grid
--lr_grid=1e-3,2e-3,4e-3,1e-2,2e-2 --seeds=0,1`` trains the config at ``sleep.passes = 1`` for
every Muon rate and seed (AdamW's rate scaled with it: ``adam_lr = muon_lr * cfg.optim.adam_lr /
cfg.optim.muon_lr``) as points of the sweep (a finished point is never trained again, an
interrupted one resumes), then writes ``lr_grid.{json,md}``: per rate the final accuracy and
answer loss of every seed with their mean ± std, how much the accuracy still moved over the last
third of training (a plateau check), and the chosen rate: the highest mean final accuracy
(``--lr_criterion=accuracy``) or the lowest mean final answer loss (``answer_loss``, the paper's
measure on Depo). The chosen ``optim.muon_lr`` / ``optim.adam_lr`` is then used unchanged for
every N of the ablation.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from sleepjax.training import cli

CRITERIA = ("accuracy", "answer_loss")


def parse_rates(texts: Sequence[str]) -> list[float]:
    """``--lr_grid``'s Muon rates, sorted: positive, distinct, at least two."""
    rates = cli.parse_list_flag("lr_grid", texts, float, strictly=True, noun="rate")
    if len(rates) < 2:
        raise ValueError(f"--lr_grid: a grid needs at least 2 rates (got {rates})")
    return sorted(rates)


def grid_settings(cfg, muon_lrs: Sequence[float]) -> list[dict]:
    """One sweep setting per Muon rate, at N = 1, AdamW's rate scaled with it."""
    ratio = float(cfg.optim.adam_lr) / float(cfg.optim.muon_lr)
    return [{"sleep.passes": 1, "optim.muon_lr": lr, "optim.adam_lr": float(f"{lr * ratio:.6g}")}
            for lr in muon_lrs]


def last_third_change(curve: Mapping) -> float:
    """Accuracy (mean over seeds) at the last evaluation minus at the one closest to 2/3 of the
    tokens: near 0 when training has plateaued."""
    tokens, mean = curve["tokens"], curve["mean"]
    if len(tokens) < 2:
        return math.nan
    target = 2 * tokens[-1] / 3
    i = min(range(len(tokens)), key=lambda j: abs(tokens[j] - target))
    return float(mean[-1] - mean[i])


def choose(summary: Mapping, criterion: str) -> dict:
    """The grid's table rows and the chosen row under ``criterion`` (ties: the lower rate)."""
    rows = []
    for s in summary["settings"]:
        rows.append({"muon_lr": s["setting"]["optim.muon_lr"],
                     "adam_lr": s["setting"]["optim.adam_lr"], "seeds": s["seeds"],
                     "accuracy": s["accuracy"]["all"], "answer_loss": s["loss"]["all"],
                     "last_third_change": last_third_change(s["accuracy_curve"]["all"]),
                     "tokens": s["tokens_seen"], "wall_time_s": s["wall_time_s"]["mean"]})
    rows.sort(key=lambda r: r["muon_lr"])

    def score(row):
        if criterion == "accuracy":
            return (-row["accuracy"]["mean"], row["answer_loss"]["mean"], row["muon_lr"])
        return (row["answer_loss"]["mean"], -row["accuracy"]["mean"], row["muon_lr"])

    return {"criterion": criterion, "rows": rows, "chosen": min(rows, key=score)}


def format_grid(grid: Mapping, baselines: Mapping) -> str:
    def ms(stat):
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}"

    def per_seed(stat):
        return " / ".join(f"{v:.3f}" for v in stat["values"])

    chosen = grid["chosen"]
    lines = [f"Learning-rate grid at N = 1 (the paper's protocol); chosen by "
             f"{grid['criterion'].replace('_', ' ')}: **Muon {chosen['muon_lr']:g}, AdamW "
             f"{chosen['adam_lr']:g}**.", "",
             "| Muon lr | AdamW lr | seeds | acc (mean ± std) | acc per seed | answer loss | "
             "answer loss per seed | Δ acc over last third | tokens | wall time per run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in grid["rows"]:
        mark = " (chosen)" if r is chosen else ""
        lines.append(f"| {r['muon_lr']:g}{mark} | {r['adam_lr']:g} | "
                     f"{','.join(map(str, r['seeds']))} | {ms(r['accuracy'])} | "
                     f"{per_seed(r['accuracy'])} | {ms(r['answer_loss'])} | "
                     f"{per_seed(r['answer_loss'])} | {r['last_third_change']:+.3f} | "
                     f"{r['tokens']:,} | {r['wall_time_s']:.0f} |")
    lines += ["", f"Baselines: chance {baselines['chance']['all']:.3f}, always-majority "
              f"{baselines['majority']['all']:.3f} (marginal answer loss "
              f"{baselines['marginal_loss']['all']:.3f}). 'Δ acc over last third': mean accuracy at "
              "the end minus at 2/3 of the tokens (about 0 once N = 1 has plateaued)."]
    return "\n".join(lines)
