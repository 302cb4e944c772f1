"""Data parallelism (PAPER.md section 3.3) under failure: a killed worker among two, with forked loader workers, is
restarted by torchrun and the run ends as if uninterrupted; a peer that never comes is a one-line error after
--dist-timeout; compiled graphs keep the keyed dropout masks (the same masks in every process layout)."""
import os
import socket
import subprocess
import sys

import pytest
import torch

import verydeep as vd
from verydeep.models import set_dropout_keys
from imagegen import pattern_dataset
from test_checkpoint import records
from test_train import assert_same, cli_args, final_weights, run_cli

COMMON = dict(max_epochs=2, deterministic=True, threads=1, checkpoint_steps=1, patience=5, workers=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return pattern_dataset(tmp_path_factory.mktemp("patterns"), per_class=16, val_per_class=4)


def torchrun(data, run, nproc, env=None, restarts=0, **over):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", "-m", "verydeep", "train", *map(str, cli_args(data, run, **over))]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_killed_worker_of_two_is_restarted_and_the_run_ends_as_uninterrupted(data, tmp_path):
    ref = torchrun(data, tmp_path / "ref", 2, **COMMON)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # rank 1 dies at step 4 (mid-epoch 2) while its loader worker, forked after the process group began, lives on
    r = torchrun(data, tmp_path / "run", 2, env={"VERYDEEP_FAULT": "step@4:1"}, restarts=1, **COMMON)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stderr
    assert_same(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"), tol=0)
    # the resumed epoch's training loss sums every process, not rank 0's share restored on every rank
    assert records(tmp_path / "run") == records(tmp_path / "ref")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_peer_that_never_comes_is_a_one_line_error_after_the_timeout(data, tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    r = run_cli(*cli_args(data, tmp_path / "r", dist_timeout=3, workers=0, max_steps=1), env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch.distributed failed while joining the process group" in lines[0]
    assert "--dist-timeout" in lines[0] and "Traceback" not in r.stderr


def test_compiled_graph_keeps_keyed_dropout():
    """Keys and salt are graph inputs: one graph for every step, and its masks are those of the eager module."""
    m = vd.vgg("A", num_classes=3, crop_size=32, width=0.125, fc_width=32, init="glorot").train()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(m, backend=backend)
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for step in range(3):
        set_dropout_keys(m, torch.arange(4) + 10 * step, seed=0, step=step)
        out = compiled(x)
        assert torch.equal(out, m(x))
        outs.append(out)
    assert len(graphs) == 1
    assert not torch.equal(outs[0], outs[1])  # the masks do change with the step
