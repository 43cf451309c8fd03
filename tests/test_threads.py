"""The CLI's CPU threads: the CPUs idle at start, between 1 and the usable CPUs; OMP_NUM_THREADS overrides."""

import torch

from captioning.internals import threads


def test_the_idle_cpus_pick_the_threads(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    assert threads.choose_threads({}, idle=0.1)[0] == 1  # a busy machine: one thread, never zero
    assert threads.choose_threads({}, idle=1.6)[0] == 2
    assert threads.choose_threads({}, idle=3.9)[0] == 4
    assert threads.choose_threads({}, idle=7.5)[0] == 4  # never more than this process may use
    assert threads.choose_threads({"OMP_NUM_THREADS": "3"}, idle=0.1) == (None, "OMP_NUM_THREADS is set")


def test_idle_cpus_is_measured_from_proc_stat():
    idle = threads.idle_cpus(0.05)  # no start(): measured over 0.05 s
    assert idle is None or 0 <= idle <= (__import__("os").cpu_count() or 1) + 1e-6


def test_set_threads_sets_torch_and_says_so_when_it_uses_fewer(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "idle_cpus", lambda: 0.2)
    lines = []
    try:
        assert threads.set_threads(note=lines.append) == 1
        assert torch.get_num_threads() == 1
        assert lines == ["note: 0.2 of 2 CPUs idle at start: using 1 CPU thread (OMP_NUM_THREADS=N to choose)"]
        monkeypatch.setattr(threads, "idle_cpus", lambda: 2.0)
        lines.clear()
        assert threads.set_threads(note=lines.append) == 2 and lines == []
    finally:
        torch.set_num_threads(before)
