"""python -m kd_jax.reproduce: a published table planned, run, stopped, resumed and printed.

- The tiny registered table (kd_jax.testing: 2 pairs x KD, DKD and the students alone, tiny
  CNNs on synthetic data) end to end: the dry-run's plan, a run stopped with SIGTERM, shown
  unfinished, resumed by the same command, printed beside its published column.
- For every real table, the plan's student runs are its cells x seeds, and each lockstep
  student's config is its separate run's. That a lockstep student then trains exactly as its
  separate run (parameters and BatchNorm statistics) is
  tests/test_lockstep_seeds.py::test_lockstep_student_equals_its_solo_run.
- `--lockstep never` (one run per student) writes where the lockstep students do.
- A run another process holds is passed over; mistakes end in one error line.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys

import pytest

import kd_jax.testing  # noqa: F401  registers the tiny table
from kd_jax.reference import published
from kd_jax.reproduce import measure, plan as plan_lib, report, runner
from kd_jax.reproduce.__main__ import main
from kd_jax.train import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The command line with the tiny table registered (it lives in kd_jax.testing).
COMMAND = [sys.executable, "-c", "import kd_jax.testing; from kd_jax.reproduce.__main__ "
                                 "import main; main()"]
# Student runs of each real table at 3 seeds: pairs x (methods + the students alone) x 3,
# counted from the papers' tables (kd_jax/reference/published.py, the spec's RECIPES.md).
REAL_RUNS = {"sdd_cifar100": 10 * 7 * 3, "sdd_cub": 5 * 7 * 3, "sdd_imagenet": 2 * 7 * 3,
             "dkd_cifar100": 11 * 3 * 3}


def command(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")   # as tests/conftest.py: compile speed
    return subprocess.Popen([*COMMAND, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_list_names_every_table_with_its_source_and_size(capsys):
    main(["--list"])
    out = capsys.readouterr().out
    for name, size in (("sdd_cifar100", "10 x 6"), ("sdd_cub", "5 x 6"),
                       ("sdd_imagenet", "2 x 6"), ("dkd_cifar100", "11 x 2")):
        assert re.search(rf"^{name} +{size} \(\+ alone\) .*\(.*CVPR 20\d\d\)", out, re.M), out


@pytest.mark.parametrize("name", sorted(REAL_RUNS))
def test_plan_runs_are_cells_times_seeds_and_lockstep_is_the_separate_runs(name):
    table = published.get_table(name)
    p = plan_lib.make_plan(table, [0, 1, 2])
    assert p.num_runs == REAL_RUNS[name]
    assert sum(len(r.keys) for g in p.groups for r in g.runs(lockstep=True)) == REAL_RUNS[name]
    assert sum(len(g.runs(lockstep=False)) for g in p.groups) == REAL_RUNS[name]
    assert len({g.student_dir(k) for g in p.groups for k in g.keys}) == REAL_RUNS[name]
    # Every lockstep student has exactly its separate run's values (the trainer then trains
    # it identically: tests/test_lockstep_seeds.py), so every group may train in lockstep.
    assert [g.label for g in p.groups if g.incompatible] == []
    g = p.groups[0]
    assert all(plan_lib.differences(g.lockstep_config, g.solo_configs[k], k) == []
               for k in g.keys)


def test_a_student_whose_values_differ_is_told_apart():
    p = plan_lib.make_plan(published.get_table("tiny"), [0])
    g = p.groups[0]
    solo = g.solo_configs["kd"]
    solo.optimizer.lr = 0.1
    assert plan_lib.differences(g.lockstep_config, solo, "kd") == ["optimizer"]
    solo.optimizer.lr, solo.method.temperature = g.lockstep_config.optimizer.lr, 2.0
    assert plan_lib.differences(g.lockstep_config, solo, "kd") == ["method"]


def test_dry_run_of_a_real_table(capsys):
    main(["sdd_imagenet", "--dry-run", "--no-measure", "--seeds", "0,1"])
    out = capsys.readouterr().out
    assert ("plan: 2 pairs x 7 columns (student alone, KD, SD-KD, DKD, SD-DKD, NKD, SD-NKD) x "
            "2 seeds (0, 1) = 28 student runs, in 4 groups") in out
    # ImageNet's 1,281,167 training images at batch 512, remainder dropped: 2502 steps.
    assert "each run: 100 epochs x 2,502 steps = 250,200 steps at batch 512" in out
    assert len(re.findall(r"^ResNet34-ResNet18 seed [01] +lockstep +1 +250,200 ", out, re.M)) == 2
    assert "time on a device: " in out and "disk: " in out
    assert "SD-KD: released SDD config has no KD section" not in out   # stars: in the report


def test_report_stars_what_no_reference_code_settles(tmp_path, capsys):
    """kd_jax.reference's notes: a column's (ImageNet's SD-KD, NKD, SD-DKD) and a pair's
    inferred SDD scale set (resnet32x4 -> resnet8x4 SD-DKD), each with its note."""
    main(["sdd_imagenet", "--workdir", str(tmp_path), "--report", "--seeds", "0"])
    out = capsys.readouterr().out
    header = re.search(r"^teacher -> student .*$", out, re.M).group(0).split()
    assert [h for h in header if h.endswith("*")] == ["SD-KD*", "SD-DKD*", "NKD*"]
    assert "* NKD: SDD's NKD distiller hard-codes T=1, gamma=1.5." in out
    assert "runs: 0 of 14 finished, 0 unfinished, 14 not started." in out
    assert (tmp_path / "sdd_imagenet.md").is_file() and (tmp_path / "sdd_imagenet.csv").is_file()
    table = published.Table("inferred", "a test", "cifar100", ("sd_dkd",),
                            {("resnet32x4", "resnet8x4"): (76.0,)})
    p = plan_lib.make_plan(table, [0])
    text = report.text(p, report.gather(p, str(tmp_path / "none")))
    assert "- (0/1) | 76.00 | -*" in text
    assert "* resnet32x4 -> resnet8x4 SD-DKD: SD-DKD [1,2]*: no SDD_DKD launch line" in text


def test_device_time_comes_from_an_accelerator_section_of_results_md(tmp_path):
    real = measure.measured_machines(measure.results_file())
    cpu = [m for m in real if m.title == "cpu: AMD EPYC"]
    assert cpu and cpu[0].step_ms[("resnet32x4-resnet8x4", "kd", "float32", 64)] == 964.0
    fake = tmp_path / "RESULTS.md"
    fake.write_text("<!-- results:gpu_X -->\n## gpu: X x 1\n\n"
                    "| pair | method | dtype | batch | compile s | step ms |\n"
                    "|---|---|---|---|---|---|\n"
                    "| a-b | kd | float32 | 64 cap | 1.0 | 10.0 |\n"
                    "| a-b | dkd | float32 | 64 cap | 1.0 | 12.5 |\n\n<!-- /results:gpu_X -->\n")
    (gpu,) = measure.measured_machines(str(fake))
    assert gpu.accelerator and gpu.title == "gpu: X x 1"
    assert measure.device_step_s(gpu, "a-b", ["kd", "dkd"], "float32", 64) == (0.0225, [])
    assert measure.device_step_s(gpu, "a-b", ["ce", "kd"], "float32", 64) == (None, ["ce"])


def test_tiny_table_planned_run_stopped_resumed_and_printed(tmp_path, capsys):
    wd = str(tmp_path / "tiny")
    args = ["tiny", "--workdir", wd, "--seeds", "0"]
    # Planned: the groups, their steps and a measured step.
    main([*args, "--dry-run", "--steps", "1"])
    out = capsys.readouterr().out
    assert ("2 pairs x 3 columns (student alone, KD, DKD) x 1 seeds (0) = 6 student runs, "
            "in 2 groups") in out
    assert "each run: 2 epochs x 3 steps = 6 steps at batch 8" in out
    assert re.search(r"^tiny_cnn-tiny_cnn_wide seed 0 +lockstep +1 +6 +not started +\d+\.\d{3} ",
                     out, re.M), out
    assert "tiny_cnn_wide-tiny_cnn: lockstep; its step needs " in out
    assert not os.path.exists(wd)   # a dry run writes nothing

    # Run, stopped by SIGTERM once the second group has started.
    proc = command(*args)
    try:
        for line in proc.stdout:
            if line.startswith("=== tiny_cnn-tiny_cnn_wide seed 0: ce, kd, dkd"):
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = re.fullmatch(r"kd_jax: error: stopped by SIGTERM: saved step (\d) of 6 in "
                           rf"{re.escape(wd)}/tiny_cnn-tiny_cnn_wide/seed_0; run the same "
                           r"command \(same --workdir\) to resume", err.strip().splitlines()[-1])
    assert stopped, err[-2000:]
    step = int(stopped[1])

    # Unfinished runs show as such.
    main([*args, "--report"])
    out = capsys.readouterr().out
    assert f"unfinished: tiny_cnn-tiny_cnn_wide seed 0 kd (step {step} of 6)" in out
    assert "runs: 3 of 6 finished, 3 unfinished, 0 not started." in out
    assert re.search(r"^tiny_cnn -> tiny_cnn_wide +- \(0/1\) \| 35\.00 \| - ", out, re.M), out

    # The same command resumes: the finished group is skipped, the stopped one continues.
    proc = command(*args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "--- tiny_cnn_wide-tiny_cnn seed 0: finished, skipped" in out
    assert f"resuming from step {step} of 6" in out + err
    assert "runs: 6 of 6 finished, 0 unfinished, 0 not started." in out
    published_top1 = {("tiny_cnn_wide", "tiny_cnn"): {"ce": 30.0, "kd": 40.0, "dkd": 45.0},
                      ("tiny_cnn", "tiny_cnn_wide"): {"ce": 35.0, "kd": 41.0, "dkd": 46.0}}
    best_table = out.split("best top-1 (%)")[1].split("last top-1 (%)")[0]
    for (teacher, student), pub in published_top1.items():
        cells = []
        for key in ("ce", "kd", "dkd"):
            with open(os.path.join(wd, f"{teacher}-{student}", "seed_0", key,
                                   "summary.json")) as fh:
                s = json.load(fh)
            assert s["finished"] and s["steps"] == 6   # the plan's steps per run
            cells.append(f"{s['best_top1']:.2f} (1) | {pub[key]:.2f} | "
                         f"{s['best_top1'] - pub[key]:+.2f}")
        assert re.search(rf"^{teacher} -> {student} +" + " +".join(map(re.escape, cells)) + "$",
                         best_table, re.M), best_table
    with open(os.path.join(wd, "tiny.csv")) as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == 6 and {r["n_finished"] for r in written} == {"1"}
    with open(os.path.join(wd, "tiny.md")) as fh:
        assert r"\| 40.00 \|" in fh.read()


def test_a_run_held_elsewhere_is_passed_over(tmp_path, capsys):
    wd = tmp_path / "claimed"
    args = ["tiny", "--workdir", str(wd), "--seeds", "0,1", "--methods", "kd",
            "--pairs", "tiny_cnn_wide-tiny_cnn"]
    with workdir_lock.hold(str(wd / "tiny_cnn_wide-tiny_cnn" / "seed_0")):
        main(args)
    out = capsys.readouterr().out
    assert "--- tiny_cnn_wide-tiny_cnn seed 0: in use, passed over" in out
    assert "=== tiny_cnn_wide-tiny_cnn seed 1: kd in tiny_cnn_wide-tiny_cnn/seed_1 ===" in out
    assert re.search(r"^tiny_cnn_wide -> tiny_cnn +\d+\.\d\d \(1/2\) \| 40\.00 \| ", out, re.M)
    assert "note: 1 run(s) were in use by another process (tiny_cnn_wide-tiny_cnn seed 0)" in out


def test_separate_runs_land_where_lockstep_students_do(tmp_path, capsys):
    """--lockstep never: one run per student, in the directory its lockstep twin writes, with
    the same result (the trajectories are equal: tests/test_lockstep_seeds.py)."""
    args = ["tiny", "--seeds", "0", "--methods", "ce,kd", "--pairs", "tiny_cnn_wide-tiny_cnn"]
    results = {}
    for choice in ("always", "never"):
        wd = tmp_path / choice
        main([*args, "--workdir", str(wd), "--lockstep", choice])
        out = capsys.readouterr().out
        runs = re.findall(r"^=== (.*) ===$", out, re.M)
        assert len(runs) == (1 if choice == "always" else 2), runs
        with open(wd / "tiny_cnn_wide-tiny_cnn" / "lockstep.json") as fh:
            assert json.load(fh)["why"] == f"--lockstep {choice}"
        results[choice] = {}
        for key in ("ce", "kd"):
            with open(wd / "tiny_cnn_wide-tiny_cnn" / "seed_0" / key / "summary.json") as fh:
                s = json.load(fh)
            assert s["finished"] and s["seed"] == 0
            results[choice][key] = [h["top1"] for h in s["history"]]
        assert "runs: 2 of 2 finished" in out
    assert results["always"] == results["never"]


def test_mistakes_end_in_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KD_JAX_TEACHERS", str(tmp_path / "no_teachers"))
    wd = tmp_path / "wd"
    cases = [
        (["nope", "--workdir", str(wd)], "unknown table 'nope'; tables: sdd_cifar100, sdd_cub, "),
        (["sdd_cifar100", "--dry-run", "--methods", "kd,crd"],
         "--methods kd,crd: sdd_cifar100 has the columns ce, kd, sd_kd, dkd, sd_dkd, nkd, sd_nkd"),
        (["sdd_cifar100", "--dry-run", "--config.seed=3"],
         "--config.seed=3: python -m kd_jax.reproduce sets config.seed itself (instead: --seeds)"),
        (["sdd_cifar100", "--dry-run", "--no-measure", "--config.num_epoch=3"],
         "unknown config key 'num_epoch'; did you mean 'num_epochs'?"),
        (["sdd_cifar100", "--workdir", str(wd), "--pairs", "resnet32x4-ShuffleV1"],
         "the plan needs teachers that are not here: resnet32x4: fetch it: "
         "python -m kd_jax.teachers fetch resnet32x4"),
        (["sdd_cub", "--workdir", str(wd), "--pairs", "vgg13-vgg8", "--methods", "kd"],
         "vgg13: kd_jax fetches no caltech_birds2011 teacher vgg13: give one with --teacher "
         "vgg13=PATH"),
        (["sdd_cifar100"], "missing --workdir"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("kd_jax: error: ") and message in err, (argv, err)
    assert not wd.exists()   # refused before anything was written


def test_a_changed_plan_is_refused(tmp_path):
    table = published.get_table("tiny")
    runner.check_plan_file(plan_lib.make_plan(table, [0]), str(tmp_path), create=True)
    runner.check_plan_file(plan_lib.make_plan(table, [0, 1]), str(tmp_path), create=True)
    other = plan_lib.make_plan(table, [0], keys=("ce", "kd"))
    with pytest.raises(runner.PlanError, match="holds a plan of tiny with methods ce,kd,dkd "
                                               "and overrides \\(none\\); this command "
                                               "changes its --methods"):
        runner.check_plan_file(other, str(tmp_path), create=True)
