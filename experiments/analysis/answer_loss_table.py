"""Per-seed answer loss per difficulty k (the paper's Depo measure) of one or more sweeps: one
row per finished point (``point.json``), with its accuracy per k and its loss at every N'
evaluated.

    python experiments/analysis/answer_loss_table.py runs/fig3_depo runs/depo_recipe
"""

from __future__ import annotations

import argparse
import glob
import json
import os


_TRAINING_DEFAULTS = {"sleep.train_passes": "fixed", "sleep.backprop_passes": 0,
                      "sleep.passes_warmup_fraction": 0.0}


def _label(point: dict) -> str:
    extra = {k: v for k, v in point["setting"].items() if k != "sleep.passes"}
    label = f"N={point['passes']}"
    # the training options set with --config.* rather than by the sweep (flat config keys)
    for key, default in _TRAINING_DEFAULTS.items():
        value = point["config"].get(key, default)
        if key not in extra and value != default:
            extra[key] = value
    return label + "".join(f", {k.split('.')[-1]}={v}" for k, v in extra.items())


def rows(workdirs: list[str]) -> list[dict]:
    out = []
    for workdir in workdirs:
        for path in sorted(glob.glob(os.path.join(workdir, "*", "point.json"))):
            with open(path) as f:
                out.append(json.load(f))
    if not out:
        raise SystemExit(f"no point.json under {workdirs}")
    return sorted(out, key=lambda p: (_label(p), p["seed"]))


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(points: list[dict]) -> str:
    levels = sorted({k for p in points for k in p["final_eval"]["loss_by_difficulty"] if k != "all"},
                    key=int)
    passes = sorted({n for p in points for n in p.get("cross_eval", {})}, key=int)
    head = (["setting", "seed"] + [f"loss k={k}" for k in levels] + ["loss all"]
            + [f"acc k={k}" for k in levels] + (["loss all at N'=" + " / ".join(passes)] if passes else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        final = p["final_eval"]
        cells = [_label(p), str(p["seed"])]
        cells += [_number(final["loss_by_difficulty"].get(k)) for k in levels]
        cells.append(_number(final["loss"]))
        cells += [_number(final["accuracy"].get(k)) for k in levels]
        if passes:
            cross = p.get("cross_eval", {})
            cells.append(" / ".join(f"{cross[n]['loss']:.3f}" if n in cross else "-" for n in passes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="sweep working directories")
    print(table(rows(parser.parse_args().workdirs)))


if __name__ == "__main__":
    main()
