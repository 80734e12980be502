"""Folds trained side by side in worker processes (``train-default`` on the CPU) are the folds one
process trains on one thread, bit for bit, and the run then evaluates as any other."""
from __future__ import annotations

import copy

import pytest
import torch

from SinusAnomalyTraining import pipeline
from SinusAnomalyTraining.config import config_from_dict
from SinusAnomalyTraining.engine import load_checkpoint
from conftest import TINY_CONFIG


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(run, fold: int, stage: str) -> dict:
    return load_checkpoint(run / f"fold{fold}" / stage / "best.pt")["model"]


def test_folds_in_worker_processes_are_those_of_one_process(tiny_dataset, tmp_path, one_thread):
    data = copy.deepcopy(TINY_CONFIG)
    data.update(methods=["none"], fractions=[100], folds=[0, 1])
    config = config_from_dict(data)
    pipeline.train_folds_side_by_side(config, tiny_dataset, tmp_path / "side", workers=2)
    for fold in (0, 1):  # both folds trained before the pipeline ran
        assert (tmp_path / "side" / f"fold{fold}" / "finetune" / "none" / "frac100" / "done.json").is_file()
    side = pipeline.run_pipeline(config, tiny_dataset, tmp_path / "side", torch.device("cpu"), progress=False)
    alone = pipeline.run_pipeline(config, tiny_dataset, tmp_path / "alone", torch.device("cpu"), progress=False)
    for fold in (0, 1):
        for stage in ("cae", "finetune/none/frac100"):
            a, b = _weights(tmp_path / "side", fold, stage), _weights(tmp_path / "alone", fold, stage)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (fold, stage)
    assert (tmp_path / "side" / "evaluation" / "report.md").is_file()
    assert side.keys() == alone.keys()
