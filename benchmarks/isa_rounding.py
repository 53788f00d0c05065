"""How much XLA's CPU rounding changes with the instruction set it compiles for.

    python benchmarks/isa_rounding.py [--isas AVX2,AVX,SSE4_2]

Runs one small step-like computation (a 3x3 convolution of a (8, 32, 32, 16) batch, a
tanh/softmax loss, and its gradient) in a fresh process per instruction set, with
`XLA_FLAGS=--xla_cpu_max_isa=<ISA>` (the most XLA may use), and prints how many gradient
elements differ from the unrestricted run, and by how much: the flag changes the code XLA
emits, as another processor would, which is what makes the quickstart's
`XLA_FLAGS=--xla_cpu_max_isa=...` runs stand in for other processors. Which operations round
differently depends on the ISA: on an AVX-512 machine this probe is unchanged under AVX2,
while the quickstart's distilled students (not the student alone) print different numbers
(docs/quickstart.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

_PROBE = """
import sys
import jax, jax.numpy as jnp, numpy as np
kx, kw = jax.random.split(jax.random.PRNGKey(0))
x = jax.random.normal(kx, (8, 32, 32, 16))
w = jax.random.normal(kw, (3, 3, 16, 32)) * 0.1
def loss(w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    p = jax.nn.log_softmax(jnp.tanh(y).mean(axis=(1, 2)), axis=-1)
    return -p[:, 0].mean()
np.save(sys.argv[1], np.asarray(jax.jit(jax.grad(loss))(w)))
"""


def gradient(isa: str, path: str) -> np.ndarray:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)   # a cached program would hide the flag
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_cpu_max_isa" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ([f"--xla_cpu_max_isa={isa}"] if isa else []))
    subprocess.run([sys.executable, "-c", _PROBE, path], env=env, check=True)
    return np.load(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isas", default="AVX2,AVX,SSE4_2",
                        help="comma-separated --xla_cpu_max_isa values (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = gradient("", os.path.join(tmp, "base.npy"))
        print(f"gradient of a conv + softmax loss, {base.size} elements, against the "
              "unrestricted run:")
        print(f"{'max ISA':<10} {'differ':>8} {'max |diff|':>12} {'max rel':>10}")
        for isa in [s for s in args.isas.split(",") if s]:
            g = gradient(isa, os.path.join(tmp, f"{isa}.npy"))
            diff = np.abs(g - base)
            rel = diff / np.maximum(np.abs(base), 1e-12)
            print(f"{isa:<10} {np.mean(diff > 0):>7.1%} {diff.max():>12.3g} {rel.max():>10.3g}")


if __name__ == "__main__":
    main()
