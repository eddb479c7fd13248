"""The CLI's CPU thread default: usable cores minus busy cores, where busy = min(load average, now)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mdlm import console


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.mark.parametrize(
    ("loadavg", "now", "processes", "expected"),
    [
        (0.0, 0.0, 1, 2),  # quiet machine: both cores
        (0.9, 0.0, 1, 2),  # a job that just ended (the quick start's pip install): the load average lags
        (0.0, 1.0, 1, 2),  # a burst that the load average has not seen: not a steady job
        (1.0, 1.0, 1, 1),  # one steady job on the other core
        (3.5, 2.0, 1, 1),  # overloaded: still one thread
        (0.0, 0.0, 2, 1),  # two local ranks share the two cores
        (0.9, None, 1, 1),  # /proc/stat unreadable: the load average alone
    ],
)
def test_default_num_threads(monkeypatch, two_cores, loadavg, now, processes, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (loadavg, loadavg, loadavg))
    monkeypatch.setattr(console, "busy_cores_now", lambda interval_s=0.1: now)
    assert console.default_num_threads(processes) == expected


def test_busy_cores_now_sees_a_busy_process():
    """A process spinning on one core reads as about one busy core (the sampler itself sleeps)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        busy = console.busy_cores_now(interval_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None
    assert 0.7 <= busy <= (os.cpu_count() or 1), busy
