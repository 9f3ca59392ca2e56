import os
import tempfile

import pytest
import torch

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
torch.set_num_threads(1)


@pytest.fixture
def quad64():
    from distbo.problems.quadratic import Quadratic

    return Quadratic(workers=4, d_x=3, d_y=5, heterogeneity=1.0, dtype=torch.float64, seed=1)
