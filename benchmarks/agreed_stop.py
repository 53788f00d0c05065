"""Cost of agreeing on a stop across processes (kd_jax.train.stops.agreed).

Starts N CPU processes (jax.distributed, gloo over localhost), each with one device; each
times `stops.agreed` (an all-gather of the int32 stop flag) R times and prints the median and
the 90th percentile in ms. The trainer calls it only with several processes, and only at
sync points (logging points and epoch ends, every `log_every_steps` steps), where the host
already waits for the step metrics; a single process never calls it. Divide the figure by
log_every_steps for the cost per step.

    python benchmarks/agreed_stop.py [--processes 2] [--repeats 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

WORKER = """
import sys, time
import numpy as np
from kd_jax.train import multihost, stops
multihost.initialize()
import jax
stop = stops.StopSignal()
repeats = int(sys.argv[1])
stops.agreed(stop)   # warm-up: compiles the all-gather
times = []
for _ in range(repeats):
    t = time.perf_counter()
    stops.agreed(stop)
    times.append(time.perf_counter() - t)
if jax.process_index() == 0:
    ms = np.array(times) * 1e3
    print(f"{jax.process_count()} processes: agreed() median {np.median(ms):.3f} ms, "
          f"p90 {np.percentile(ms, 90):.3f} ms over {repeats} calls", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(args.processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES=str(args.processes), JAX_PROCESS_ID=str(i),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(args.repeats)],
                                      env=env))
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
        sys.exit(f"a worker failed: exit codes {codes}")


if __name__ == "__main__":
    main()
