"""Metrics out: JSON lines (<workdir>/metrics.jsonl), TensorBoard events (<workdir>/tb)
and a tqdm progress bar. Only process 0 writes; others are silent.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np


def _to_python(value):
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        value = np.asarray(value).item()
    return value


class MetricLog:
    def __init__(self, workdir: str, *, tensorboard: bool = True, progress_bar: bool = True,
                 total_steps: int = 0, initial_step: int = 0):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        # Append: a resumed run continues the same file.
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            import tensorflow as tf  # lazy: TF is slow to import and only needed here.
            from tensorflow.core.framework import summary_pb2
            self._tf = tf
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
            # tf.summary.scalar lives in the `tensorboard` package, which tensorflow-cpu does
            # not install; the core tf.summary.write with the scalars plugin's metadata
            # writes the same event records.
            self._scalar_meta = summary_pb2.SummaryMetadata()
            self._scalar_meta.plugin_data.plugin_name = "scalars"
        if progress_bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def write(self, step: int, kind: str, metrics: dict) -> None:
        """One JSON line {"step", "kind" (train | eval), **metrics} and TB scalars kind/name."""
        if not self.enabled:
            return
        values = {k: _to_python(v) for k, v in metrics.items()}
        record = {"step": int(step), "kind": kind,
                  **{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                     for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            with self._tb.as_default():
                for k, v in values.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tf.summary.write(f"{kind}/{k}", self._tf.constant(v, self._tf.float32),
                                               step=int(step), metadata=self._scalar_meta)
            self._tb.flush()

    def progress(self, steps: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                       for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
