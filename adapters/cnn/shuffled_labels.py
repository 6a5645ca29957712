"""Zoo CNNs trained on shuffled labels: the data-randomisation references (Adebayo et al. 2018)
of ``lesion_cnn`` and ``face_cnn``, for the ``data_randomisation`` metric."""

from __future__ import annotations

from xaibench.zoo import ZooEntry, register_zoo, train_on_shuffled_labels

from .models import WEIGHTS

for _name, _dataset, _classes, _desc in (
        ("lesion_cnn", "lesions", 2, "bright round vs dark irregular lesions"),
        ("face_cnn", "faces", 5, "5 synthetic syndrome classes")):
    register_zoo(ZooEntry(
        name=f"{_name}_shuffled", model="cnn.small_resnet", model_params={"num_classes": _classes},
        train=train_on_shuffled_labels, weights_dir=WEIGHTS, seed=0, dataset=_dataset,
        description=f"{_name}'s architecture trained on permuted labels ({_desc}): data-randomisation reference",
        extra={"n_train": 256, "epochs": 40, "lr": 3e-3, "batch_size": 32, "shuffled_of": _name},
    ))
