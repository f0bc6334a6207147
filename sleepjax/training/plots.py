"""Accuracy plots for the ablation over the number of sleep passes N (matplotlib, Agg)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_tokens(histories: Mapping[int, Sequence[Mapping]], path: str, *,
                            difficulty: str = "all", chance: float | None = None,
                            title: str = "") -> None:
    """One curve per N: exact-match accuracy (``difficulty`` key) against training tokens.

    ``histories[N]`` is a run's ``eval.json`` history: dicts with ``tokens_seen`` and
    ``accuracy``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for passes in sorted(histories):
        history = histories[passes]
        xs = [h["tokens_seen"] for h in history]
        ys = [h["accuracy"].get(difficulty, float("nan")) for h in history]
        ax.plot(xs, ys, marker="o", label=f"N = {passes}")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"exact-match accuracy ({difficulty})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy vs training tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_difficulty(final: Mapping[int, Mapping[str, float]], path: str, *,
                                difficulty_name: str = "difficulty", chance: float | None = None,
                                title: str = "") -> None:
    """One curve per N: final exact-match accuracy against difficulty (t, k or #ops).

    ``final[N]`` maps difficulty (as a string, plus ``"all"``, which is skipped) to accuracy.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for passes in sorted(final):
        levels = sorted((int(k) for k in final[passes] if k != "all"))
        ax.plot(levels, [final[passes][str(k)] for k in levels], marker="o", label=f"N = {passes}")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xlabel(difficulty_name)
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"accuracy vs {difficulty_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_passes(final: Mapping[int, Mapping[str, float]], path: str, *,
                            difficulty_name: str = "difficulty", chance: float | None = None,
                            title: str = "") -> None:
    """Final exact-match accuracy against N: one curve per difficulty, plus ``"all"``."""
    passes = sorted(final)
    keys = sorted({k for n in passes for k in final[n] if k != "all"}, key=int) + ["all"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        label = "all" if key == "all" else f"{difficulty_name} = {key}"
        style = dict(color="black", linewidth=2) if key == "all" else {}
        ax.plot(passes, [final[n].get(key, float("nan")) for n in passes], marker="o",
                label=label, **style)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xlabel("sleep passes N")
    ax.set_xticks(passes)
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy vs N")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
