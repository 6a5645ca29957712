"""Contract-test fixture of the CNN family: the zoo's trained lesion CNN on lesion images.

The committed ``lesion_cnn`` weights are required: a random ResNet gives near-zero CAMs, on
which the contract checks would pass without checking much, so a missing file is an error.
"""

from __future__ import annotations

from xaibench.testing.fixtures import FixtureCase, register_fixture


@register_fixture("cnn")
def cnn_fixture() -> FixtureCase:
    """The trained ``lesion_cnn`` on 4 lesion images.

    Raises:
        FileNotFoundError: the ``lesion_cnn`` weights are missing; train them with
            ``xaibench zoo train lesion_cnn``.
    """
    from xaibench import create_dataset, zoo

    try:
        model = zoo.load("lesion_cnn")
    except FileNotFoundError as e:
        raise FileNotFoundError(
            "cnn contract fixture: the lesion_cnn reference weights are missing (a random CNN would make the "
            f"contract checks weak); train them with `xaibench zoo train lesion_cnn`. ({e})") from e
    batch = create_dataset("lesions", n=4, batch_size=4, seed=123).all()
    bad = [batch.inputs[0], batch.inputs[:, 0]]  # missing batch dim; missing channel dim
    return FixtureCase(model=model, batch=batch, bad_inputs=bad)
