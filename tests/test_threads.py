import torch

import distbo
from distbo.config import check_run
from distbo.problems.quadratic import Quadratic
from distbo.runner import threads_for


def test_thread_policy():
    small = Quadratic(workers=2, d_x=3, d_y=4)
    big = Quadratic.__new__(Quadratic)
    big.d_x, big.d_y = 200_000, 1
    assert threads_for(check_run({}), small, 8) == 1
    assert threads_for(check_run({}), big, 8) == 1  # unset: one thread whatever the model
    assert threads_for(check_run({"threads": 3}), big, 8) == 3


def test_a_run_restores_the_callers_thread_count():
    before = torch.get_num_threads()
    distbo.run("quadratic", "soba", workers=2, rounds=2, threads=before + 1)
    assert torch.get_num_threads() == before
