"""Fig. 2a analogue: accuracy vs training tokens of several sweeps that differ in depth t.

    python experiments/analysis/plot_depths.py --out=results/fig2a_rule110_depth.png \
        runs/e3_depth_t0 runs/e3_depth_t1 runs/e3_depth_t2 runs/e3_depth_t3

Each argument is a sweep workdir (``python -m sleepjax.sweep``) with one setting; its curve is
labelled by the task's difficulty value and drawn with that task's always-majority baseline.
"""

from __future__ import annotations

import argparse
import json
import os

from matplotlib.figure import Figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep workdirs, one per depth")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="Rule 110, N = 1: accuracy vs training tokens by depth t")
    args = parser.parse_args()
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    rows = []
    for sweep in args.sweeps:
        with open(os.path.join(sweep, "accuracy_vs_passes.json")) as f:
            summary = json.load(f)
        (setting,) = summary["settings"]
        level = next(k for k in setting["accuracy"] if k != "all")
        curve = setting["accuracy_curve"]["all"]
        line, = ax.plot(curve["tokens"], curve["mean"], marker="o", markersize=3,
                        label=f"{summary['difficulty_name']} = {level}")
        majority = summary["baselines"]["majority"]["all"]
        ax.axhline(majority, color=line.get_color(), linestyle="--", alpha=0.6)
        rows.append((int(level), setting["accuracy"]["all"]["mean"], majority))
    ax.axhline(summary["baselines"]["chance"]["all"], color="gray", linestyle=":", label="chance")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="dashed: always-majority", title_fontsize=7)
    ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print("| t | final accuracy | always-majority |\n|---|---|---|")
    for level, acc, majority in sorted(rows):
        print(f"| {level} | {acc:.3f} | {majority:.3f} |")


if __name__ == "__main__":
    main()
