"""Optimizers: SGD with momentum and AdamW, with PyTorch's exact update rules.

An optimizer keeps state (momentum, Adam's two moment estimates) only for the
parameters that require gradients. With LoRA that is the whole point: a frozen
base weight costs no optimizer memory. `state_bytes()` measures it.
"""
from __future__ import annotations

import math
import numbers

from minilora import backend
from minilora.tensor import Tensor, no_grad


def check_number(owner: str, name: str, value, low: float = 0.0, *, low_open: bool = False,
                 high: float | None = None, high_open: bool = True, hint: str = "") -> float:
    """`value` as a float, or a ValueError naming it: a finite real in [low, high) (or (low, ...])."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name}={value!r} must be a number{hint}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        interval = (("(" if low_open else "[") + f"{low:g}, " +
                    ("inf)" if high is None else f"{high:g}" + (")" if high_open else "]")))
        raise ValueError(f"{owner}: {name}={value!r} must be a finite number in {interval}{hint}")
    return value


def _check_group(owner: str, group: dict) -> None:
    """Every hyper-parameter of a parameter group, checked once, before any step."""
    check_number(owner, "lr", group["lr"], low_open=True, hint="; e.g. lr=1e-3")
    for name in ("weight_decay", "momentum", "eps"):
        if name in group:
            check_number(owner, name, group[name], hint=f" (0 turns {name} off)" if name != "eps" else "")
    if "betas" in group:
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"{owner}: betas={betas!r} must be two numbers, each in [0, 1); "
                             "e.g. betas=(0.9, 0.999)")


def _refuse_repeats(owner: str, groups: list[dict]) -> None:
    """A parameter listed twice would be updated twice per step (and share one state): refuse,
    as PyTorch does for a parameter in two groups."""
    seen: set[int] = set()
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"{owner}: a parameter of shape {tuple(p.shape)} is listed more than once "
                                 "(in one group or in two), so each step would update it twice; "
                                 "list every parameter once")
            seen.add(id(p))


class Optimizer:
    """Holds parameter groups (dicts with "params" and hyper-parameters) and their state."""

    state_arrays: tuple[str, ...] = ()   # per-parameter buffers of the parameter's shape
    state_counts: tuple[str, ...] = ()   # per-parameter whole-number counters

    def __init__(self, params, defaults: dict):
        owner = type(self).__name__
        if isinstance(params, (Tensor, dict)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{owner}: the params argument should be an iterable of Tensors or of "
                            f"parameter-group dicts, but got a {type(params).__name__}; "
                            f"pass model.parameters() or a list, e.g. {owner}([p])")
        params = list(params)
        if not params:
            raise ValueError(f"{owner} got an empty parameter list; pass "
                             "model.parameters() (after apply_lora, only A and B require grad).")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{owner}: mix of Tensors and parameter groups; give either Tensors "
                                "or dicts with a 'params' entry")
            members = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
            for p in members:
                if not isinstance(p, Tensor):
                    raise TypeError(f"{owner}: {type(p).__name__} {p!r:.40} is not a Tensor; "
                                    "an optimizer can only update Tensors (model.parameters())")
            merged = {**defaults, **group, "params": [p for p in members if p.requires_grad]}
            _check_group(owner, merged)
            self.param_groups.append(merged)
        _refuse_repeats(owner, self.param_groups)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{type(self).__name__}: none of the {sum(len(g['params']) for g in groups)} "
                             "parameters requires grad, so there is nothing to train. "
                             "Unfreeze some (p.requires_grad = True) or apply a LoRA first.")
        self.state: dict[int, dict] = {}

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the learning rate of every group (what a schedule does each step; 0 is allowed)."""
        value = check_number(type(self).__name__, "lr", value)
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_bytes(self) -> int:
        """Bytes of optimizer state (moment buffers), the memory LoRA saves."""
        return sum(int(a.nbytes) for s in self.state.values() for a in s.values() if hasattr(a, "nbytes"))

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> tuple[dict, dict]:
        """(arrays, info): the state of every parameter, numbered in parameter order.

        arrays holds the buffers as NumPy arrays ("3.exp_avg": ...), ready for a
        safetensors file; info holds the rest as plain JSON (step counts).
        Enough, with the weights, to continue training exactly where it stopped.
        """
        arrays, counts = {}, {}
        for i, p in enumerate(self._params()):
            for key, value in self.state.get(id(p), {}).items():
                if hasattr(value, "shape"):
                    arrays[f"{i}.{key}"] = backend.to_numpy(value).copy()
                else:
                    counts[f"{i}.{key}"] = value
        return arrays, {"optimizer": type(self).__name__, "n_params": len(self._params()), "scalars": counts}

    def load_state_dict(self, arrays: dict, info: dict) -> None:
        """Restore what state_dict() returned, all or nothing, after checking it fits."""
        params = self._params()
        if info.get("optimizer") != type(self).__name__ or info.get("n_params") != len(params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state is for "
                             f"{info.get('optimizer')} with {info.get('n_params')} trainable parameters, "
                             f"this optimizer is {type(self).__name__} with {len(params)}; "
                             "resume with the same model, LoRA setup and optimizer")
        state: dict[int, dict] = {}
        for key, value in [*arrays.items(), *info.get("scalars", {}).items()]:
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= len(params):
                raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected entry {key!r}")
            p = params[int(index)]
            if hasattr(value, "shape"):
                if tuple(value.shape) != tuple(p.shape) or value.dtype != p.data.dtype:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                     f"{tuple(value.shape)} {value.dtype}, the parameter "
                                     f"{tuple(p.shape)} {p.data.dtype}")
                value = p.xp.array(value)                # a copy, on the parameter's device
            state.setdefault(id(p), {})[name] = value
        for index, p in enumerate(params):
            if id(p) in state:
                self._check_param_state(index, state[id(p)], p)
        self.state = state

    def _check_param_state(self, index: int, entry: dict, p: Tensor) -> None:
        """One parameter's restored state must be complete, with whole counts and finite buffers:
        a missing moment or a step count of "7" would fail, or silently mislead, steps later."""
        owner = f"{type(self).__name__}.load_state_dict"
        want = set(self.state_arrays) | set(self.state_counts)
        if set(entry) != want:
            raise ValueError(f"{owner}: parameter {index} has state {sorted(entry)}, expected {sorted(want)}; "
                             "the saved state is incomplete or from another optimizer")
        for name in self.state_counts:
            count = entry[name]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{owner}: {index}.{name}={count!r} must be a whole number >= 1")
        for name in self.state_arrays:
            if not bool(p.xp.isfinite(entry[name]).all()):
                raise ValueError(f"{owner}: {index}.{name} holds NaN or inf; the saved state is broken")

    def step(self) -> None:
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p: Tensor, grad, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * v, with v = momentum * v + grad (PyTorch's form: no dampening on the first step)."""

    state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data     # L2 penalty, coupled to the gradient
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= group["momentum"]
                buf += grad
            grad = state["momentum_buffer"]
        p.data -= group["lr"] * grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.

        p <- p * (1 - lr * wd)                  decay the weight itself, not the gradient
        m <- b1 m + (1 - b1) g                  first moment
        v <- b2 v + (1 - b2) g^2                second moment
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    state_arrays = ("exp_avg", "exp_avg_sq")
    state_counts = ("step",)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        xp = p.xp
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        lr, (b1, b2), t = group["lr"], group["betas"], state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if group["weight_decay"]:
            p.data *= 1 - lr * group["weight_decay"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        denom = xp.sqrt(v) / math.sqrt(1 - b2 ** t) + group["eps"]
        p.data -= (lr / (1 - b1 ** t)) * (m / denom)


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most max_norm; return the norm before.

    A norm that is NaN or infinite is returned as it is, and nothing is scaled:
    the caller decides (train() stops with an error rather than step on it).
    """
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm, low_open=True,
                            hint="; e.g. 1.0 (to turn clipping off, do not call it)") \
        if max_norm != math.inf else max_norm
    params = [params] if isinstance(params, Tensor) else list(params)
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    grads, xp = [p.grad for p in with_grad], with_grad[0].xp
    total = float(xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in grads)))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale
    return total
