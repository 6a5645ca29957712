"""3-D occlusion: ``cnn.occlusion`` vs MONAI's ``OcclusionSensitivity`` on the zoo 3-D CNN
(``volume_cnn3d``), one 1×1×32³ ``volume_lesions`` volume, side by side.

Both on the same windows: 8³ boxes with stride 4 (343 windows), occluded by 0.0, logits (no
activation). MONAI is run where its definition coincides with ours: ``mode=0.0``, ``overlap =
1 - stride / window = 0.5``, ``activate=False``; its map is ``logit - ours`` (checked here).
MONAI runs at its default ``n_batch=16``; the "limit" is the 343 occluded forward passes alone,
batched as ours, on prebuilt inputs.

Measured here (2 shared cores, load average 6-12, medians of 3): with 6 volumes per pass (the
2-D pixel budget) ours took 32.1 s, MONAI 7.5 s, the forwards alone 25.0 s. With the voxel
budget (48 volumes of 32³ per pass) three runs gave MONAI / ours = 0.86x (5.4 s vs 4.6 s),
2.06x (2.6 s vs 5.3 s) and 2.25x (2.5 s vs 5.6 s): the gain is batching (MONAI's default is 16
per pass) and the load swings the numbers; both compute every occluded forward. A reliable,
exact 2x needs incremental inference in 3-D (the incremental engine of ``cnn.occlusion``
handles 2-D images; volumes fall back to plain forwards, ``extras["engine"]`` says so).

Later (load average ~20, one torch thread): the occluded inputs are broadcast from the one volume
and the drops spread back by a transposed convolution instead of 45 MB of float window masks;
ours then spends 0.74 of 0.85 s in the forwards (profile). Eight alternating pairs in one process
gave MONAI / ours = 0.79-1.09 (median 1.01): at one thread both sit at the forward floor, so the
2x target is not met. Where it could come from, per stage of the 3-D CNN for 48 volumes: stage1
(Conv3d 1->8, stride 2 at 32³) 38 ms, stage2 2 ms, stage3 17 ms, stage4 33 ms of ~100 ms. Exact
incremental inference would recompute about 3% of stage1, 10% of stage2, 40% of stage3 and all of
stage4 for an 8³ window (the cone covers stage4's 8³ map), a ceiling of ~2.2x on this model.
"""

import pytest
import torch
from xaibench.adapters.cnn.occlusion import auto_volume_batch_size, window_masks_nd

import xaibench
from xaibench import zoo

monai_vis = pytest.importorskip("monai.visualize")

WINDOW, STRIDE = 8, 4
GROUP = "occlusion 3-D volume_cnn3d 1x1x32^3 w8 s4"


@pytest.fixture(scope="module")
def setup():
    model = zoo.load("volume_cnn3d")
    batch = xaibench.create_dataset("volume_lesions", n=1, batch_size=1, seed=3).all()
    return model, batch.inputs, int(batch.targets[0])


def test_occlusion3d_xaibench(benchmark, setup):
    model, x, t = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "xaibench"
    ex = xaibench.create_explainer("cnn.occlusion", model, window=WINDOW, stride=STRIDE, baseline=0.0)
    out = benchmark.pedantic(ex.explain, args=(x, t), rounds=3, warmup_rounds=1)
    assert out.kind == "voxel" and out.extras["n_windows"] == 343


def test_occlusion3d_monai(benchmark, setup):
    model, x, t = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "anchor"
    occ = monai_vis.OcclusionSensitivity(nn_module=model, mask_size=WINDOW, n_batch=16, mode=0.0,
                                         overlap=1 - STRIDE / WINDOW, activate=False, verbose=False)
    occ_map, _ = benchmark.pedantic(occ, args=(x,), rounds=3, warmup_rounds=1)
    ours = xaibench.create_explainer("cnn.occlusion", model, window=WINDOW, stride=STRIDE).explain(x, t).values[0]
    with torch.no_grad():
        logit = model(x)[0, t]
    torch.testing.assert_close(ours, logit - occ_map[0, t].as_tensor(), atol=2e-5, rtol=1e-4)  # exact


def test_occlusion3d_forwards_only(benchmark, setup):
    model, x, _ = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "limit"
    masks = window_masks_nd((32, 32, 32), (WINDOW,) * 3, (STRIDE,) * 3)
    occluded = torch.where(masks[:, None], torch.zeros(()), x)  # prebuilt: (343, 1, 32, 32, 32)
    bs = auto_volume_batch_size(32, 32, 32)  # as cnn.occlusion batches volumes by default

    def forwards():
        with torch.no_grad():
            for s in range(0, len(occluded), bs):
                model(occluded[s:s + bs])

    benchmark.pedantic(forwards, rounds=3, warmup_rounds=1)
