import json
import time
from functools import partial

import pytest

from verydeep.jobs import Task, cores, describe, run_tasks


def record(folder, task):
    """A task: write when it started and ended, and the thread count it was given."""
    import torch

    name = task.args[0]
    if name == "bad":
        raise ValueError("the task failed")
    t0 = time.time()
    time.sleep(0.2)
    (folder / f"{name}.json").write_text(json.dumps({"start": t0, "end": time.time(),
                                                     "threads": torch.get_num_threads()}))


def test_tasks_run_after_what_they_need_with_the_cores_shared(tmp_path):
    tasks = {("a", 0): Task("x", ("a",)), ("b", 0): Task("x", ("b",), [("a", 0)]),
             ("c", 0): Task("x", ("c",), [("a", 0), ("done-before", 0)]),
             ("d", 0): Task("x", ("d",), [("b", 0), ("c", 0)])}
    said = []
    run_tasks(tasks, partial(record, tmp_path), 2, tmp_path / "logs", said.append)
    r = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in "abcd"}
    assert r["b"]["start"] >= r["a"]["end"] and r["c"]["start"] >= r["a"]["end"]
    assert r["d"]["start"] >= max(r["b"]["end"], r["c"]["end"])
    # a task that can only run alone takes every core; two side by side share them
    assert r["a"]["threads"] == r["d"]["threads"] == cores()
    assert r["b"]["threads"] == r["c"]["threads"] == max(1, cores() // 2)
    assert sum(s.startswith("done") for s in said) == 4 and "done d (seed 0)" in said[-1]
    assert (tmp_path / "logs" / "b-0.log").is_file()


def test_a_failed_task_stops_the_tasks_after_it(tmp_path):
    tasks = {("bad", 0): Task("x", ("bad",)), ("after", 0): Task("x", ("after",), [("bad", 0)])}
    with pytest.raises(ValueError, match="the task failed"):
        run_tasks(tasks, partial(record, tmp_path), 2, tmp_path / "logs", lambda s: None)
    assert not (tmp_path / "after.json").exists()


def test_tasks_that_wait_for_each_other_are_an_error(tmp_path):
    tasks = {("a", 0): Task("x", ("a",), [("b", 0)]), ("b", 0): Task("x", ("b",), [("a", 0)])}
    with pytest.raises(ValueError, match="wait for each other"):
        run_tasks(tasks, partial(record, tmp_path), 2, tmp_path / "logs", lambda s: None)


def say(task):
    """A task that sets up logging as an entry point does (study_task used to), then logs."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("verydeep").warning("record of %s", task.args[0])


def test_each_tasks_log_records_go_to_its_own_log(tmp_path):
    tasks = {(n, 0): Task("x", (n,), [("a", 0)] if n == "b" else []) for n in "ab"}
    run_tasks(tasks, say, 1, tmp_path, lambda s: None)  # one after the other
    for n in "ab":
        text = (tmp_path / f"{n}-0.log").read_text()
        assert f"record of {n}" in text and "Logging error" not in text


def pid_of(folder, task):
    import os
    import signal

    (folder / f"{task.args[0]}.pid").write_text(str(os.getpid()))
    if task.args[0] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a worker


def test_each_task_runs_in_a_fresh_process_and_a_killed_one_is_a_one_line_error(tmp_path):
    from verydeep.errors import UserError

    tasks = {(n, 0): Task("x", (n,), [("a", 0)] if n == "b" else []) for n in "ab"}
    run_tasks(tasks, partial(pid_of, tmp_path), 1, tmp_path / "logs", lambda s: None)
    assert (tmp_path / "a.pid").read_text() != (tmp_path / "b.pid").read_text()  # no task inherits another's peak
    with pytest.raises(UserError, match=r"^killed \(seed 0\): its worker process was killed .* run the same"):
        run_tasks({("killed", 0): Task("x", ("killed",))}, partial(pid_of, tmp_path), 1, tmp_path / "logs",
                  lambda s: None)


def test_describe():
    assert describe(("train", "D", 0)) == "train D (seed 0)"
    assert describe(("evaluate", "A-LRN", 2, "fp32")) == "evaluate A-LRN fp32 (seed 2)"
    assert describe(("localise", "pcr", "all", 1)) == "localise pcr all (seed 1)"


STUDY = """
import os, sys, time
from functools import partial
from pathlib import Path
from verydeep.jobs import Task, run_tasks

def sleeper(folder, task):
    (Path(folder) / f"{os.getpid()}.pid").write_text("")
    time.sleep(60)

if __name__ == "__main__":
    folder = sys.argv[1]
    run_tasks({("a", 0): Task("x", ()), ("b", 0): Task("x", ())}, partial(sleeper, folder), 2, Path(folder) / "logs",
              lambda s: None)
"""


def test_workers_die_with_a_killed_study(tmp_path):
    # SIGKILL skips every clean-up in the parent: the kernel must end its workers (utils.die_with_parent)
    import signal
    import subprocess
    import sys

    script = tmp_path / "study.py"
    script.write_text(STUDY)
    # its stderr to a file: a killed study's semaphore tracker warns about the semaphores it was left holding
    err = open(tmp_path / "stderr", "w")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=err)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        err.close()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.time() + 20
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, workers))
