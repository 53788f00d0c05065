"""Prints the effective recipe values as markdown: `python -m kd_jax.recipes`.

Four tables, read from what the config builder resolves (kd_jax.recipes.builder) and from
kd_jax.reference.published: the solver per dataset, the method values per dataset (the gradient
clip included), the per-pair values (student lr, DKD beta, SDD scale sets) and the published
top-1 per pair. docs/recipes.md's recipe tables are this command's output.
"""

from __future__ import annotations

from kd_jax import methods
from kd_jax.data import catalog
from kd_jax.recipes import builder
from kd_jax.reference import published, table

DATASETS = (catalog.CIFAR100, catalog.CUB, catalog.IMAGENET)
SHORT = {catalog.CIFAR100: "CIFAR-100", catalog.CUB: "CUB-200", catalog.IMAGENET: "ImageNet"}
# Where a value is not settled by released reference code (marked * in the table).
NOTES = table.METHOD_NOTES
# The method keys each dataset's config files offer (kd_jax/configs/<dataset>_<method>.py).
OFFERED = {catalog.CIFAR100: ("kd", "dkd", "nkd", "sd_kd", "sd_dkd", "sd_nkd", "clkd", "msdcrd"),
           catalog.CUB: ("kd", "dkd", "nkd", "sd_kd", "sd_dkd", "sd_nkd"),
           catalog.IMAGENET: ("kd", "dkd", "nkd", "sd_kd", "sd_dkd", "sd_nkd")}
COLUMNS = ("temperature", "ce_weight", "kd_weight", "warmup_epochs", "alpha", "beta", "gamma",
           "complementary_weight", "clip_grad_norm")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def method_table() -> str:
    lines = ["| dataset | method | " + " | ".join(COLUMNS) + " | note |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for dataset in DATASETS:
        for key, (method, variant) in methods.method_keys().items():
            if key not in OFFERED[dataset]:
                continue
            found = [(t, s) for t, s in builder.pairs(dataset, method, variant)]
            if not found:
                continue
            teacher, student = found[0]
            hp = builder.reference_hparams(method, dataset, teacher, student, variant)
            hp["clip_grad_norm"] = table.clip_grad_norm(dataset, method)
            cells = []
            for c in COLUMNS:
                if c in ("beta", "gamma") and c in hp and (
                        method != "nkd" or dataset != catalog.IMAGENET):
                    cells.append("pair's DKD beta")
                else:
                    cells.append(_fmt(hp.get(c)))
            notes = [NOTES.get((key, dataset), ""), table.CLIP_NOTES.get(method, "")]
            if notes[1]:
                cells[-1] += "*"
            note = "; ".join(n for n in notes if n)
            label = methods.label_of(key) + ("*" if note else "")
            lines.append(f"| {SHORT[dataset]} | {label} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def pair_table() -> str:
    lines = ["| dataset | teacher -> student | lr | DKD beta "
             "| SDD scales (SD-KD / SD-DKD / SD-NKD) | note |",
             "|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for teacher, student in table.pairs(dataset):
            p = table.pair(dataset, teacher, student)
            scales = " / ".join(p.sdd_scales[b] + ("*" if b in p.inferred else "")
                                for b in ("kd", "dkd", "nkd")) if p.sdd_scales \
                else "- (no SDD run)"
            lines.append(f"| {SHORT[dataset]} | {teacher} -> {student} | {p.lr:g} | "
                         f"{p.dkd_beta:g} | {scales} | {p.note} |")
    return "\n".join(lines)


def published_table() -> str:
    """The published top-1 (%) per pair and method key (kd_jax.reference.published)."""
    columns = published.SDD_COLUMNS
    lines = ["| dataset | teacher -> student | "
             + " | ".join(methods.label_of(c) for c in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for dataset in DATASETS:
        for teacher, student in table.pairs(dataset):
            found = [published.top1(dataset, c, teacher, student) for c in columns]
            cells = ["-" if v is None else f"{v:.2f}" for v in found]
            if any(c != "-" for c in cells):
                lines.append(f"| {SHORT[dataset]} | {teacher} -> {student} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    solver_lines = ["| dataset | batch | epochs | lr decay x0.1 after | weight decay | momentum |",
                    "|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        s = table.solver(dataset)
        solver_lines.append(f"| {SHORT[dataset]} | {s.batch_size} | {s.num_epochs} | "
                            f"{', '.join(map(str, s.milestones))} | {s.weight_decay:g} | "
                            f"{s.momentum:g} |")
    print("\n".join(solver_lines) + "\n\n" + method_table() + "\n\n" + pair_table()
          + "\n\n" + published_table())


if __name__ == "__main__":
    main()
