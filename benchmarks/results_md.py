"""benchmarks/RESULTS.md: one marked section per script and machine, replaced on a rerun.

    write_section(path, key, section)

`section` starts with `<!-- results:KEY -->` and ends with `<!-- /results:KEY -->`; the
section of that key in `path` is replaced, or the section is appended. A missing file starts
with `header`.
"""

from __future__ import annotations

import os
import re


def write_section(path: str, key: str, section: str,
                  header: str = "# Benchmark results\n") -> None:
    text = open(path).read() if os.path.exists(path) else header
    pattern = re.compile(rf"<!-- results:{re.escape(key)} -->.*?<!-- /results:{re.escape(key)} -->",
                         re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(text)
