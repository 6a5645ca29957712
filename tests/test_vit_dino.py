"""DINO pre-training pieces: multi-crop, the EMA teacher, centering, the distillation loss
(against torch's soft-target cross-entropy), a falling loss on a tiny model, and an encoder
that fits the zoo classifier."""

import copy

import pytest
import torch
import torch.nn.functional as F

import xaibench
from xaibench.adapters.vit.pretrain import DINO, knn_accuracy, random_resized_crops


def tiny_dino(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0,
                            num_classes=0, dynamic_img_size=True)
    return DINO(vit, out_dim=32, **kw)


def test_multi_crop_shapes_seeding_and_content():
    x = torch.rand(3, 3, 16, 16)
    a = random_resized_crops(x, 2, 16, (0.4, 1.0), torch.Generator().manual_seed(1))
    b = random_resized_crops(x, 2, 16, (0.4, 1.0), torch.Generator().manual_seed(1))
    assert len(a) == 2 and a[0].shape == (3, 3, 16, 16)
    torch.testing.assert_close(a[1], b[1])
    loc = random_resized_crops(x[:1].expand(4, -1, -1, -1), 1, 8, (0.1, 0.4), torch.Generator().manual_seed(2))[0]
    assert loc.shape == (4, 3, 8, 8) and not torch.allclose(loc[0], loc[1])  # each sample its own crop
    # without jitter a crop only resamples the image: a constant image stays that constant
    const = torch.full((2, 3, 16, 16), 0.3)
    c = random_resized_crops(const, 3, 8, (0.1, 0.4), torch.Generator().manual_seed(0), jitter=0.0)
    assert all(torch.allclose(t, const[:, :, :8, :8]) for t in c)
    assert all(0 <= float(t.min()) and float(t.max()) <= 1 for t in a + [loc])


def test_rotated_crops_turn_the_view_about_its_centre():
    """``rotate``: a full-image crop of a bar turned by a random angle is the bar at that angle
    (a rotation of the sampling grid), and off leaves the crops exactly as without the option."""
    x = torch.zeros(1, 1, 33, 33)
    x[..., 14:19, 4:29] = 1.0  # a horizontal bar through the centre
    kw = {"jitter": 0.0, "flip": False}
    off = random_resized_crops(x, 2, 16, (0.3, 0.9), torch.Generator().manual_seed(5), rotate=False)
    ref = random_resized_crops(x, 2, 16, (0.3, 0.9), torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(off, ref))
    yy, xx = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")

    def axis_angles(rotate: bool) -> torch.Tensor:  # the bar's long axis in each full-image view
        views = random_resized_crops(x.expand(64, -1, -1, -1), 1, 33, (1.0, 1.0), torch.Generator().manual_seed(6),
                                     rotate=rotate, **kw)[0][:, 0]
        w = views / views.sum((1, 2), keepdim=True)
        cxx, cyy, cxy = (w * xx * xx).sum((1, 2)), (w * yy * yy).sum((1, 2)), (w * xx * yy).sum((1, 2))
        return 0.5 * torch.atan2(2 * cxy, cxx - cyy)

    assert float(axis_angles(False).abs().max()) < 1e-3  # unrotated views keep the bar horizontal
    angle = axis_angles(True)
    assert float(angle.std()) > 0.5 and len(set((angle * 4 / torch.pi).round().tolist())) >= 4


def test_teacher_is_an_ema_of_the_student():
    m = tiny_dino()
    t0 = copy.deepcopy(m.encoder.state_dict())
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p))
    s = m.student.state_dict()
    m.update_teacher(0.9)
    for k, v in m.encoder.state_dict().items():
        torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * s[k])
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert not any(p.requires_grad for p in m.teacher_head.parameters())


def test_centering_is_a_running_mean_of_the_teacher_outputs():
    m = tiny_dino(center_momentum=0.8).train()
    m.center.fill_(0.5)
    x = torch.rand(4, 3, 16, 16)
    g = torch.Generator().manual_seed(3)
    glob, _ = m.crops(x, torch.Generator().manual_seed(3))  # the crops forward() will draw
    with torch.no_grad():
        t = torch.cat([m.teacher_head(m.encoder(c)) for c in glob])
    m(x, g)
    torch.testing.assert_close(m.center, 0.8 * 0.5 + 0.2 * t.mean(0, keepdim=True))


def test_distillation_loss_is_soft_cross_entropy_over_other_crops():
    m = tiny_dino()
    m.center.normal_()
    torch.manual_seed(1)
    student = [torch.randn(5, 32) for _ in range(4)]
    teacher = [torch.randn(5, 32) for _ in range(2)]
    # independent reference: torch's cross-entropy with probability targets, pairs i ≠ j
    ref = []
    for i, t in enumerate(teacher):
        q = F.softmax((t - m.center) / 0.04, -1)
        ref += [F.cross_entropy(s / 0.1, q) for j, s in enumerate(student) if j != i]
    torch.testing.assert_close(m.distillation_loss(student, teacher), torch.stack(ref).mean())
    # sharpening: the teacher's target is more peaked than the student's softmax at the same logits
    q = F.softmax(teacher[0] / 0.04, -1)
    p = F.softmax(teacher[0] / 0.1, -1)
    assert (q.max(-1).values > p.max(-1).values).all()


def test_student_loss_falls_over_a_few_steps_on_a_tiny_model():
    # teacher and centre held fixed (momenta 1), the same crops every step: the student must
    # move towards the teacher's targets. (With both moving, the loss on one batch first falls,
    # then rises while the centre catches up with the teacher: targets are a moving goal.)
    m = tiny_dino(center_momentum=1.0).train()
    x = torch.rand(8, 3, 16, 16)
    opt = torch.optim.AdamW([p for n, p in m.named_parameters() if n.startswith("student")], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = m(x, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_teacher(1.0)
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses


def test_dino_encoder_fits_the_zoo_classifier_and_knn_runs():
    torch.manual_seed(0)
    dino = xaibench.create_model("vit.dino")
    x = torch.rand(2, 3, 64, 64)
    glob, loc = dino.crops(x, torch.Generator().manual_seed(0))
    assert [c.shape[-1] for c in glob + loc] == [64, 64, 32, 32, 32, 32]
    loss = dino(x, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    clf = xaibench.create_model("vit.small", num_classes=2)
    missing, unexpected = clf.load_state_dict(dino.encoder.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    b = xaibench.create_dataset("shape_classes", n=16, batch_size=16, seed=0).all()
    acc = knn_accuracy(dino.encoder, b, b, k=1)
    assert acc == 1.0  # each sample is its own nearest neighbour


def _dino_card() -> dict:
    from xaibench import zoo
    return zoo.get_entry("vit_pre_dino").card()


def test_committed_dino_teacher_targets_did_not_collapse_to_uniform():
    """The committed vit_pre_dino's teacher targets stayed sharp (the plain tiny-scale recipe went
    to uniform targets, entropy log 256, within 50 steps)."""
    m = _dino_card()["metrics"]
    assert m["teacher_entropy_last_epoch"] < 0.6 * m["uniform_entropy"], m


def test_committed_dino_teacher_separates_held_out_shapes_above_its_floor():
    """The committed vit_pre_dino (the 'dino' init of vit_study) learned features: its teacher
    backbone's k-NN accuracy on held-out shapes (labels never used in training) is at or above
    the floor its card declares, which is clearly above chance, and above the same encoder's
    before pre-training (random features already separate the shapes a little: by size and area)."""
    from xaibench import zoo
    from xaibench.adapters.vit.models import DINO_KNN_FLOOR, data_params, held_out, sample_pool, small_vit
    from xaibench.zoo import card_floor

    entry = zoo.get_entry("vit_pre_dino")
    card = entry.card()
    fl = card_floor(card)
    assert (fl.metric, fl.direction, fl.floor, fl.chance) == ("test_knn_accuracy", "higher", DINO_KNN_FLOOR, 0.25)
    data = data_params(entry)
    assert card["metrics"]["dataset_params"] == data  # measured on the images it pre-trained on
    neighbours, test = sample_pool(entry.dataset, 1024, entry.seed, "val", **data), held_out(entry.dataset, **data)
    dino = zoo.load("vit_pre_dino").eval()
    acc = knn_accuracy(dino.encoder, neighbours, test)
    assert abs(acc - card["metrics"]["test_knn_accuracy"]) < 1e-6, (acc, card["metrics"])  # same sets, same weights
    assert fl.floor >= fl.chance + 0.1 and acc >= fl.floor, fl.text()
    torch.manual_seed(entry.seed)
    before = knn_accuracy(small_vit(num_classes=0).eval(), neighbours, test)
    assert abs(before - card["metrics"]["random_init_knn_accuracy"]) < 1e-6
    assert acc >= before + 0.03, (acc, before)


def test_train_dino_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, capsys):
    from xaibench.adapters.vit.pretrain import train_dino
    from xaibench.types import Batch

    pool = Batch(inputs=torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3)),
                 targets=torch.zeros(8, dtype=torch.long))
    kw = {"epochs": 6, "lr": 1e-3, "seed": 0, "batch_size": 4}  # 12 steps
    ref = tiny_dino()
    train_dino(ref, pool, **kw)

    class Killed(Exception):
        pass

    def dies_after_7(model, step):
        if step == 7:
            raise Killed
        return ""

    ck = str(tmp_path / "dino.safetensors")
    with pytest.raises(Killed):
        train_dino(tiny_dino(), pool, checkpoint=ck, checkpoint_every=5, monitor=dies_after_7, monitor_every=1,
                   **kw)
    with open(ck, "rb") as f:
        assert not f.read(2).startswith((b"PK", b"\x80"))  # no pickle
    resumed = tiny_dino()
    capsys.readouterr()
    train_dino(resumed, pool, checkpoint=ck, checkpoint_every=5, **kw)
    assert "resumed at step 5 of 12" in capsys.readouterr().out  # it did not simply start again
    for (n, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
