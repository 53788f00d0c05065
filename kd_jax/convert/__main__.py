"""python -m kd_jax.convert --arch NAME --num-classes K INPUT.pth OUTPUT_DIR

Converts a PyTorch teacher checkpoint into OUTPUT_DIR/state (orbax) + OUTPUT_DIR/teacher.json.
A mistake (an unknown --arch, a file that is not a PyTorch checkpoint, a non-empty OUTPUT_DIR
without --overwrite) or a failed write ends in one `kd_jax: error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import time

import kd_jax.models
from kd_jax import errors
from kd_jax.convert.converted import STATE_DIR, save_converted
from kd_jax.convert.torch_files import read_checkpoint, sha256
from kd_jax.convert.mapping import ConversionError, torch_to_flax


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kd_jax.convert",
        description="Convert a PyTorch teacher checkpoint (.pth) into an orbax checkpoint of the "
                    "kd_jax Flax model, plus teacher.json (arch, num_classes, sha256, accuracy).")
    parser.add_argument("--arch", required=True,
                        help=f"model name; one of: {', '.join(kd_jax.models.names())}")
    parser.add_argument("--num-classes", type=int, required=True, help="outputs of the head")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="if the file holds Python objects beyond tensors, numbers and "
                             "containers, load it with torch.load(weights_only=False), which "
                             "EXECUTES the file as a pickle: only for files you trust (needs "
                             "PyTorch)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    parser.add_argument("input", help="checkpoint dict, distiller checkpoint or plain state_dict")
    parser.add_argument("output_dir", help="directory to write (state/ and teacher.json)")
    return parser.parse_args(argv)


@errors.command()   # a full disk, no permission, read-only: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arch not in kd_jax.models.names():
        return errors.report(f"unknown arch {args.arch!r}; known: "
                             f"{', '.join(kd_jax.models.names())}")
    start = time.perf_counter()
    print(f"reading {args.input}")
    try:
        ckpt = read_checkpoint(args.input, allow_pickle=args.allow_pickle)
        print(f"  format: {ckpt.source_format}; {len(ckpt.state_dict)} entries"
              + (f"; accuracy {ckpt.accuracy}" if ckpt.accuracy is not None else "")
              + (f"; epoch {ckpt.epoch}" if ckpt.epoch is not None else ""))
        for note in ckpt.notes:
            print(f"  note: {note}")
        read_s = time.perf_counter() - start
        model = torch_to_flax(ckpt.state_dict, args.arch, args.num_classes)
        convert_s = time.perf_counter() - start - read_s
    except (ConversionError, FileNotFoundError, ImportError) as e:
        return errors.report(e)
    print(f"  converted to {args.arch} (num_classes={args.num_classes}): every key used, every "
          f"leaf filled (read {read_s:.1f} s, convert {convert_s:.1f} s)")
    meta = {"arch": args.arch, "num_classes": args.num_classes,
            "source": os.path.abspath(args.input), "source_sha256": sha256(args.input),
            "source_format": ckpt.source_format, "accuracy": ckpt.accuracy, "epoch": ckpt.epoch,
            "notes": ckpt.notes}
    try:
        meta_path = save_converted(model, args.output_dir, meta, overwrite=args.overwrite)
    except FileExistsError as e:
        return errors.report(e)
    print(f"wrote {os.path.join(args.output_dir, STATE_DIR)}/ (orbax) and {meta_path} "
          f"(source sha256 {meta['source_sha256'][:12]}...) in {time.perf_counter() - start:.1f} s")
    print(f"load it with kd_jax.convert.load_teacher({args.output_dir!r}, {args.arch!r}, "
          f"{args.num_classes})")
    return 0


if __name__ == "__main__":
    errors.exit_now(main())
