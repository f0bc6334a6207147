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
    if not setting:
        return f"fixed N={point['passes']}"
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items())


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
    args = parser.parse_args()
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
        cross = [p["cross_eval"].get(str(n), {}).get("accuracy", {}).get("all") for n in passes]
        tokens = take_off(p, majority, args.margin)
        adaptive = [p.get("adaptive_eval", {}).get(t) for t in tols]
        row = [_recipe(p), str(p["seed"]), f"{p['final_eval']['accuracy']['all']:.3f}"]
        row += ["-" if c is None else f"{c:.3f}" for c in cross]
        row += ["yes" if tokens else "no", f"{tokens:,}" if tokens else "-"]
        row += ["-" if a is None else f"{a['accuracy']['all']:.3f} @ {a['sleep_passes']['mean']:.2f}"
                for a in adaptive]
        row += [f"{p['wall_time_s']:.0f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
