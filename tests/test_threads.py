"""The CPU threads: picked from the CPUs other processes leave free, lowered while they compete and raised again
with hysteresis; OMP_NUM_THREADS or an explicit number fixes them. Simulated loads only, no timings."""

import pytest
import torch

from captioning.internals import threads
from captioning.internals.errors import KitError
from captioning.internals.threads import Governor, Load, Policy, Sample, State, decide, load_between


class FakeMachine:
    """Counters of a machine with ``cpus`` CPUs on which this process wants ``busy_own`` CPUs and the others
    ``busy_others`` (settable between ticks), optionally with a run-queue wait share."""

    def __init__(self, cpus=2):
        self.cpus, self.t, self.total, self.idle, self.own, self.waited = cpus, 0.0, 0.0, 0.0, 0.0, 0.0
        self.busy_own, self.busy_others, self.waiting = 0.0, 0.0, 0.0

    def advance(self, seconds):
        # the scheduler's fair share: when the demand exceeds the CPUs, each side gets its proportion
        scale = min(1.0, self.cpus / max(self.busy_own + self.busy_others, 1e-9))
        own, others = self.busy_own * scale * seconds, self.busy_others * scale * seconds
        self.t += seconds
        self.total += self.cpus * seconds
        self.idle += self.cpus * seconds - own - others
        self.own += own
        self.waited += own * self.waiting / (1 - self.waiting) if self.waiting < 1 else 0.0

    def sample(self):
        return Sample(wall=self.t, total=self.total, idle=self.idle, own=self.own, waited=self.waited)


def run_governor(machine, phases, threads=2, usable=2, interval=0.5):
    """Tick a governor through ``phases`` of (seconds, busy_others, waiting); returns the threads after each
    phase and the threads applied, in order."""
    applied = []
    gov = Governor(
        threads,
        usable=usable,
        machine=machine.cpus,
        sampler=machine.sample,
        clock=lambda: machine.t,
        apply=applied.append,
        interval=interval,
    )
    after = []
    for seconds, others, waiting in phases:
        machine.busy_others, machine.waiting = others, waiting
        for _ in range(int(seconds / interval)):
            machine.busy_own = gov.threads
            machine.advance(interval)
            gov.tick()
        after.append(gov.threads)
    return after, applied, gov


def test_idle_two_cores_keep_two_threads():
    after, applied, _ = run_governor(FakeMachine(2), [(10, 0.0, 0.0)])
    assert after == [2] and applied == []


def test_two_busy_competitors_bring_it_down_to_one_thread_and_keep_it_there():
    # two other processes with a thread each: they get one of the two CPUs beside our two threads, then 4/3
    after, applied, gov = run_governor(FakeMachine(2), [(0.5, 2.0, 0.0), (10, 2.0, 0.0)])
    assert after == [1, 1] and applied == [1]
    assert gov.history[-1][1] == 1 and "other processes used" in gov.history[-1][2]


def test_load_that_comes_and_goes_lowers_at_once_and_raises_only_after_a_quiet_spell():
    machine = FakeMachine(2)
    after, applied, _ = run_governor(
        machine, [(2, 0.0, 0.0), (0.5, 1.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0), (3.0, 0.0, 0.0)]
    )
    # idle: 2; a competitor: 1 at the first sample; still there: 1; gone for 2 samples: not yet up (hysteresis);
    # gone for longer: 2 again
    assert after == [2, 1, 1, 1, 2]
    assert applied == [1, 2]


def test_each_lowering_makes_the_next_raise_wait_longer():
    policy = Policy(up_after=3)
    busy = Load(others=1.0, machine=2)
    quiet = Load(others=0.0, machine=2)
    t, state, _ = decide(2, busy, 2, State(), policy)
    assert (t, state.lowered) == (1, 1)
    for i in range(5):  # 3 * 2**1 = 6 quiet samples are needed after one lowering
        t, state, _ = decide(t, quiet, 2, state, policy)
        assert t == 1, i
    t, state, why = decide(t, quiet, 2, state, policy)
    assert t == 2 and "free for 6 samples" in why
    t, state, _ = decide(t, busy, 2, state, policy)
    assert (t, state.lowered) == (1, 2)  # the next raise needs 12
    assert policy.up_after * min(2**10, policy.max_backoff) == 24  # and never more than up_after * max_backoff


def test_between_the_thresholds_the_threads_stay():
    # 2 threads, others using 0.4 CPU: 1.6 free is not below 2 - 0.5; 1 thread with 1.5 free: not 1 + 0.75 spare
    assert decide(2, Load(others=0.4, machine=2), 2)[0] == 2
    t, state, _ = decide(1, Load(others=0.5, machine=2), 2, State(spare_streak=5))
    assert t == 1 and state.spare_streak == 0  # a sample without a spare CPU breaks the streak


def test_waiting_for_a_cpu_lowers_the_threads_even_when_the_machine_counters_do_not_show_others():
    # e.g. a container whose /proc/stat is not its own CPUs: the run-queue waits still say the threads do not fit
    t, _, why = decide(4, Load(others=0.0, machine=64, waiting=0.6), 4)
    assert t == 2 and "waited 60%" in why
    assert decide(1, Load(others=0.0, machine=64, waiting=0.9), 4)[0] == 1  # never below one
    # and no raise while the one thread waits
    state = State()
    for _ in range(10):
        t, state, _ = decide(1, Load(others=0.0, machine=2, waiting=0.2), 2, state)
    assert t == 1


def test_more_cpus_raise_by_the_spare_ones_at_most_the_usable():
    state = State(spare_streak=2)
    assert decide(1, Load(others=0.0, machine=8), 8, state)[0] == 8
    assert decide(1, Load(others=5.0, machine=8), 4, state)[0] == 3
    assert decide(6, Load(others=6.0, machine=8), 8)[0] == 2


def test_nothing_measured_changes_nothing():
    assert decide(2, None, 2, State(3, 1)) == (2, State(3, 1), "")


def test_load_between_two_samples():
    a = Sample(wall=0, total=100, idle=50, own=10, waited=1.0)
    b = Sample(wall=1, total=102, idle=50.5, own=10.5, waited=1.5)  # 2 CPU-s: 0.5 idle, 0.5 ours, 1 others'
    load = load_between(a, b, 2)
    assert load.others == pytest.approx(1.0) and load.free == pytest.approx(1.0)
    assert load.waiting == pytest.approx(0.5) and load.seconds == 1
    assert load_between(a, a, 2) is None and load_between(None, b, 2) is None
    no_wait = load_between(Sample(0, 100, 50, 10), Sample(1, 102, 51, 10.5), 2)
    assert no_wait.waiting is None and no_wait.others == pytest.approx(0.5)


def test_initial_threads_are_the_free_cpus_rounded():
    assert threads.initial_threads(0.1, 4) == 1  # a busy machine: one thread, never zero
    assert threads.initial_threads(1.6, 4) == 2
    assert threads.initial_threads(7.5, 4) == 4  # never more than this process may use
    assert threads.initial_threads(None, 4) == 4


def test_the_idle_cpus_pick_the_threads(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    assert threads.choose_threads({}, idle=0.1)[0] == 1
    assert threads.choose_threads({}, idle=3.9)[0] == 4
    assert threads.choose_threads({"OMP_NUM_THREADS": "3"}, idle=0.1) == (None, "OMP_NUM_THREADS is set")


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_omp_num_threads_says_what_to_do(value):
    with pytest.raises(KitError, match=rf"OMP_NUM_THREADS='{value}' is not a whole number of threads >= 1: set"):
        threads.env_threads({"OMP_NUM_THREADS": value})
    with pytest.raises(KitError, match="OMP_NUM_THREADS"):
        threads.auto(environ={"OMP_NUM_THREADS": value})


def test_omp_num_threads_values():
    assert threads.env_threads({}) is None and threads.env_threads({"OMP_NUM_THREADS": " "}) is None
    assert threads.env_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert threads.env_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's nested list: the outer level


def test_a_bad_wait_policy_says_what_to_do():
    assert threads.check_wait_policy({"OMP_WAIT_POLICY": "passive"}) == "PASSIVE"
    assert threads.check_wait_policy({}) is None
    with pytest.raises(KitError, match=r"OMP_WAIT_POLICY='sleepy' is neither ACTIVE nor PASSIVE"):
        threads.check_wait_policy({"OMP_WAIT_POLICY": "sleepy"})


def test_free_cpus_is_measured_from_proc_stat():
    free = threads.free_cpus(0.05)  # no start(): measured over 0.05 s
    assert free is None or 0 <= free <= threads.machine_cpus() + 1e-6


def test_read_sample_counts_this_process():
    a = threads.read_sample()
    if a is None:
        pytest.skip("no /proc/stat on this system")
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = threads.read_sample()
    assert b.own > a.own and b.total >= a.total and b.wall > a.wall
    assert a.waited is None or b.waited >= 0


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._GOVERNOR = None


def test_an_explicit_number_wins_and_stops_adapting(torch_threads, monkeypatch):
    import captioning.notebooks as nb

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "free_cpus", lambda **kw: 2.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    nb.setup(threads=None)  # the notebooks' default: picked and adapted
    assert threads.governor() is not None and torch.get_num_threads() == 2
    assert nb.setup(threads=1)["threads"] == 1
    assert threads.governor() is None and torch.get_num_threads() == 1
    threads.adapt()  # no governor: nothing happens
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb.setup(threads=None)  # the environment fixes them too
    assert threads.governor() is None and torch.get_num_threads() == 1


def test_the_notebooks_threads_parameter_may_be_none_or_a_number():
    import captioning.notebooks as nb

    nb.check_parameters({"threads": None})
    nb.check_parameters({"threads": 2})
    with pytest.raises(KitError, match="parameter threads = 'two' is not allowed"):
        nb.check_parameters({"threads": "two"})


def test_set_threads_sets_torch_says_so_when_it_uses_fewer_and_adapts(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "idle_cpus", lambda: 0.2)
    lines = []
    assert threads.set_threads(note=lines.append) == 1
    assert torch.get_num_threads() == 1 and threads.governor() is not None
    assert lines == ["note: 0.2 of 2 CPUs idle at start: using 1 CPU thread (OMP_NUM_THREADS=N to choose)"]
    monkeypatch.setattr(threads, "idle_cpus", lambda: 2.0)
    lines.clear()
    assert threads.set_threads(note=lines.append) == 2 and lines == []


def test_the_governor_sets_torch_threads(torch_threads):
    machine = FakeMachine(2)
    machine.busy_others = 1.5
    gov = Governor(2, usable=2, machine=2, sampler=machine.sample, clock=lambda: machine.t, interval=0.5)
    threads._GOVERNOR = gov
    torch.set_num_threads(2)
    machine.busy_own = 2
    machine.advance(0.6)
    threads.adapt()
    assert gov.threads == 1 and torch.get_num_threads() == 1


def test_a_short_spin_is_preferred_before_torch_loads_and_the_environment_wins():
    env = {}
    assert threads.prefer_short_spin(env, modules={}) and env == {"GOMP_SPINCOUNT": "10000"}
    for given in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(given)
        assert threads.prefer_short_spin(env, modules={}) and env == given
    env = {}
    assert not threads.prefer_short_spin(env, modules={"torch": torch}) and env == {}  # too late: unchanged


def test_the_command_line_adapts_only_while_its_command_runs(torch_threads, monkeypatch):
    from captioning import cli

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    args = type("Args", (), {"command": "test", "func": staticmethod(lambda a: seen.append(threads.governor()))})()
    assert cli.run_command(args) == 0
    assert seen[0] is not None and threads.governor() is None
