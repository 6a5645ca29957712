"""A zoo training killed mid-way resumes from its checkpoint (safetensors + JSON, never a pickle) and ends
with the same weights as the uninterrupted run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.adapters.fcm.train import classify_loss, fit


def _entry():
    e = zoo.get_entry("fcm_reluformer")
    return dataclasses.replace(e, extra={**e.extra, "steps": 130, "batch_size": 1, "n_events": 64, "lr": 3e-3})


def _model():
    torch.manual_seed(0)
    params = {**_entry().model_params, "d_model": 8, "n_heads": 2, "n_layers": 1}  # the zoo model, narrower
    return xaibench.create_model(_entry().model, **params)


class Killed(Exception):
    pass


def test_resumed_fit_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    entry, loss = _entry(), classify_loss(3.0)
    ref = _model()
    fit(ref, entry, 0, loss, "ref")
    ckpt = tmp_path / "ck.safetensors"
    monkeypatch.setenv("XAIBENCH_ZOO_CHECKPOINT", str(ckpt))
    calls = [0]

    def dies_at_step_115(model, batch):
        calls[0] += 1
        if calls[0] == 116:
            raise Killed
        return loss(model, batch)

    first = _model()
    with pytest.raises(Killed):
        fit(first, entry, 0, dies_at_step_115, "killed")
    assert ckpt.exists() and not ckpt.read_bytes().startswith((b"PK", b"\x80"))  # step 100, no pickle
    resumed = _model()
    fit(resumed, entry, 0, loss, "resumed")
    for (n, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
