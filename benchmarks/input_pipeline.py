"""Train input throughput (images/s) of kd_jax.data on this host.

Measures the numpy pipeline (shuffle + pad/crop/flip + normalise per batch) for synthetic
CIFAR-size data and, when installed, Fashion-MNIST, at global batch 64 and 512; then the same
stream through prefetch_to_mesh onto a mesh of all local devices.

    python benchmarks/input_pipeline.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kd_jax import data  # noqa: E402
from kd_jax.data import fashion_mnist  # noqa: E402


def batches_forever(dataset, batch_size):
    """Train batches across epochs (epochs restart the shuffle, as in training)."""
    for epoch in itertools.count(1):
        yield from dataset.train_batches(epoch, batch_size, seed=0)


def throughput(iterator, batch_size: int, seconds: float, block=lambda batch: None) -> float:
    """images/s after one warm-up batch, over at least `seconds`."""
    block(next(iterator))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        block(next(iterator))
        count += 1
    return count * batch_size / (time.perf_counter() - start)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every flag's default."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="wall time of each measurement (after one warm-up batch)")
    args = parser.parse_args()

    datasets = {"synthetic 32x32": data.get_dataset({
        "name": "synthetic", "num_train": 50_000, "num_test": 10_000, "image_size": 32,
        "num_classes": 100})}
    if os.path.isdir(fashion_mnist.DEBIAN_DIR):
        datasets["fashion_mnist"] = data.get_dataset({"name": "fashion_mnist", "data_dir": None})
    else:
        print(f"(fashion_mnist skipped: {fashion_mnist.DEBIAN_DIR} not found)")

    print(f"host: {os.cpu_count()} CPUs; devices: {jax.devices()}")
    for name, dataset in datasets.items():
        for batch_size in (64, 512):
            rate = throughput(batches_forever(dataset, batch_size), batch_size, args.seconds)
            print(f"{name:16s} batch {batch_size:4d}  numpy train pipeline   {rate:10,.0f} img/s")

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    dataset = datasets["synthetic 32x32"]
    for batch_size in (64, 512):
        stream = data.prefetch_to_mesh(batches_forever(dataset, batch_size), sharding, size=2)
        rate = throughput(stream, batch_size, args.seconds, block=jax.block_until_ready)
        stream.close()
        print(f"{'synthetic 32x32':16s} batch {batch_size:4d}  + prefetch_to_mesh      "
              f"{rate:10,.0f} img/s")


if __name__ == "__main__":
    main()
