"""Accuracy plots for the ablation over the number of sleep passes N (PNG files).

Figures are built with ``matplotlib.figure.Figure`` directly rather than pyplot, so importing
this module never switches the process-wide backend (a notebook keeps its inline plots).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.figure import Figure


def _new_axes():
    fig = Figure(figsize=(6, 4))
    return fig, fig.add_subplot()


def _finish(fig, ax, path, *, xlabel, ylabel, title, chance) -> None:
    """The styling every accuracy plot shares, then write ``path``."""
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy_vs_tokens(histories: Mapping[int, Sequence[Mapping]], path: str, *,
                            difficulty: str = "all", chance: float | None = None,
                            title: str = "") -> None:
    """One curve per N: exact-match accuracy (``difficulty`` key) against training tokens.

    ``histories[N]`` is a run's ``eval.json`` history: dicts with ``tokens_seen`` and
    ``accuracy``.
    """
    fig, ax = _new_axes()
    for passes in sorted(histories):
        history = histories[passes]
        xs = [h["tokens_seen"] for h in history]
        ys = [h["accuracy"].get(difficulty, float("nan")) for h in history]
        ax.plot(xs, ys, marker="o", label=f"N = {passes}")
    _finish(fig, ax, path, xlabel="training tokens", ylabel=f"exact-match accuracy ({difficulty})",
            title=title or "accuracy vs training tokens", chance=chance)


def plot_accuracy_vs_difficulty(final: Mapping[int, Mapping[str, float]], path: str, *,
                                difficulty_name: str = "difficulty", chance: float | None = None,
                                title: str = "") -> None:
    """One curve per N: final exact-match accuracy against difficulty (t, k or #ops).

    ``final[N]`` maps difficulty (as a string, plus ``"all"``, which is skipped) to accuracy.
    """
    fig, ax = _new_axes()
    for passes in sorted(final):
        levels = sorted((int(k) for k in final[passes] if k != "all"))
        ax.plot(levels, [final[passes][str(k)] for k in levels], marker="o", label=f"N = {passes}")
    _finish(fig, ax, path, xlabel=difficulty_name, ylabel="exact-match accuracy",
            title=title or f"accuracy vs {difficulty_name}", chance=chance)


def plot_accuracy_vs_passes(final: Mapping[int, Mapping[str, float]], path: str, *,
                            difficulty_name: str = "difficulty", chance: float | None = None,
                            title: str = "") -> None:
    """Final exact-match accuracy against N: one curve per difficulty, plus ``"all"``."""
    passes = sorted(final)
    keys = sorted({k for n in passes for k in final[n] if k != "all"}, key=int) + ["all"]
    fig, ax = _new_axes()
    for key in keys:
        label = "all" if key == "all" else f"{difficulty_name} = {key}"
        style = dict(color="black", linewidth=2) if key == "all" else {}
        ax.plot(passes, [final[n].get(key, float("nan")) for n in passes], marker="o",
                label=label, **style)
    ax.set_xticks(passes)
    _finish(fig, ax, path, xlabel="sleep passes N", ylabel="exact-match accuracy",
            title=title or "accuracy vs N", chance=chance)
