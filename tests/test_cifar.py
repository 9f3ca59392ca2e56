"""The cifar10:PATH loader (data/sources.py) on small files written here in the CIFAR python format."""
import pickle

import numpy as np
import pytest

import distbo
from distbo.data.sources import check_spec, load_source


def write_cifar(folder, batches=(1, 2), rows=12, test=True):
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in batches] + (["test_batch"] if test else [])
    written = {}
    for name in names:
        data = gen.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = [int(v) for v in gen.integers(0, 10, rows)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, fh)
        written[name] = (data, labels)
    return written


def test_reads_the_batches_present(tmp_path):
    written = write_cifar(tmp_path / "c")
    src = load_source(f"cifar10:{tmp_path / 'c'}")
    assert src.shape == (3, 32, 32) and src.inputs.shape == (24, 3072) and src.test_inputs.shape == (12, 3072)
    np.testing.assert_allclose(src.inputs[12:], written["data_batch_2"][0] / 255.0, rtol=1e-6)
    assert src.labels.tolist() == written["data_batch_1"][1] + written["data_batch_2"][1]
    assert src.test_labels.tolist() == written["test_batch"][1]


def test_bad_folders_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        check_spec(f"cifar10:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no data_batch_1..5"):
        check_spec(f"cifar10:{tmp_path / 'empty'}")
    (tmp_path / "evil").mkdir()
    with open(tmp_path / "evil" / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": distbo.Problem}, fh)  # a class reference: refused, never imported
    with pytest.raises(distbo.ConfigError, match="not a CIFAR-10 python batch"):
        load_source(f"cifar10:{tmp_path / 'evil'}")


def test_cnn_hyperrep_runs_on_cifar_files(tmp_path):
    write_cifar(tmp_path / "c", batches=(1, 2, 3), rows=20)
    r = distbo.run({"name": "hyperrep", "model": "cnn", "channels": [2], "dataset": f"cifar10:{tmp_path / 'c'}",
                    "batch_size": 4}, algorithm="soba", workers=2, rounds=2, eval_every=2)
    info = r.config["task_info"]
    assert info["image"] == [3, 32, 32] and info["d_x"] == 3 * 2 * 9 + 2 and info["test_size"] == 20
