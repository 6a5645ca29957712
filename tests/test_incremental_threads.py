"""Incremental occlusion of small images runs on one torch thread (issue 13, speed on a busy
machine): the caller's thread count comes back, also when the model falls back to plain
occlusion, and the maps equal the plain engine's (the independent reference: every occluded
image through the whole network)."""

import torch
from torch import nn
from xaibench.adapters.cnn import incremental

import xaibench


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _cnn()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.net(x)
        return self.net(-x)


def test_small_images_use_one_thread_and_restore_the_count():
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    seen = []
    orig = incremental.Plan.logits_for

    def spy(self, patch):
        seen.append(torch.get_num_threads())
        return orig(self, patch)

    incremental.Plan.logits_for = spy
    try:
        inc = xaibench.create_explainer("cnn.occlusion", _cnn(), window=8, stride=4, engine="incremental").explain(x, 1)
    finally:
        incremental.Plan.logits_for = orig
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    plain = xaibench.create_explainer("cnn.occlusion", _cnn(), window=8, stride=4, engine="plain").explain(x, 1)
    assert inc.extras["engine"] == "incremental"
    torch.testing.assert_close(inc.values, plain.values, atol=1e-5, rtol=1e-4)
    fallback = xaibench.create_explainer("cnn.occlusion", _Untraceable(), window=8, stride=4).explain(x, 1)
    assert fallback.extras["engine"].startswith("plain") and torch.get_num_threads() == before
