"""Training checkpoints without pickles: save_state / load_state give back what was saved."""

import torch

from xaibench.checkpoint import load_state, optimizer_state, save_state


def test_a_resumed_optimiser_continues_exactly_like_the_uninterrupted_one(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 2)

    def step(model, opt):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    a = torch.nn.Linear(3, 2)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        step(a, opt_a)
    g = torch.Generator().manual_seed(5)
    path = tmp_path / "ck.safetensors"
    save_state(path, {"model": a.state_dict(), "opt": opt_a.state_dict(), "generator": g.get_state(), "step": 3,
                      "sums": {"loss0": 1.25}})
    assert not path.read_bytes().startswith((b"PK", b"\x80"))  # neither torch.save's zip nor a pickle
    ck = load_state(path)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(ck["model"])
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    opt_b.load_state_dict(optimizer_state(ck["opt"]))
    h = torch.Generator()
    h.set_state(ck["generator"])
    assert ck["step"] == 3 and ck["sums"] == {"loss0": 1.25}
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))
    for _ in range(2):
        step(a, opt_a)
        step(b, opt_b)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
