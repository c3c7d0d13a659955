"""Optimizers: SGD with momentum and AdamW, with PyTorch's exact update rules.

An optimizer keeps state (momentum, Adam's two moment estimates) only for the
parameters that require gradients. With LoRA that is the whole point: a frozen
base weight costs no optimizer memory. `state_bytes()` measures it.
"""
from __future__ import annotations

import math

from minilora import backend
from minilora.tensor import Tensor, no_grad


class Optimizer:
    """Holds parameter groups (dicts with "params" and hyper-parameters) and their state."""

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass "
                             "model.parameters() (after apply_lora, only A and B require grad).")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            trainable = [p for p in group["params"] if p.requires_grad]
            self.param_groups.append({**defaults, **group, "params": trainable})
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
        """Set the learning rate of every group (what a schedule does each step)."""
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_bytes(self) -> int:
        """Bytes of optimizer state (moment buffers), the memory LoRA saves."""
        return sum(int(a.nbytes) for s in self.state.values() for a in s.values() if hasattr(a, "nbytes"))

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

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"SGD: lr={lr} must be positive")
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

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if lr <= 0:
            raise ValueError(f"AdamW: lr={lr} must be positive")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas={betas} must each be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        xp = backend.get_array_module(p.data)
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
    """Scale gradients so their global L2 norm is at most max_norm; return the norm before."""
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.get_array_module(grads[0])
    total = float(xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in grads)))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale
    return total
