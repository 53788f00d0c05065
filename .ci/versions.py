"""Prints the stack a CI leg resolved, one line: Python, jax, jaxlib, flax, optax, orbax,
chex, numpy, tfds, and torch / TensorFlow (or "absent").

    python .ci/versions.py [--absent torch,tensorflow] [--present torch,tensorflow]

--absent: exit 1 unless those import names are missing (the lean legs test the core without
them, so a dependency that pulled one in would hide what they check). --present: exit 1 unless
they are installed (the full leg: its tests that need them must run, not skip).
"""

import argparse
import importlib.metadata
import importlib.util
import platform
import sys

# (label, distribution names: the first installed one is shown)
STACK = (("jax", ("jax",)), ("jaxlib", ("jaxlib",)), ("flax", ("flax",)), ("optax", ("optax",)),
         ("orbax", ("orbax-checkpoint",)), ("chex", ("chex",)), ("numpy", ("numpy",)),
         ("tfds", ("tensorflow-datasets",)), ("torch", ("torch",)),
         ("tensorflow", ("tensorflow-cpu", "tensorflow")))


def version(dists: tuple[str, ...]) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "absent"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--absent", default="", help="comma-separated import names")
    parser.add_argument("--present", default="", help="comma-separated import names")
    args = parser.parse_args()
    print(f"python {platform.python_version()}: "
          + ", ".join(f"{label} {version(dists)}" for label, dists in STACK))
    errors = [f"{m} is installed in a leg that must test without it"
              for m in filter(None, args.absent.split(","))
              if importlib.util.find_spec(m) is not None]
    errors += [f"{m} is missing in a leg that must test with it"
               for m in filter(None, args.present.split(","))
               if importlib.util.find_spec(m) is None]
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
