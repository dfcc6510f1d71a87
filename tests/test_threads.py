"""engine/live/threads.py: a live process leaves one core to the rest; the user's OMP_NUM_THREADS wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.live.threads import live_thread_count

PROBE = (
    "import torch; from engine.live.threads import use_live_thread_count; before = torch.get_num_threads(); "
    "restore = use_live_thread_count(); print(before, torch.get_num_threads(), end=' '); restore and restore(); "
    "print(torch.get_num_threads())"
)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_all_cores_but_one_at_least_one(cores, threads):
    assert live_thread_count(cores) == threads


@pytest.mark.parametrize("chosen", ["", "2"])
def test_the_process_default_changes_unless_the_user_chose_a_count(chosen):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if chosen:
        env["OMP_NUM_THREADS"] = chosen
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    before, during, restored = (int(word) for word in done.stdout.split())
    assert (during, restored) == ((before, before) if chosen else (live_thread_count(before), before))
