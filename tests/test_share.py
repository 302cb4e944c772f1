"""Threads on a shared CPU (share.py): the arithmetic of free cores, the window of evidence, the switch to turn it
off, and the caller's thread count restored. No test here depends on the machine's load or speed: the samples are
given."""
import torch

from verydeep import share

STAT = """cpu  900 0 300 5000 20 0 10 5 0 0
cpu0 400 0 100 2500 10 0 5 5 0 0
cpu1 500 0 200 2500 10 0 5 0 0 0
cpu7 9999 0 0 0 0 0 0 0 0 0
intr 12345
"""


def test_ticks_of_the_cpus_in_the_mask():
    # user + nice + system + irq + softirq + steal are busy; idle and iowait are not; cpus outside the mask ignored
    assert share.cpu_ticks({0, 1}, STAT) == (510 + 705, 3020 + 3215)
    assert share.cpu_ticks({0}, STAT) == (510, 3020)
    assert share.cpu_ticks({3}, STAT) is None


def test_free_cores():
    assert share.free_cores(2, busy_s=1.5, own_s=0.5, wall_s=1.0) == 1.0   # another process took one core
    assert share.free_cores(2, busy_s=0.5, own_s=0.5, wall_s=1.0) == 2.0   # only this process ran
    assert share.free_cores(2, busy_s=0.2, own_s=0.5, wall_s=1.0) == 2.0   # counters' rounding: never above cpus
    assert share.free_cores(2, busy_s=6.0, own_s=0.0, wall_s=1.0) == 0.0   # never below 0


def fake(samples, cpus=2):
    s = share.CoreShare(enabled=True)
    s.cpus, s.hz = set(range(cpus)), 100
    it = iter(samples)
    s._sample = lambda: next(it)
    return s


def test_thread_count_follows_the_evidence_of_a_window():
    # (time, busy ticks of the cpus, this process's CPU seconds)
    s = fake([(0.0, 0, 0.0),        # no evidence yet: what the caller wants
              (0.6, 110, 0.5),      # 1.1 s busy, 0.5 ours, over 0.6 s: another process held one core
              (0.7, 120, 0.6),      # under WINDOW since the last verdict: it stands
              (1.3, 240, 1.8),      # 1.2 s busy, all ours: both cores free again
              ])
    assert [s.threads(2) for _ in range(4)] == [2, 1, 1, 2]
    assert s.threads(1) == 1  # one thread wanted: nothing to decide (no sample taken)


def test_off_and_no_proc_stat_leave_the_count_alone(monkeypatch):
    monkeypatch.setenv("VERYDEEP_SHARE", "off")
    assert not share.CoreShare().enabled and share.CoreShare().threads(4) == 4
    s = fake([None])
    assert s.threads(2) == 2 and not s.enabled


def fixed(free):
    s = share.CoreShare(enabled=False)
    s.threads = lambda want: min(want, free)
    return s


def test_plan_streams_on_a_shared_cpu(monkeypatch):
    monkeypatch.setattr(share, "SHARE", fixed(1))  # one of two cores busy elsewhere
    assert share.plan(2, 8) == (2, 2)     # a batch that splits: two one-thread streams, no barrier between them
    assert share.plan(2, 3) == (1, 1)     # one that does not: one thread
    assert share.plan(2, 1) == (1, 1)
    monkeypatch.setattr(share, "SHARE", fixed(2))  # quiet: as asked (fast.STREAMS)
    assert share.plan(2, 8) == (2, 1) and share.plan(2, 8, streams=2) == (2, 2) and share.plan(2, 3, 2) == (2, 1)


def test_shared_threads_restores_the_callers_count(monkeypatch):
    monkeypatch.setattr(share, "SHARE", fake([(0.0, 0, 0.0), (1.0, 200, 0.0), (2.0, 400, 0.0)]))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with share.shared_threads() as k:  # first look: no evidence
            assert k == 1 and torch.get_num_threads() == 2
        with share.shared_threads() as k:  # two cores busy elsewhere for a second: one thread, not none
            assert k == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with share.shared_threads(batch=4) as k:  # a batch that splits: two streams, the count left for them
            assert k == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
