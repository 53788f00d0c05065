"""Lockstep students (one jitted step, one teacher forward) and runs over seeds.

- Each lockstep student's trajectory equals its solo run with the same seed (KD, DKD and
  SD-DKD together; parameters and BatchNorm statistics within 1e-5).
- A lockstep run stopped mid-way and resumed equals the uninterrupted one, student by student;
  each student has its own summary; re-running a finished run trains nothing.
- `--config.seeds`: one run per seed in seed_<s>/, and the top summary's mean ± sample std.
- `python -m kd_jax.results` collects workdirs into markdown and CSV.
Tiny models (kd_jax.testing) on synthetic data.
"""

import csv
import io
import json
import os

import jax
import numpy as np
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, recipes, results
from kd_jax.train import seeds as seeds_lib
from kd_jax.train import trainer

PAIR = "resnet32x4-resnet8x4"


def tiny(c, total_steps=0):
    c.dataset.update(name="synthetic", num_train=24, num_test=10, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps, c.seed = 8, 2, total_steps, 3
    c.optimizer.milestones = (1,)
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 1, False, False, False
    return c


def lockstep_config(total_steps=0):
    return tiny(recipes.build_lockstep_config(data.CIFAR100, f"{PAIR},kd,dkd,sd_dkd", default=""),
                total_steps)


def solo_config(method, arg):
    return tiny(recipes.build_config(method, data.CIFAR100, arg, default_pair=arg))


def leaves(student_state):
    return [np.asarray(x) for x in jax.tree.leaves(
        (student_state.params["model"], student_state.model_state))]


@pytest.fixture(scope="module")
def lockstep_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("lockstep"))
    summary, state = trainer.train(lockstep_config(), wd)
    return wd, summary, state


@pytest.mark.parametrize("name,method,arg", [("kd", "kd", PAIR), ("dkd", "dkd", PAIR),
                                             ("sd_dkd", "sdd", f"{PAIR},dkd")])
def test_lockstep_student_equals_its_solo_run(tmp_path, lockstep_run, name, method, arg):
    _, _, state = lockstep_run
    _, solo = trainer.train(solo_config(method, arg), str(tmp_path))
    got, want = leaves(state.students[name]), leaves(solo.students["student"])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # The students really differ from each other (the test is not comparing copies).
    other = leaves(state.students["kd" if name != "kd" else "dkd"])
    assert max(np.abs(a - b).max() for a, b in zip(got, other)) > 1e-4


def test_lockstep_students_take_the_solo_recipes():
    """Each lockstep student's method block is its solo config's (which tests/test_recipes.py
    checks against the reference and against the objective the trainer builds), the quickstart
    aside."""
    arg = "resnet32x4-ShuffleV1,ce,kd,dkd,nkd,clkd,sd_kd,sd_dkd,sd_nkd,kd@2"
    c = recipes.build_lockstep_config(data.CIFAR100, arg, default="")
    solo = {"ce": ("ce", "ShuffleV1"), "kd": ("kd", None), "dkd": ("dkd", None),
            "nkd": ("nkd", None), "clkd": ("clkd", None),
            "sd_kd": ("sdd", "resnet32x4-ShuffleV1,kd"), "sd_dkd": ("sdd", "resnet32x4-ShuffleV1,dkd"),
            "sd_nkd": ("sdd", "resnet32x4-ShuffleV1,nkd"), "kd@2": ("kd", None)}
    assert set(c.students) == set(solo)
    for name, (method, pair_arg) in solo.items():
        ref = recipes.build_config(method, data.CIFAR100, pair_arg or "resnet32x4-ShuffleV1",
                                   default_pair="")
        assert c.students[name].method.to_dict() == ref.method.to_dict(), name
        assert c.students[name].init_seed_offset == (2 if name == "kd@2" else 0)
    assert c.optimizer.lr == recipes.build_config("kd", data.CIFAR100, "resnet32x4-ShuffleV1",
                                                  default_pair="").optimizer.lr


def test_lockstep_outputs_per_student(lockstep_run):
    wd, summary, _ = lockstep_run
    assert not os.path.exists(os.path.join(wd, "metrics.jsonl"))   # per student only
    assert summary["lockstep"] and set(summary["students"]) == {"kd", "dkd", "sd_dkd"}
    for name, label in (("kd", "KD"), ("dkd", "DKD"), ("sd_dkd", "SD-DKD")):
        with open(os.path.join(wd, name, "summary.json")) as fh:
            s = json.load(fh)
        assert (s["method"], s["name"], s["steps"], s["finished"]) == (label, name, 6, True)
        with open(os.path.join(wd, name, "metrics.jsonl")) as fh:
            records = [json.loads(line) for line in fh]
        assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
        assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]


def test_lockstep_resume_equals_uninterrupted(tmp_path, lockstep_run, capsys):
    _, _, uninterrupted = lockstep_run
    wd = str(tmp_path)
    trainer.train(lockstep_config(total_steps=4), wd)   # stops mid-epoch 2
    summary, state = trainer.train(lockstep_config(), wd)
    assert summary["finished"]
    for name in ("kd", "dkd", "sd_dkd"):
        for a, b in zip(leaves(state.students[name]), leaves(uninterrupted.students[name])):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Wall time of both segments kept; a third call trains nothing and says so.
    with open(os.path.join(wd, "kd", "summary.json")) as fh:
        segments = json.load(fh)["segments"]
    assert [(s["first_step"], s["last_step"]) for s in segments] == [(0, 4), (4, 6)]
    capsys.readouterr()
    again, _ = trainer.train(lockstep_config(), wd)
    assert "holds a finished run (step 6 of 6); nothing to do" in capsys.readouterr().out
    assert again["students"]["kd"]["segments"] == summary["students"]["kd"]["segments"]


def test_a_changed_student_list_is_refused_on_resume(tmp_path):
    wd = str(tmp_path)
    trainer.train(lockstep_config(total_steps=2), wd)
    c = tiny(recipes.build_lockstep_config(data.CIFAR100, f"{PAIR},kd,dkd", default=""))
    with pytest.raises(trainer.ConfigError, match=r"students \['dkd', 'kd', 'sd_dkd'\]"):
        trainer.train(c, wd)


# --- seeds -----------------------------------------------------------------------------------

def test_stats_is_the_sample_std():
    s = seeds_lib.stats([70.0, 72.0, 77.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(73.0)
    assert s["std"] == pytest.approx(np.std([70.0, 72.0, 77.0], ddof=1))
    assert seeds_lib.stats([71.5]) == {"mean": 71.5, "std": None, "n": 1}


def test_seeds_run_each_seed_and_write_the_contract(tmp_path, capsys):
    c = solo_config("kd", PAIR)
    c.seeds = "0,5"
    wd = str(tmp_path)
    result = seeds_lib.run_seeds(c, wd)
    assert sorted(os.listdir(wd)) == ["seed_0", "seed_5", "summary.json"]
    with open(os.path.join(wd, "summary.json")) as fh:
        top = json.load(fh)
    per_seed = []
    for s in (0, 5):
        with open(os.path.join(wd, f"seed_{s}", "summary.json")) as fh:
            per_seed.append(json.load(fh))
        assert per_seed[-1]["seed"] == s
    assert top == result and top["seeds"] == [0, 5]
    for key in ("best_top1", "last_top1"):
        values = [p[key] for p in per_seed]
        assert top[key]["n"] == 2
        assert top[key]["mean"] == pytest.approx(np.mean(values))
        assert top[key]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "2 seeds (0, 5)" in capsys.readouterr().out


def _write(path, obj):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "summary.json"), "w") as fh:
        json.dump(obj, fh)


def test_results_table(tmp_path, capsys):
    seeds_dir, single = str(tmp_path / "sdkd"), str(tmp_path / "kd")
    _write(seeds_dir, {"seeds": [0, 1, 2], "method": "SD-KD", "teacher": "resnet32x4",
                       "student": "ShuffleV1", "dataset": "cifar100",
                       "best_top1": {"mean": 75.0, "std": 0.5, "n": 3},
                       "last_top1": {"mean": 74.5, "std": 0.25, "n": 3},
                       "published_top1": 76.30})
    _write(single, {"method": "KD", "teacher": "resnet32x4", "student": "ShuffleV1",
                    "dataset": "cifar100", "best_top1": 73.0, "last_top1": 72.0,
                    "published_top1": 74.07})
    csv_path = str(tmp_path / "out.csv")
    assert results.main([seeds_dir, single, "--csv", csv_path]) == 0
    table = capsys.readouterr().out
    assert "| sdkd | SD-KD | resnet32x4 -> ShuffleV1 | cifar100 | 3 | 75.00 ± 0.50 | 74.50 ± 0.25 " \
           "| 76.30 | -1.30 | -2.6 |" in table
    assert "| kd | KD | resnet32x4 -> ShuffleV1 | cifar100 | 1 | 73.00 | 72.00 | 74.07 | -1.07 | - |" \
        in table
    with open(csv_path) as fh:
        rows = list(csv.DictReader(io.StringIO(fh.read())))
    assert float(rows[0]["diff_in_std"]) == pytest.approx((75.0 - 76.30) / 0.5)
    assert rows[1]["n"] == "1" and rows[1]["best_std"] == ""
    assert results.main([str(tmp_path / "missing")]) == 2


def test_lockstep_students_clip_as_their_solo_recipes():
    """Each lockstep student clips as its method's reference trainer (SDD's 40 for SD-* and
    NKD, none for KD / DKD / CE on CIFAR-100): its entry's clip_grad_norm is its solo
    config's, and the plan the trainer builds carries it."""
    from kd_jax.train import config_validation
    arg = f"{PAIR},ce,kd,dkd,nkd,sd_kd,sd_dkd"
    c = tiny(recipes.build_lockstep_config(data.CIFAR100, arg, default=""))
    want = {"ce": 0.0, "kd": 0.0, "dkd": 0.0, "nkd": 40.0, "sd_kd": 40.0, "sd_dkd": 40.0}
    assert {n: c.students[n].clip_grad_norm for n in want} == want
    plan = config_validation.validate(c, num_devices=1)
    assert {p.name: p.clip_grad_norm for p in plan.students} == want
    c.students.sd_kd.clip_grad_norm = -1.0
    with pytest.raises(config_validation.ConfigError, match=r"students\.sd_kd\.clip_grad_norm"):
        config_validation.validate(c, num_devices=1)


def test_seeds_summary_is_written_by_process_0_only(tmp_path, capsys, monkeypatch):
    """Every process runs the seeds; only process 0 writes DIR/summary.json and prints."""
    fake = {"method": "KD", "method_key": "kd", "dataset": "synthetic", "teacher": "t",
            "student": "s", "best_top1": 50.0, "last_top1": 40.0, "published_top1": None,
            "finished": True}
    c = solo_config("kd", PAIR)
    c.seeds = "0,1"
    monkeypatch.setattr(seeds_lib.jax, "process_index", lambda: 1)
    result = seeds_lib.run_seeds(c, str(tmp_path), train_fn=lambda cfg, wd: dict(fake))
    assert result["best_top1"]["n"] == 2
    assert os.listdir(tmp_path) == [] and capsys.readouterr().out == ""
    monkeypatch.setattr(seeds_lib.jax, "process_index", lambda: 0)
    seeds_lib.run_seeds(c, str(tmp_path), train_fn=lambda cfg, wd: dict(fake))
    assert os.listdir(tmp_path) == ["summary.json"] and "2 seeds" in capsys.readouterr().out
