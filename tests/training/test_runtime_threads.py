"""How many CPU threads a training stage may use."""
from __future__ import annotations

import os

import torch

from training.runtime import set_cpu_threads, usable_cpus


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "absent") == affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path / "cpu.max") == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")       # a container limited to 1.5 CPUs
    assert usable_cpus(tmp_path / "cpu.max") == min(1, affinity)
    (tmp_path / "cpu.max").write_text("50000 100000\n")        # half a CPU still gets one thread
    assert usable_cpus(tmp_path / "cpu.max") == 1


def test_a_stage_uses_the_threads_it_is_given_or_the_usable_cpus():
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_cpu_threads(0) == usable_cpus() and torch.get_num_threads() == usable_cpus()
    finally:
        torch.set_num_threads(before)
