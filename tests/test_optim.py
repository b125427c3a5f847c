"""FusedAdam: the same steps and state as torch.optim.Adam(fused=True), without dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from esper.common.optim import FusedAdam


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _train(net: nn.Module, opt: object, skip: set[int], steps: int = 6) -> None:
    x = torch.randn(11, 5, generator=torch.Generator().manual_seed(1))
    for i in range(steps):
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        (net(x) ** 2).sum().backward()
        opt.found_inf = torch.tensor(1.0 if i in skip else 0.0)  # type: ignore[attr-defined]
        opt.step()  # type: ignore[attr-defined]


def test_steps_are_bit_identical_to_torch_fused_adam_skips_included() -> None:
    ours, theirs = _net(), _net()
    a = FusedAdam(ours.parameters(), lr=1e-2)
    b = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True)
    _train(ours, a, skip={2, 3})
    _train(theirs, b, skip={2, 3})
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i, entries in sb["state"].items():
        assert entries.keys() == sa["state"][i].keys()
        for key, value in entries.items():
            assert (
                torch.equal(sa["state"][i][key], value) and sa["state"][i][key].dtype == value.dtype
            )
    assert float(sa["state"][0]["step"]) == 4.0  # 6 steps, 2 cancelled


def test_skipped_step_changes_nothing() -> None:
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _train(net, opt, skip=set(), steps=1)
    before = [p.clone() for p in net.parameters()]
    state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    _train(net, opt, skip={0}, steps=1)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(value, state[key])


def test_state_dicts_load_both_ways() -> None:
    ours, theirs = _net(), _net()
    a = FusedAdam(ours.parameters(), lr=1e-2)
    b = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True)
    _train(theirs, b, skip=set())
    a.load_state_dict(b.state_dict())
    ours.load_state_dict(theirs.state_dict())
    _train(ours, a, skip=set())
    _train(theirs, b, skip=set())
    assert all(
        torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    fresh = _net()
    c = torch.optim.Adam(fresh.parameters(), lr=1e-2, fused=True)
    c.load_state_dict(a.state_dict())
    assert float(c.state_dict()["state"][0]["step"]) == 12.0


def test_parameters_join_and_leave() -> None:
    net = _net()
    extra = nn.Linear(3, 3)
    opt = FusedAdam(net.parameters(), lr=1e-2)
    opt.param_groups[0]["params"].extend(extra.parameters())
    x = torch.randn(4, 5)
    (extra(net(x)) ** 2).sum().backward()
    opt.step()
    assert extra.weight in opt.state and float(opt.state[extra.weight]["step"]) == 1.0
    opt.param_groups[0]["params"][:] = list(net.parameters())
    for p in extra.parameters():
        opt.state.pop(p, None)
    assert len(opt.state_dict()["state"]) == 4


def test_bad_settings_and_mismatched_state() -> None:
    with pytest.raises(ValueError, match="empty"):
        FusedAdam([])
    with pytest.raises(ValueError, match="invalid Adam"):
        FusedAdam(_net().parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="one group of 4"):
        FusedAdam(_net().parameters()).load_state_dict(
            {
                "state": {},
                "param_groups": [{"params": [0], "lr": 1.0, "betas": (0.9, 0.9), "eps": 1e-8}],
            }
        )


def test_a_training_step_never_imports_the_compiler() -> None:
    code = (
        "import sys, torch\n"
        "from esper.rl.ppo import PPOAgent\n"
        "from esper.morpho.host import HostNetwork\n"
        "from esper.morpho.actions import factored_actions\n"
        "agent = PPOAgent(56, factored_actions(3))\n"
        "host = HostNetwork(2, 2, torch.Generator().manual_seed(0), n_slots=3)\n"
        "x = torch.randn(8, 2); y = torch.randint(0, 2, (8,))\n"
        "host.train_epoch(x, y, torch.Generator().manual_seed(0))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
