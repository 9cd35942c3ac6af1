"""fusionkit.lab.machine's load check: a benchmark warns when other jobs keep the machine busy (the
1-minute load average above half the cores) and the cores busy right now agree) and records the load at
both ends with the processes and threads it used. os.getloadavg, os.cpu_count and the sample of busy cores
are patched: no real load is needed, except in the sample's own test."""
from __future__ import annotations

import threading
import time
import warnings

import pytest

from fusionkit.lab import machine


@pytest.fixture
def fake_machine(monkeypatch):
    """A 4-core machine whose load average the test sets; its cores busy now agree with the 1-minute
    average unless the test sets ``now``. ``sampled`` counts the samples taken."""
    state = {"load": (0.0, 0.0, 0.0), "now": None, "sampled": 0}

    def busy_now():
        state["sampled"] += 1
        return state["load"][0] if state["now"] is None else state["now"]

    monkeypatch.setattr(machine.os, "getloadavg", lambda: state["load"])
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(machine, "busy_cores_now", busy_now)
    return state


def test_idle_machine_gives_no_warning(fake_machine):
    fake_machine["load"] = (1.9, 3.0, 5.0)  # only the 1-minute average counts: 1.9 <= 0.5 x 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = machine.check_load("bench")
    assert report == {"load_average": [1.9, 3.0, 5.0], "others_load": 1.9, "busy_cores_now": None, "cpu_count": 4,
                      "busy_threshold": 2.0, "busy": False}
    assert fake_machine["sampled"] == 0  # an idle load average needs no sample


def test_busy_machine_warns_naming_the_benchmark_and_the_load(fake_machine):
    fake_machine["load"] = (2.5, 1.0, 1.0)
    with pytest.warns(machine.MachineBusyWarning, match=r"flow_tvl1: the machine is busy \(1-minute load average "
                                                         r"2\.50, above 0\.5 x 4 cores = 2\)"):
        report = machine.check_load("flow_tvl1")
    assert report["busy"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert machine.check_load("flow_tvl1", warn=False)["busy"] is True  # recorded, not warned


def test_own_load_is_not_counted_as_other_jobs(fake_machine):
    fake_machine["load"] = (3.5, 1.0, 1.0)  # the measurement's own 2 processes x 1 thread, and 1.5 of others
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = machine.check_load("bench", own_load=2)
    assert (report["others_load"], report["busy"]) == (1.5, False)
    fake_machine["load"] = (4.5, 1.0, 1.0)
    with pytest.warns(machine.MachineBusyWarning, match="load average 4.50, about 2 of it this measurement's own, above"):
        assert machine.check_load("bench", own_load=2)["busy"] is True


def test_conditions_record_processes_threads_and_both_ends(fake_machine):
    fake_machine["load"] = (0.2, 0.1, 0.1)
    conditions = machine.measurement_conditions("cma_attention", processes=2, threads_per_process=1)
    assert (conditions["processes"], conditions["threads_per_process"]) == (2, 1)
    assert conditions["start"]["load_average"] == [0.2, 0.1, 0.1] and not conditions["start"]["busy"]
    fake_machine["load"] = (2.4, 1.0, 0.5)  # 2 of it the benchmark's own processes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = machine.finish_conditions(conditions)
    assert done["end"]["load_average"] == [2.4, 1.0, 0.5] and done["end"]["others_load"] == 0.4
    assert done["busy"] is False and "end" not in conditions  # a new dict
    fake_machine["load"] = (5.0, 1.0, 0.5)
    with pytest.warns(machine.MachineBusyWarning):
        assert machine.finish_conditions(conditions)["busy"] is True


def test_default_threads_are_torchs(fake_machine):
    import torch

    assert machine.measurement_conditions("x")["threads_per_process"] == torch.get_num_threads()


def test_a_lagging_load_average_with_idle_cores_is_not_busy(fake_machine):
    fake_machine.update(load=(2.5, 1.0, 1.0), now=0.1)  # a job that just ended: the average still counts it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert machine.check_load("make run")["busy"] is False
    fake_machine["now"] = 3.2  # still running
    with pytest.warns(machine.MachineBusyWarning, match=r"load average 2\.50, above 0\.5 x 4 cores = 2\) with 3\.20 cores busy now:"):
        assert machine.check_load("make run")["busy"] is True


def test_a_spinning_thread_shows_in_the_sample():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.1)
        busy = machine.busy_cores_now(interval=1.0)
    finally:
        stop.set()
        spinner.join()
    assert busy >= 0.5  # one core spun (other jobs only add to it)
