"""Never losing work: a kill at any point of an epoch's end (after the checkpoint, after best.pt) followed by --resume
gives exactly the files of an uninterrupted run; leftovers of killed writes are removed; a damaged newest checkpoint
is passed over; incomplete checkpoints are refused in one line."""
import json
import os
import struct

import pytest
import torch

import verydeep as vd
from verydeep import checkpoint as ckpt
from verydeep.errors import UserError
from imagegen import pattern_dataset
from test_train import assert_same, cli_args, run_cli

COMMON = dict(max_epochs=3, deterministic=True, threads=1, patience=5, keep_last=1, workers=0)
TIMING = ("images_per_s", "train_seconds", "time")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return pattern_dataset(tmp_path_factory.mktemp("patterns"), per_class=16, val_per_class=4)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(*cli_args(data, run, **COMMON))
    assert r.returncode == 0, r.stderr
    return run


def records(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(run):
    """(step, tag, value) of every scalar in the run's TensorBoard event files, read record by record."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted((run / "tb").iterdir()):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            e = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            out += [(e.step, v.tag, round(v.simple_value, 6)) for v in e.summary.value if "seconds" not in v.tag
                    and "per_s" not in v.tag]
    return sorted(out)


def last_best_step(run):
    recs = records(run)
    best = max(range(len(recs)), key=lambda i: (1 - recs[i]["val_top1_err"], -i))
    return recs[best]["global_step"]


def assert_same_run(ref, run):
    assert records(run) == records(ref)
    assert tb_scalars(run) == tb_scalars(ref)
    best, best_ref = ckpt.load(run / "checkpoints" / ckpt.BEST), ckpt.load(ref / "checkpoints" / ckpt.BEST)
    assert best["global_step"] == best_ref["global_step"]
    assert_same(best["model"], best_ref["model"], tol=0)
    a, b = vd.load(run / "model.safetensors"), vd.load(ref / "model.safetensors")
    assert_same(a.state_dict(), b.state_dict(), tol=0)


@pytest.mark.parametrize("point", ["checkpoint", "best"])
def test_kill_at_the_end_of_the_best_epoch_then_resume_equals_uninterrupted(data, reference, tmp_path, point):
    step = last_best_step(reference)  # the kill lands where the run records its final best
    run = tmp_path / "run"
    r = run_cli(*cli_args(data, run, **COMMON), env={"VERYDEEP_FAULT": f"{point}@{step}"})
    assert r.returncode == -9  # SIGKILL
    state = ckpt.load(ckpt.latest(run))
    assert state["best_step"] == step  # the checkpoint claims the best ...
    best = run / "checkpoints" / ckpt.BEST
    if point == "checkpoint":  # ... which best.pt does not hold yet
        assert not best.exists() or ckpt.load(best)["global_step"] != step
    again = run_cli(*cli_args(data, run, **COMMON, resume=True))
    assert again.returncode == 0, again.stderr
    assert_same_run(reference, run)


def test_resume_removes_temp_files_of_killed_writes(data, tmp_path):
    run = tmp_path / "run"
    assert run_cli(*cli_args(data, run, **{**COMMON, "max_steps": 2})).returncode == 0
    leftovers = [run / "checkpoints" / ".ckpt-000000009.pt.abc123.tmp", run / ".metrics.jsonl.x1.tmp"]
    for p in leftovers:
        p.write_bytes(b"\0" * 1024)
    r = run_cli(*cli_args(data, run, **{**COMMON, "max_steps": 3}, resume=True))
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in leftovers)
    assert "removed .ckpt-000000009.pt.abc123.tmp" in r.stderr


def test_damaged_newest_checkpoint_is_passed_over(data, tmp_path):
    run = tmp_path / "run"
    assert run_cli(*cli_args(data, run, **{**COMMON, "keep_last": 3, "checkpoint_steps": 1, "max_steps": 2})
                   ).returncode == 0
    newest = ckpt.latest(run)
    newest.write_bytes(b"")  # a crash of the file system, a full disk
    r = run_cli(*cli_args(data, run, **{**COMMON, "keep_last": 3, "checkpoint_steps": 1, "max_steps": 3},
                          resume=True))
    assert r.returncode == 0, r.stderr
    assert f"{newest}: unreadable checkpoint (empty file); resuming from an earlier checkpoint" in r.stderr
    assert "Traceback" not in r.stderr


def test_incomplete_checkpoint_is_one_line(tmp_path):
    p = tmp_path / "ckpt-000000001.pt"
    torch.save({"model": {}, "global_step": 1}, p)
    with pytest.raises(UserError, match="not a complete verydeep training checkpoint \\(missing optimizer"):
        ckpt.load(p)


def test_best_link_survives_rotation(tmp_path):
    state = {"global_step": 3, "x": torch.ones(2)}
    ckpt.save(state, tmp_path, keep_last=1, best=True)
    ckpt.save({**state, "global_step": 6, "x": torch.zeros(2)}, tmp_path, keep_last=1)
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["ckpt-000000006.pt"]
    best = torch.load(tmp_path / "checkpoints" / ckpt.BEST, weights_only=True)
    assert best["global_step"] == 3 and torch.equal(best["x"], torch.ones(2))


def test_outputs_respect_the_umask(data, tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert run_cli(*cli_args(data, run, **{**COMMON, "max_epochs": 1})).returncode == 0
    finally:
        os.umask(old)
    for p in (run / "model.safetensors", run / "metrics.jsonl", run / "config.json", ckpt.latest(run),
              run / "checkpoints" / ckpt.BEST):
        assert p.stat().st_mode & 0o777 == 0o644, p
