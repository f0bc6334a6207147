"""Plots of a sweep over N and seeds (PNG files), every one with the task's baselines drawn.

Figures are built with ``matplotlib.figure.Figure`` directly rather than pyplot, so importing
this module never switches the process-wide backend (a notebook keeps its inline plots).
Inputs are the summary of :func:`sleepjax.training.stats.summarize`. Paths may be local or
``gs://`` (:mod:`sleepjax.training.paths`).
"""

from __future__ import annotations

from typing import Mapping

from matplotlib.figure import Figure

from sleepjax.training import paths


def _save(fig, path) -> None:
    """Write ``fig`` as a PNG through the path type (matplotlib writes local files only)."""
    with paths.as_path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=120)


def _level_key(level: str):
    return (1, 0) if level == "all" else (0, int(level))


def _baseline_lines(ax, baselines: Mapping, level: str) -> None:
    ax.axhline(baselines["chance"].get(level, baselines["chance"]["all"]), color="gray",
               linestyle=":", label="chance")
    ax.axhline(baselines["majority"].get(level, baselines["majority"]["all"]), color="gray",
               linestyle="--", label="always-majority")


def _finish(fig, ax, path: str, *, xlabel: str, ylabel: str, title: str, ylim=(0, 1)) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def _band(ax, curve: Mapping, label: str) -> None:
    line, = ax.plot(curve["tokens"], curve["mean"], marker="o", markersize=3, label=label)
    ax.fill_between(curve["tokens"], curve["min"], curve["max"], color=line.get_color(), alpha=0.2)


def plot_accuracy_vs_tokens(summary: Mapping, path: str, *, level: str = "all",
                            title: str = "") -> None:
    """Mean exact-match accuracy over seeds against training tokens, one curve per setting,
    with the min-max band over seeds."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for s in summary["settings"]:
        if level in s["accuracy_curve"]:
            _band(ax, s["accuracy_curve"][level], f"{s['label']} ({len(s['seeds'])} seeds)")
    _baseline_lines(ax, summary["baselines"], level)
    name = summary["difficulty_name"]
    _finish(fig, ax, path, xlabel="training tokens",
            ylabel="exact-match accuracy" + ("" if level == "all" else f" ({name}={level})"),
            title=title or "accuracy vs training tokens (mean, min-max band)")


def plot_loss_vs_tokens(summary: Mapping, path: str, *, title: str = "") -> None:
    """One panel per difficulty: mean answer loss over seeds against training tokens (Fig. 3)."""
    levels = sorted({k for s in summary["settings"] for k in s["loss_curve"]}, key=_level_key)
    if len(levels) > 1:
        levels = [k for k in levels if k != "all"]
    fig = Figure(figsize=(3.2 * len(levels), 3.2))
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    name = summary["difficulty_name"]
    for ax, level in zip(axes, levels):
        for s in summary["settings"]:
            if level in s["loss_curve"]:
                _band(ax, s["loss_curve"][level], s["label"])
        marginal = summary["baselines"]["marginal_loss"].get(level)
        if marginal is not None:
            ax.axhline(marginal, color="gray", linestyle="--", label="marginal (no context)")
        ax.set_title(f"{name} = {level}")
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test answer loss (nats/token)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(title or "test loss vs training tokens (mean, min-max band over seeds)")
    fig.tight_layout()
    _save(fig, path)


def plot_accuracy_vs_passes(summary: Mapping, path: str, *, title: str = "") -> None:
    """Final accuracy (mean ± std over seeds, seeds as dots) against the trained N."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    settings = sorted(summary["settings"], key=lambda s: s["passes"])
    xs = [s["passes"] for s in settings]
    ax.errorbar(xs, [s["accuracy"]["all"]["mean"] for s in settings],
                yerr=[s["accuracy"]["all"]["std"] for s in settings], marker="o", capsize=4,
                color="black", label="mean ± std")
    for s in settings:
        ax.scatter([s["passes"]] * len(s["accuracy"]["all"]["values"]),
                   s["accuracy"]["all"]["values"], color="tab:blue", alpha=0.5, s=12)
    _baseline_lines(ax, summary["baselines"], "all")
    ax.set_xticks(sorted(set(xs)))
    _finish(fig, ax, path, xlabel="sleep passes N (training)", ylabel="exact-match accuracy",
            title=title or "final accuracy vs N")


def plot_accuracy_vs_difficulty(summary: Mapping, path: str, *, title: str = "") -> None:
    """Final accuracy per difficulty, one curve per setting (mean ± std over seeds)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    name = summary["difficulty_name"]
    for s in summary["settings"]:
        levels = sorted((k for k in s["accuracy"] if k != "all"), key=int)
        ax.errorbar([int(k) for k in levels], [s["accuracy"][k]["mean"] for k in levels],
                    yerr=[s["accuracy"][k]["std"] for k in levels], marker="o", capsize=3,
                    label=s["label"])
    _baseline_lines(ax, summary["baselines"], "all")
    _finish(fig, ax, path, xlabel=name, ylabel="exact-match accuracy",
            title=title or f"accuracy vs {name}")


def plot_cross_eval(summary: Mapping, path: str, *, title: str = "") -> None:
    """Accuracy when evaluated with N' passes, one curve per trained setting."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for s in summary["settings"]:
        ns = sorted(int(n) for n in s["cross_eval"])
        if not ns:
            continue
        line = ax.errorbar(ns, [s["cross_eval"][str(n)]["mean"] for n in ns],
                           yerr=[s["cross_eval"][str(n)]["std"] for n in ns], marker="o",
                           capsize=3, label=f"trained {s['label']}")
        ax.axvline(s["passes"], color=line[0].get_color(), alpha=0.3, linewidth=4)
    _baseline_lines(ax, summary["baselines"], "all")
    _finish(fig, ax, path, xlabel="sleep passes N' at evaluation",
            ylabel="exact-match accuracy", title=title or "train at N, evaluate at N'")


def plot_sweep(summary: Mapping, workdir) -> list:
    """Every figure of a sweep into ``workdir``; returns the paths written."""
    directory = paths.as_path(workdir)
    written = []
    for name, fn in (("accuracy_vs_tokens.png", plot_accuracy_vs_tokens),
                     ("accuracy_vs_passes.png", plot_accuracy_vs_passes),
                     ("accuracy_vs_difficulty.png", plot_accuracy_vs_difficulty),
                     ("loss_vs_tokens.png", plot_loss_vs_tokens)):
        fn(summary, directory / name)
        written.append(directory / name)
    if any(s["cross_eval"] for s in summary["settings"]):
        plot_cross_eval(summary, directory / "cross_eval.png")
        written.append(directory / "cross_eval.png")
    return written
