"""python -m kd_jax.teachers {list, fetch NAME...|all, path NAME} [--dir DIR]

    python -m kd_jax.teachers list                  # names, published top-1, installed or not
    python -m kd_jax.teachers fetch resnet32x4      # download, convert, verify, install
    python -m kd_jax.teachers fetch all --from cifar_teachers.tar    # offline
    python -m kd_jax.teachers path resnet32x4       # the directory teacher.checkpoint takes

--dir: the teachers directory (default $KD_JAX_TEACHERS, else <$KD_JAX_CACHE or
~/.cache/kd_jax>/teachers). A config's teacher.checkpoint=published means
<that directory>/<teacher.arch>. Exit status: 0 ok (every teacher asked for is ready; with
`all --from ARCHIVE`, those it holds, at least one), 1 a teacher failed, 2 bad usage.
PyTorch is not needed (kd_jax.convert.pth reads the .pth files).

This command is the one part of kd_jax.teachers above the trainer: it measures a fetched
teacher with kd_jax.evaluate (`measure`), which kd_jax.teachers.fetch takes as an argument, so
the rest of the package stays below kd_jax.recipes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, Optional

from kd_jax import errors, teachers
from kd_jax.convert.converted import META_FILE
from kd_jax.teachers import catalog


def parse_args(argv):
    # --dir before or after the sub-command (SUPPRESS: a sub-parser without it keeps the value).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=argparse.SUPPRESS,
                        help="teachers directory (default $KD_JAX_TEACHERS, else teachers/ in "
                             "the cache directory $KD_JAX_CACHE or ~/.cache/kd_jax)")
    p = argparse.ArgumentParser(prog="python -m kd_jax.teachers", parents=[common],
                                description="Fetch, convert and verify the published teachers.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common],
                   help="published teachers and whether they are installed")
    f = sub.add_parser("fetch", parents=[common],
                       help="download (or take --from), convert, verify and install")
    f.add_argument("names", nargs="+",
                   help=f"teacher names or 'all' ({', '.join(catalog.TEACHERS)})")
    f.add_argument("--from", dest="from_file", metavar="FILE",
                   help="a local cifar_teachers.tar or .pth instead of a download; with "
                        "'all', the teachers an archive does not hold are named and skipped")
    f.add_argument("--url", help="download from this URL instead of the published one (a mirror)")
    f.add_argument("--force", action="store_true",
                   help="convert and install again, replacing an installed teacher even if its "
                        "bytes differ from the first download; a cached archive is reused only "
                        "if its sha256 is the recorded one (delete it from "
                        "$KD_JAX_CACHE/downloads to download again)")
    f.add_argument("--tolerance", type=float, default=None,
                   help="allowed difference in top-1 points between the recorded/measured and "
                        f"the published accuracy (default {catalog.TOLERANCE})")
    f.add_argument("--data-dir", help="dataset directory to measure the accuracy on the test "
                                      "split (default: the dataset's default location, if present)")
    f.add_argument("--no-evaluate", action="store_true", help="skip the test-split measurement")
    f.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    pa = sub.add_parser("path", parents=[common], help="print the installed teacher's directory")
    pa.add_argument("name")
    return p.parse_args(argv)


def _list(directory) -> int:
    root = teachers.teachers_dir(directory)
    print(f"teachers directory: {root}")
    print(f"{'name':<20} {'dataset':<13} {'published':>9}  installed")
    for t in catalog.TEACHERS.values():
        installed = os.path.isfile(os.path.join(root, t.name, META_FILE))
        print(f"{t.name:<20} {t.dataset:<13} {t.published_top1:>8.2f}%  "
              f"{'yes' if installed else 'no'}")
    print(f"sources: {catalog.MDISTILLER_CIFAR_TEACHERS_URL} (CIFAR-100; fallback "
          f"{catalog.REPDISTILLER_TEACHER_URL}), torchvision (ImageNet)")
    return 0


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Datasets are read if present, never downloaded, while verifying."""
    from kd_jax.data.tfds_io import OFFLINE_ENV
    saved = os.environ.get(OFFLINE_ENV)
    os.environ[OFFLINE_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(OFFLINE_ENV, None)
        else:
            os.environ[OFFLINE_ENV] = saved


def test_set(teacher: catalog.Teacher, data_dir: Optional[str]):
    """The teacher's test split if present (never downloaded), else None. ImageNet only when
    data_dir is given (preparing it from the archives takes hours)."""
    from kd_jax import data, evaluate
    if teacher.dataset == data.IMAGENET and not data_dir:
        return None
    try:
        with _offline():
            return data.get_dataset(evaluate.dataset_config(teacher.dataset, teacher.num_classes,
                                                            data_dir))
    except (data.DataNotFoundError, FileNotFoundError):
        return None


def measure_on_test_set(data_dir: Optional[str], batch_size: int):
    """kd_jax.teachers.fetch's `measure`: kd_jax.evaluate's metrics on the test split."""
    from kd_jax import evaluate   # jax: only when fetching

    def measure(teacher: catalog.Teacher, model) -> Optional[dict]:
        ds = test_set(teacher, data_dir)
        if ds is None:
            return None
        return evaluate.evaluate(model, ds, batch_size, desc=f"{teacher.name} test")

    return measure


@errors.command()   # a full disk, no permission, read-only: one line, exit 2
def main(argv=None) -> int:
    args = parse_args(argv)
    directory = getattr(args, "dir", None)
    if args.command == "list":
        return _list(directory)
    if args.command == "path":
        try:
            print(teachers.published_path(args.name, directory))
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    from kd_jax.teachers import fetch   # jax: only when fetching
    kwargs = dict(directory=directory, from_file=args.from_file, url=args.url, force=args.force,
                  measure=None if args.no_evaluate else measure_on_test_set(args.data_dir,
                                                                           args.batch_size))
    if args.tolerance is not None:
        if args.tolerance < 0:
            print("error: --tolerance must be >= 0", file=sys.stderr)
            return 2
        kwargs["tolerance"] = args.tolerance
    try:
        fetch.resolve_names(args.names, args.from_file)
    except fetch.FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outcome = fetch.fetch(args.names, **kwargs)
    if outcome.not_held:
        print(f"not in {args.from_file}: {', '.join(outcome.not_held)} (fetch them without "
              "--from, or from a file that holds them)")
    for message in outcome.failed.values():
        print(f"error: {message}", file=sys.stderr)
    if outcome.ok:
        print(f"{len(outcome.ready)} teacher(s) ready in {teachers.teachers_dir(directory)}: "
              f"{', '.join(outcome.ready)}; use them with --config.teacher.checkpoint=published")
        return 0
    if outcome.failed:
        print(f"{len(outcome.failed)} of {len(outcome.failed) + len(outcome.ready)} teacher(s) "
              f"failed: {', '.join(outcome.failed)}", file=sys.stderr)
    else:
        print(f"error: {args.from_file} holds none of the published teachers", file=sys.stderr)
    return 1


if __name__ == "__main__":
    errors.exit_now(main())
