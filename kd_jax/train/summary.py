"""Run summaries: best/last top-1 and top-5, the published number, time and speed.

A run's `summary.json` (one per student: the workdir of a solo run, <workdir>/<name> in
lockstep) holds the numbers below plus the eval history. Wall time is the sum of the run's
segments (the first run and every resume); images/s counts training steps only (no
compilation, evaluation or checkpointing).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional, Sequence

import jax

from kd_jax import models
from kd_jax.reference import published

if TYPE_CHECKING:
    from kd_jax.train.resume import LoopState
    from kd_jax.train.setup import Setup

SUMMARY_FILE = "summary.json"


def published_top1(dataset: str, method_key: str, teacher_arch: str,
                   student_arch: str) -> Optional[float]:
    """The published top-1 (%) of the pair and method, or None."""
    return published.top1(dataset, method_key,
                          models.base_name(teacher_arch) if teacher_arch else None,
                          models.base_name(student_arch))


def make_summary(config, student, history: Sequence[dict], *, steps: int,
                 segments: Sequence[dict], images_seen: int, finished: bool) -> dict:
    """student: a config_validation.StudentPlan; history: one {"epoch", "step", "top1",
    "top5"} (percent) per evaluation; segments: {"wall_s", "train_s", ...} per run segment."""
    best = max(history, key=lambda h: h["top1"]) if history else None
    last = history[-1] if history else None
    teacher = config.teacher.arch if student.spec.needs_teacher else ""
    pub = published_top1(config.dataset.name, student.method_key, teacher, config.student.arch)
    train_time = sum(s["train_s"] for s in segments)
    return {
        "method": student.label,
        "method_key": student.method_key,
        "name": student.name,
        "dataset": config.dataset.name,
        "teacher": teacher or None,
        "student": config.student.arch,
        "recipe": config.recipe,
        "seed": config.seed,
        "init_seed": student.init_seed,
        "steps": steps,
        "finished": finished,
        "epochs_evaluated": len(history),
        "best_top1": best["top1"] if best else None,
        "best_top5": max(h["top5"] for h in history) if history else None,
        "best_epoch": best["epoch"] if best else None,
        "last_top1": last["top1"] if last else None,
        "last_top5": last["top5"] if last else None,
        "published_top1": pub,
        "best_minus_published": (best["top1"] - pub) if best and pub is not None else None,
        "wall_time_s": sum(s["wall_s"] for s in segments),
        "segments": list(segments),
        "train_time_s": train_time,
        "images_per_s": images_seen / train_time if train_time > 0 else None,
        "history": list(history),
        # The exported models (set by the trainer when it writes them): final_model holds
        # the last step's weights and the last evaluation's top-1; best_model the weights of
        # the best evaluation (best_epoch). Each: {"path", "epoch", "step", "top1", "top5"}.
        "final_model": None,
        "best_model": None,
    }


def run_summaries(s: Setup, loop: LoopState, segments: Sequence[dict],
                  images_seen: int) -> dict:
    """{student name: make_summary} of a run (segments and images_seen: of every segment so
    far)."""
    finished = loop.step >= s.total_steps
    return {name: make_summary(s.config, st.plan, loop.history[name], steps=loop.step,
                               segments=segments, images_seen=images_seen, finished=finished)
            for name, st in s.students.items()}


def report(s: Setup, loop: LoopState, summaries: dict) -> dict:
    """Writes (process 0) and prints the run's summaries; returns the run's summary (a
    lockstep run's: {"lockstep": True, "students": summaries, "seed", "finished"}, and each
    student's also in <workdir>/<name>/summary.json)."""
    lockstep = s.plan.lockstep
    if lockstep:
        result = {"lockstep": True, "students": summaries, "seed": s.config.seed,
                  "finished": loop.step >= s.total_steps}
        table = format_lockstep_table(summaries)
    else:
        (result,) = summaries.values()
        table = format_table(result)
    if jax.process_index() == 0:
        if lockstep:
            for name, st in s.students.items():
                write_json(os.path.join(st.out_dir, SUMMARY_FILE), summaries[name])
        write_json(os.path.join(s.workdir, SUMMARY_FILE), result)
        print(table, flush=True)
    return result


def format_or_dash(v, fmt="{:.2f}") -> str:
    """`fmt` of v, or '-' for None."""
    return "-" if v is None else fmt.format(v)


def format_table(summary: dict) -> str:
    """A small fixed-width table: ours (best / last) vs published."""
    show = format_or_dash
    segments = summary.get("segments") or []
    rows = [
        ("method", summary["method"]),
        ("teacher -> student", f"{summary['teacher'] or '(none)'} -> {summary['student']}"),
        ("dataset", summary["dataset"]),
        ("top-1 best (epoch)", f"{show(summary['best_top1'])} ({summary['best_epoch']})"),
        ("top-1 last", show(summary["last_top1"])),
        ("top-5 best / last", f"{show(summary['best_top5'])} / {show(summary['last_top5'])}"),
        *[(f"{key} top-1 (epoch)", f"{show(m['top1'])} ({m['epoch']}) {m['path']}")
          for key in ("final_model", "best_model") for m in [summary.get(key)] if m],
        ("published top-1", show(summary["published_top1"])),
        ("ours (best) - published", show(summary["best_minus_published"], "{:+.2f}")),
        ("steps", str(summary["steps"])),
        ("wall time (s)", show(summary["wall_time_s"], "{:.1f}")
         + (" (" + " + ".join(f"{s['wall_s']:.1f}" for s in segments) + ")"
            if len(segments) > 1 else "")),
        ("train images/s", show(summary["images_per_s"], "{:.1f}")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_lockstep_table(summaries: dict) -> str:
    """One line per student of a lockstep run."""
    show = format_or_dash
    lines = [f"{'student':<16} {'method':<8} {'best top-1':>10} {'last top-1':>10} "
             f"{'published':>9}"]
    for name, s in summaries.items():
        lines.append(f"{name:<16} {s['method']:<8} {show(s['best_top1']):>10} "
                     f"{show(s['last_top1']):>10} {show(s['published_top1']):>9}")
    return "\n".join(lines)


def write_json(path: str, obj: dict) -> str:
    """Writes `obj` atomically (a reader never sees a half-written file)."""
    return write_text(path, json.dumps(obj, indent=2))


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` atomically: to path.tmp, then renamed over it, so a failed or
    killed write leaves the previous file whole."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


class BrokenJSONError(ValueError):
    """A JSON file (a summary) that exists but does not parse; the message names it."""


def read_json(path: str) -> Optional[dict]:
    """The file's object; None if there is no file; BrokenJSONError naming a broken one."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BrokenJSONError(f"{path}: not valid JSON ({e}); the file is truncated or "
                                  "damaged") from None
