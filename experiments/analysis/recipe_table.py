"""Per-point table of a stable-training ablation (``sweep --sweep=recipes``): final accuracy at
every N' evaluated, whether and when the run took off (first evaluation above the
always-majority baseline by ``--margin``), adaptive sleep (accuracy @ mean passes used), and the
training wall time; the N = 1 runs of another sweep (``--baseline``) can be added as rows.

    python experiments/analysis/recipe_table.py runs/abl_t2 --baseline runs/fig2a_t2
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def _points(workdir: str) -> list[dict]:
    points = []
    for path in sorted(glob.glob(os.path.join(workdir, "*", "point.json"))):
        with open(path) as f:
            point = json.load(f)
        point["name"] = os.path.basename(os.path.dirname(path))
        points.append(point)
    return points


def _recipe(point: dict) -> str:
    setting = {k: v for k, v in point["setting"].items() if k != "sleep.passes"}
    parts = [f"{k.split('.')[-1]}={v}" for k, v in setting.items()]
    if "sleep.train_passes" not in setting:      # the fixed law: say so, and its N
        parts.insert(0, f"fixed N={point['passes']}")
    return ", ".join(parts)


def take_off(point: dict, majority: float, margin: float):
    for entry in point["history"]:
        if entry["accuracy"]["all"] > majority + margin:
            return entry["tokens_seen"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--baseline", action="append", default=[],
                        help="another sweep workdir whose points are added as rows")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--goal_passes", default="1,2,4,6,8",
                        help="N' over which a recipe's accuracy must not fall (summary)")
    parser.add_argument("--summary_seeds", action="append", default=[],
                        help="comma-separated seeds: one more summary over these seeds only "
                             "(e.g. the held-out ones); repeatable")
    parser.add_argument("--reference", default="fixed N=4",
                        help="the recipe whose mean accuracy at N' = 4 the others must reach")
    args = parser.parse_args()
    args.goal_passes = [int(n) for n in args.goal_passes.split(",")]
    with open(os.path.join(args.baseline[0] if args.baseline else args.workdir,
                           "accuracy_vs_passes.json")) as f:
        majority = json.load(f)["baselines"]["majority"]["all"]
    points = [p for b in args.baseline for p in _points(b)] + _points(args.workdir)
    passes = sorted({int(n) for p in points for n in p["cross_eval"]})
    tols = sorted({k for p in points for k in p.get("adaptive_eval", {})},
                  key=lambda k: float(k[3:].split("_")[0]))
    head = ["recipe", "seed", "acc (own N)"] + [f"N'={n}" for n in passes] + \
        ["took off", "tokens to take-off"] + [f"adaptive {t}: acc @ passes" for t in tols] + \
        ["wall s"]
    print(f"always-majority {majority:.3f}; took off = an evaluation above it by {args.margin}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in points:
        cross = [_accuracy_at(p, n) for n in passes]
        tokens = take_off(p, majority, args.margin)
        adaptive = [p.get("adaptive_eval", {}).get(t) for t in tols]
        row = [_recipe(p), str(p["seed"]), f"{p['final_eval']['accuracy']['all']:.3f}"]
        row += ["-" if c is None else f"{c:.3f}" for c in cross]
        row += ["yes" if tokens else "no", f"{tokens:,}" if tokens else "-"]
        row += ["-" if a is None else f"{a['accuracy']['all']:.3f} @ {a['sleep_passes']['mean']:.2f}"
                for a in adaptive]
        row += [f"{p['wall_time_s']:.0f}"]
        print("| " + " | ".join(row) + " |")
    print()
    print(summary(points, majority, args.margin, args.goal_passes, args.reference))
    for seeds in args.summary_seeds:
        wanted = {int(x) for x in seeds.split(",")}
        print(f"\nSeeds {seeds} only:\n")
        print(summary([p for p in points if p["seed"] in wanted], majority, args.margin,
                      args.goal_passes, args.reference))


def _accuracy_at(point: dict, passes: int) -> float | None:
    """The point's accuracy evaluated with ``passes`` sleep passes (None: not evaluated)."""
    return point["cross_eval"].get(str(passes), {}).get("accuracy", {}).get("all")


def _curve_drop(point: dict, passes: list[int]) -> float | None:
    """The largest fall of accuracy from one evaluated N' to the next, over ``passes``."""
    accs = [_accuracy_at(point, n) for n in passes]
    if any(a is None for a in accs):
        return None
    return max([0.0] + [a - b for a, b in zip(accs, accs[1:])])


def summary(points: list[dict], majority: float, margin: float, goal_passes: list[int],
            reference: str) -> str:
    """Per recipe: seeds that took off, accuracy at its own N and at N' = 4 (mean ± sample std),
    and the largest step-to-step fall of accuracy over ``goal_passes`` (issue 19's goal: every
    seed takes off, N' = 4 at least the reference's mean, no fall above 0.03)."""
    by_recipe: dict[str, list[dict]] = {}
    for p in points:
        by_recipe.setdefault(_recipe(p), []).append(p)

    ref = [a for a in (_accuracy_at(p, 4) for p in by_recipe.get(reference, [])) if a is not None]
    ref_mean = float(np.mean(ref)) if ref else None
    path = " -> ".join(map(str, goal_passes))
    lines = [f"Per recipe (goal: every seed takes off; acc at N'=4 >= {reference}'s mean"
             f"{'' if ref_mean is None else f' {ref_mean:.3f}'}; no fall > 0.03 over N' {path}):",
             "", "| recipe | seeds | took off | acc own N | acc N'=4 | largest fall over N' | goal |",
             "|---|---|---|---|---|---|---|"]

    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        std = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
        return f"{np.mean(values):.3f}{std}"

    for recipe, group in by_recipe.items():
        off = [take_off(p, majority, margin) is not None for p in group]
        drops = [_curve_drop(p, goal_passes) for p in group]
        a4 = [_accuracy_at(p, 4) for p in group]
        met = (all(off) and ref_mean is not None and None not in a4 and np.mean(a4) >= ref_mean
               and None not in drops and max(drops) <= 0.03)
        lines.append(f"| {recipe} | {','.join(str(p['seed']) for p in group)} | {sum(off)}/{len(off)} "
                     f"| {stat([p['final_eval']['accuracy']['all'] for p in group])} | {stat(a4)} "
                     f"| {'-' if None in drops else f'{max(drops):.3f}'} | {'met' if met else 'not met'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
