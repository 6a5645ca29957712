"""The face-study report figures' maps (the default benchmark's faces_cnn study: 6 methods,
6 test faces per syndrome), ours next to the previous implementation, side by side.

Ours (``xaibench.studies.faces.figures``): every method explains the balanced set once, on one
torch thread; the class-level and the patient-wise figure share those maps. The "anchor" is
the previous implementation: ``class_maps`` explaining the correctly classified faces, then
``patient_maps`` explaining the one-face-per-syndrome sub-batch again, at the process's
thread count. Only the maps are timed (the drawing is the same code on both sides); both
sides' maps are checked equal. On a busy 2-core machine the thread count dominates: two
torch threads wait on each other at every small kernel (incremental occlusion of 64² faces
is hundreds of them per face).
"""

import pytest
import torch

from xaibench import zoo
from xaibench.runner import load_config
from xaibench.studies.faces import figures
from xaibench.studies.faces.analyses import class_maps, patient_maps

#: the default benchmark's faces_cnn methods, picked as the report picks them (xaibench/benchmarks/default.toml)
METHODS = figures._methods(next(s for s in load_config("default").record()["studies"] if s["name"] == "faces_cnn"))
GROUP = "faces report maps (default faces_cnn, 30 faces x 6 methods)"


@pytest.fixture(scope="module")
def setup():
    model = zoo.load("face_cnn")
    ds, classes = figures._balanced({"name": "faces"}, 0)
    batch = ds.all()
    idx = [int(torch.nonzero(batch.targets == c)[0]) for c in range(len(classes))]
    return model, batch, classes, idx


def _ours(model, batch, classes, idx):
    with figures._one_thread():
        explained = figures._explain_once(model, batch, METHODS)
        cms = [class_maps(model, [batch], m["name"], m.get("params") or {}, num_classes=len(classes), maps=[e])
               for m, e in zip(METHODS, explained)]
    return [c.maps for c in cms], [e[idx] for e in explained]


def _previous(model, batch, classes, idx):
    cms = [class_maps(model, [batch], m["name"], m.get("params") or {}, num_classes=len(classes)) for m in METHODS]
    pm = patient_maps(model, batch.select(idx), {f"{m['name']}@{i}": m.get("params") or {} for i, m in enumerate(METHODS)})
    return [c.maps for c in cms], [a.pixel_map() for a in pm.values()]


def test_faces_maps_xaibench(benchmark, setup):
    benchmark.group = GROUP
    benchmark.extra_info.update(side="xaibench", threads=1)
    out = benchmark.pedantic(_ours, args=setup, rounds=1, iterations=1)
    ref = _previous(*setup)
    for a, b in zip(out[0] + out[1], ref[0] + ref[1]):
        torch.testing.assert_close(a, b, equal_nan=True, atol=1e-5, rtol=1e-4)


def test_faces_maps_previous(benchmark, setup):
    benchmark.group = GROUP
    benchmark.extra_info.update(side="anchor", threads=torch.get_num_threads(),
                                note="the previous implementation (explains per figure, process thread count)")
    benchmark.pedantic(_previous, args=setup, rounds=1, iterations=1)
