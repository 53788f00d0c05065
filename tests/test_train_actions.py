"""The action points of the training loop (kd_jax.train.actions.Schedule), worked out by hand
for 4 steps per epoch, 10 steps, logging every 3 steps, evaluating every 2 epochs and
checkpointing every epoch: they do not depend on the steps per dispatch."""

from kd_jax.train.actions import CheckpointTimer, Schedule

SCHEDULE = Schedule(steps_per_epoch=4, total_steps=10, log_every_steps=3, eval_every_epochs=2,
                    checkpoint_every_epochs=1)


def points(ends, stop_at=None):
    """{action: [dispatch end steps where it is due]} for dispatches ending at `ends`."""
    out = {"log": [], "eval": [], "checkpoint": [], "stop": [], "log_through": [], "sync": []}
    previous = 0
    for end in ends:
        k = end - previous
        due = SCHEDULE.due(end, k, stop_requested=end == stop_at)
        for action in ("log", "eval", "checkpoint", "stop", "log_through"):
            if getattr(due, action):
                out[action].append(end)
        if SCHEDULE.sync_point(end, k):
            out["sync"].append(end)
        previous = end
    return out


def test_one_step_per_dispatch():
    got = points(range(1, 11))
    assert got == {"log": [3, 4, 6, 8, 9, 10],        # multiples of 3, epoch ends, the end
                   "eval": [8, 10],                   # end of epoch 2, and the end
                   "checkpoint": [4, 8, 10],          # every epoch end, and the end
                   "stop": [10],
                   "log_through": [4, 8, 10],         # epoch ends and the end log every step
                   "sync": [3, 4, 6, 8, 9]}


def test_two_steps_per_dispatch_log_at_the_first_boundary_after_a_multiple():
    got = points([2, 4, 6, 8, 10])
    assert got["log"] == [4, 6, 8, 10]               # 3 -> 4, 9 -> 10
    assert got["log_through"] == [4, 8, 10]           # at 6 the record ends at step 6 anyway
    assert got["eval"] == [8, 10] and got["checkpoint"] == [4, 8, 10]
    assert got["sync"] == [4, 6, 8, 10]


def test_a_requested_stop_logs_and_checkpoints_without_evaluating():
    got = points(range(1, 11), stop_at=5)
    assert 5 in got["stop"] and 5 in got["checkpoint"] and 5 in got["log_through"]
    assert 5 not in got["eval"]


def test_epoch_of_a_step():
    # The epoch of the step after `step`, or of `step` itself at an epoch end.
    assert [SCHEDULE.epoch(t) for t in (0, 1, 3, 4, 5, 8, 9)] == [1, 1, 1, 1, 2, 2, 3]


def test_checkpoints_by_time_at_sync_points_and_none_by_epochs():
    """checkpoint_every_epochs=0 and a timer that has run out: a checkpoint at the sync
    points the timer says (the caller passes the timer only there), at the end and at stops."""
    schedule = Schedule(steps_per_epoch=4, total_steps=10, log_every_steps=3,
                        eval_every_epochs=2, checkpoint_every_epochs=0,
                        checkpoint_every_minutes=5.0)
    saves = [end for end in range(1, 11)
             if schedule.due(end, 1, stop_requested=end == 7,
                             checkpoint_time=end in (3, 6)).checkpoint]
    assert saves == [3, 6, 7, 10]   # two timed, the stop, the end; no epoch end


def test_checkpoint_timer():
    now = [100.0]
    timer = CheckpointTimer(2.0, clock=lambda: now[0])
    assert not timer.due()
    now[0] += 119.0
    assert not timer.due()
    now[0] += 1.0
    assert timer.due()
    timer.restart()
    assert not timer.due()
    now[0] += 1e6
    assert not CheckpointTimer(0.0, clock=lambda: now[0]).due()   # 0: never
