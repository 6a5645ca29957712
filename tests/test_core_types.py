"""Attribution and Batch: shapes are checked, sub-batches keep every field aligned."""

import dataclasses

import pytest
import torch

from xaibench import Attribution, Batch


def test_attribution_checks_kind_and_shape():
    Attribution(values=torch.zeros(2, 4, 4), kind="pixel", method="m")
    with pytest.raises(ValueError, match="3 dims"):
        Attribution(values=torch.zeros(2, 4), kind="pixel", method="m")
    with pytest.raises(ValueError, match="unknown kind"):
        Attribution(values=torch.zeros(2, 4), kind="hologram", method="m")
    with pytest.raises(ValueError, match="grid"):
        Attribution(values=torch.zeros(2, 4), kind="token", method="m")
    a = Attribution(values=torch.zeros(2, 4), kind="token", method="m", extras={"grid": (2, 2)})
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'kind'"):
        a.kind = "pixel"  # frozen


def test_attribution_select_follows_extras():
    a = Attribution(values=torch.arange(3.0)[:, None, None].expand(3, 2, 2), kind="pixel", method="m",
                    extras={"target": torch.tensor([5, 6, 7]), "note": "x"})
    s = a.select([2, 0])
    assert s.values[:, 0, 0].tolist() == [2.0, 0.0]
    assert s.extras["target"].tolist() == [7, 5] and s.extras["note"] == "x"


def test_batch_validates_and_selects():
    x = torch.arange(4.0)[:, None, None, None].expand(4, 1, 2, 2)
    b = Batch(inputs=x, targets=torch.tensor([0, 1, 0, 1]), masks=torch.zeros(4, 2, 2, dtype=torch.bool),
              boxes=[torch.zeros(1, 4) + i for i in range(4)], ids=list("abcd"), meta={"r": [1, 2, 3, 4], "k": "v"})
    s = b.select([3, 1])
    assert s.inputs[:, 0, 0, 0].tolist() == [3.0, 1.0]
    assert s.targets.tolist() == [1, 1] and s.ids == ["d", "b"]
    assert [float(t[0, 0]) for t in s.boxes] == [3.0, 1.0]
    assert s.meta == {"r": [4, 2], "k": "v"}
    with pytest.raises(ValueError, match="targets"):
        Batch(inputs=x, targets=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="masks"):
        Batch(inputs=x, masks=torch.zeros(4, 2))
    joined = Batch.concat([b.select([0, 1]), b.select([2, 3])])
    assert torch.equal(joined.inputs, b.inputs) and joined.ids == b.ids and joined.meta["r"] == [1, 2, 3, 4]
