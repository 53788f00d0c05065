"""The final summary of a run: best/last top-1 and top-5, the published number, speed."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from kd_jax.train import recipes


def published_for(config) -> Optional[float]:
    """The published top-1 (%) of the config's pair and method, or None."""
    base = config.method.get("base", "dkd")
    return recipes.published_top1(config.dataset.name, config.method.name,
                                  recipes.unprefixed(config.teacher.arch) or None,
                                  recipes.unprefixed(config.student.arch), base)


def method_label(config) -> str:
    name = config.method.name
    if name == "sdd":
        return f"SD-{config.method.base.upper()}"
    return {"ce": "CE"}.get(name, name.upper())


def make_summary(config, history: Sequence[dict], *, steps: int, wall_time_s: float,
                 train_time_s: float, images_seen: int) -> dict:
    """history: one {"epoch", "step", "top1", "top5"} (percent) per evaluation."""
    best = max(history, key=lambda h: h["top1"]) if history else None
    last = history[-1] if history else None
    published = published_for(config)
    return {
        "method": method_label(config),
        "dataset": config.dataset.name,
        "teacher": config.teacher.arch or None,
        "student": config.student.arch,
        "recipe": config.recipe,
        "steps": steps,
        "epochs_evaluated": len(history),
        "best_top1": best["top1"] if best else None,
        "best_top5": max(h["top5"] for h in history) if history else None,
        "best_epoch": best["epoch"] if best else None,
        "last_top1": last["top1"] if last else None,
        "last_top5": last["top5"] if last else None,
        "published_top1": published,
        "best_minus_published": (best["top1"] - published) if best and published else None,
        "wall_time_s": wall_time_s,
        "images_per_s": images_seen / train_time_s if train_time_s > 0 else None,
        "history": list(history),
    }


def format_table(summary: dict) -> str:
    """A small fixed-width table: ours (best / last) vs published."""

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    rows = [
        ("method", summary["method"]),
        ("teacher -> student", f"{summary['teacher'] or '(none)'} -> {summary['student']}"),
        ("dataset", summary["dataset"]),
        ("top-1 best (epoch)", f"{f(summary['best_top1'])} ({summary['best_epoch']})"),
        ("top-1 last", f(summary["last_top1"])),
        ("top-5 best / last", f"{f(summary['best_top5'])} / {f(summary['last_top5'])}"),
        ("published top-1", f(summary["published_top1"])),
        ("ours (best) - published", f(summary["best_minus_published"], "{:+.2f}")),
        ("steps", str(summary["steps"])),
        ("wall time (s)", f(summary["wall_time_s"], "{:.1f}")),
        ("train images/s", f(summary["images_per_s"], "{:.1f}")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_summary(workdir: str, summary: dict) -> str:
    path = os.path.join(workdir, "summary.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    return path
