"""Adam on torch's fused kernel, without `torch.optim` and its `torch._dynamo` import.

Every `torch.optim` optimiser imports `torch._dynamo` when it is built (its
`add_param_group` is wrapped to keep the compiler out) and again on `step`: several
seconds of a run's start-up on a loaded 2-CPU machine (BENCHMARKS.md, "Start-up"), for a
compiler esper never uses. `FusedAdam` calls the same kernel `torch.optim.Adam(fused=True)`
calls, with the same arguments, so its steps are bit-identical to it, and its
`state_dict` has the same layout, so checkpoints load into either.

What esper needs of it is small: one parameter group; `found_inf`, a device tensor set
before `step()`, cancels the step on the device (the sync-free skip of a minibatch, the
mechanism `torch.amp.GradScaler` uses); parameters may join `param_groups[0]["params"]`
and leave with `state.pop(param)` (the host's seeds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

#: The group options of `torch.optim.Adam(fused=True)`, so a state_dict loads into either.
_ADAM_OPTIONS: dict[str, Any] = {
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


class FusedAdam:
    """Adam (no weight decay, no amsgrad) stepping all parameters with one fused kernel."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        param_list = list(params)
        if not param_list:
            raise ValueError("FusedAdam got an empty parameter list")
        if not lr >= 0 or not eps >= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        group: dict[str, Any] = {"params": param_list, "lr": lr, "betas": tuple(betas), "eps": eps}
        self.param_groups: list[dict[str, Any]] = [{**group, **_ADAM_OPTIONS}]
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        #: Set to a 0-d float tensor before `step()`: non-zero cancels that step on the device.
        self.found_inf: Tensor | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state.get(p)
        if not state:
            state = {
                # float32 on the parameter's device: where the fused kernel keeps `step`
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
            self.state[p] = state
        return state

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter with a gradient (none where `found_inf` != 0)."""
        group = self.param_groups[0]
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                buckets.setdefault((p.device, p.dtype), []).append(p)
        beta1, beta2 = group["betas"]
        for (device, _), params in buckets.items():
            states = [self._state(p) for p in params]
            steps = [s["step"] for s in states]
            flag = getattr(self, "found_inf", None)  # PPO removes it after an update
            found_inf = None if flag is None else flag.to(device)
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                [p.grad for p in params if p.grad is not None],  # params are those with grads
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=found_inf,
            )
            if found_inf is not None:  # a cancelled step does not count
                torch._foreach_sub_(steps, [found_inf] * len(steps))

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state by parameter index, the group with indices."""
        group = self.param_groups[0]
        params = group["params"]
        return {
            "state": {i: dict(self.state[p]) for i, p in enumerate(params) if self.state.get(p)},
            "param_groups": [
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": [*range(len(params))],
                }
            ],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a `state_dict` of this class or of `torch.optim.Adam` (one group)."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError(
                f"optimizer state has {[len(g['params']) for g in groups]} parameters "
                f"in its groups; this optimizer has one group of {len(params)}"
            )
        saved = groups[0]
        self.param_groups[0].update(lr=saved["lr"], betas=tuple(saved["betas"]), eps=saved["eps"])
        by_index = dict(zip(saved["params"], params, strict=True))
        self.state = {}
        for index, entries in state_dict["state"].items():
            p = by_index[index]
            self.state[p] = {
                "step": entries["step"].detach().to(p.device, torch.float32, copy=True),
                "exp_avg": entries["exp_avg"].detach().to(p.device, p.dtype, copy=True),
                "exp_avg_sq": entries["exp_avg_sq"].detach().to(p.device, p.dtype, copy=True),
            }
