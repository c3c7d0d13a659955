"""Measure the LoRA paper's claims on a model you fine-tuned yourself.

The paper (Hu et al. 2021, sections 4 and 7) argues from a handful of
measurements. Each has a small function here; all take and return NumPy
arrays and plain numbers, and compute in float64:

- the update a fine-tune made, per weight matrix: Delta W = W_tuned - W0
  (`weight_updates`), or scaling * B A for a LoRA model (`lora_updates`);
- how many directions that update really uses (`update_spectrum`, and
  `linalg.stable_rank` / `linalg.numerical_rank`);
- keep only its top r directions and see what the model can still do
  (`truncate_updates`, `with_updates`), against a control with the same
  singular values but random directions (`random_directions_like`);
- whether two adapters learned the same directions, section 7.2:
  phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j)  (`subspace_similarity`,
  `random_subspace_baseline`);
- how Delta W relates to W0, section 7.3: the amplification factor
  ||Delta W||_F / ||U^T W0 V||_F  (`amplification_factor`);
- intrinsic dimension (Li et al. 2018): train only z in theta = theta0 + P z
  with a fixed random P, and find the smallest d that reaches 90% of
  ordinary training (`random_projection`, `train_in_subspace`, `d_int90`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minilora import backend, nn
from minilora.tensor import Tensor, no_grad
from minilora.linalg import (low_rank_approx, numerical_rank, stable_rank, subspace_similarity,
                             subspace_similarity_grid, thin_svd)

__all__ = [
    "as_float64", "adapted_matrix_names", "weight_updates", "lora_updates", "update_spectrum",
    "truncate_updates", "with_updates", "truncation_curve", "random_directions_like", "energy_kept",
    "stable_rank", "numerical_rank", "subspace_similarity", "subspace_similarity_grid",
    "lora_A_matrices", "random_subspace_baseline", "amplification_factor", "Amplification",
    "smallest_reaching", "random_projection", "flat_parameters", "set_flat_parameters",
    "train_in_subspace", "SubspaceResult", "d_int90", "teacher_task", "TinyMLP", "mlp_accuracy",
]


def as_float64(array) -> np.ndarray:
    """Any array (NumPy, CuPy, a Tensor's data) as a float64 NumPy array on the host."""
    return backend.to_numpy(array).astype(np.float64)


# ----------------------------------------------------------------------------
# The update a fine-tune made
# ----------------------------------------------------------------------------

def adapted_matrix_names(model) -> list[str]:
    """Names of the weight matrices inside the Transformer blocks (attention and MLP).

    Embeddings and LayerNorms are left out: the paper's analysis, like LoRA,
    is about the dense projections.
    """
    return [name for name, p in model.named_parameters()
            if p.ndim == 2 and ".h." in name and "lora_" not in name]


def weight_updates(base, tuned, names=None) -> dict[str, np.ndarray]:
    """Delta W = W_tuned - W0 for each named matrix (default: every block matrix).

    base and tuned must be the same architecture; both are left unchanged.
    """
    base_params = dict(base.named_parameters())
    tuned_params = dict(tuned.named_parameters())
    names = adapted_matrix_names(base) if names is None else list(names)
    updates = {}
    for name in names:
        if name not in base_params or name not in tuned_params:
            raise KeyError(f"weight_updates: {name!r} is not a parameter of both models")
        w0, w1 = as_float64(base_params[name].data), as_float64(tuned_params[name].data)
        if w0.shape != w1.shape:
            raise ValueError(f"weight_updates: {name} has shape {w0.shape} in base but {w1.shape} in tuned")
        updates[name] = w1 - w0
    return updates


def lora_updates(model, adapter_name: str = "default") -> dict[str, np.ndarray]:
    """Delta W = scaling * B A for every LoRA Linear, keyed like the base weight
    ('transformer.h.0.attn.q_proj.weight'), so it lines up with weight_updates."""
    from minilora.lora import LoRALinear, lora_layers

    return {f"{name}.weight": as_float64(layer.delta_weight(adapter_name))
            for name, layer in lora_layers(model).items() if isinstance(layer, LoRALinear)}


def lora_A_matrices(model, adapter_name: str = "default") -> dict[str, np.ndarray]:
    """The A matrix (r, in) of every LoRA Linear, keyed like lora_updates."""
    from minilora.lora import LoRALinear, lora_layers

    return {f"{name}.weight": as_float64(layer.lora_A[adapter_name].weight.data)
            for name, layer in lora_layers(model).items() if isinstance(layer, LoRALinear)}


def update_spectrum(delta_w) -> np.ndarray:
    """The singular values of Delta W, largest first."""
    return thin_svd(delta_w)[1]


def energy_kept(delta_w, r: int) -> float:
    """sum_{i<=r} sigma_i^2 / sum_i sigma_i^2: the share of ||Delta W||_F^2 in the top r directions."""
    s = update_spectrum(delta_w)
    total = float(np.sum(s ** 2))
    return float(np.sum(s[:r] ** 2) / total) if total > 0 else 1.0


def truncate_updates(updates: dict, r: int) -> dict[str, np.ndarray]:
    """Each Delta W replaced by its best rank-r approximation (Eckart-Young)."""
    return {name: low_rank_approx(dw, min(r, min(dw.shape)))[0] for name, dw in updates.items()}


def random_directions_like(delta_w, rng: np.random.Generator) -> np.ndarray:
    """A matrix with Delta W's singular values but random singular directions.

    The control for truncation: same size and same spectrum, so if the model
    still works with it, the *directions* of Delta W did not matter.
    """
    dw = np.asarray(delta_w, dtype=np.float64)
    s = update_spectrum(dw)
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((dw.shape[0], k)))   # [m, k], orthonormal columns
    V, _ = np.linalg.qr(rng.standard_normal((dw.shape[1], k)))   # [n, k]
    return (U * s) @ V.T


def with_updates(base, updates: dict):
    """A copy of `base` with W0 + Delta W for each named matrix (base is unchanged)."""
    import copy

    model = copy.deepcopy(base)
    params = dict(model.named_parameters())
    for name, dw in updates.items():
        p = params[name]
        if tuple(p.shape) != tuple(np.shape(dw)):
            raise ValueError(f"with_updates: {name} is {tuple(p.shape)} but its update is {np.shape(dw)}")
        new = as_float64(p.data) + np.asarray(dw, dtype=np.float64)
        p.data = backend.to_device(new.astype(p.dtype), p.device)
    model.eval()
    return model


def truncation_curve(base, updates: dict, ranks, evaluate) -> list[float]:
    """evaluate(W0 + rank-r truncation of every Delta W) for each r in ranks.

    evaluate(model) -> a number (e.g. exact-match accuracy). This is the
    experiment behind notebook 09's slider: how much of what fine-tuning
    learned survives in the top r directions of each update.
    """
    return [float(evaluate(with_updates(base, truncate_updates(updates, r)))) for r in ranks]


# ----------------------------------------------------------------------------
# Section 7.2: do adapters of different ranks learn the same directions?
# ----------------------------------------------------------------------------

def random_subspace_baseline(dim: int, i: int, j: int, trials: int = 200, seed: int = 0) -> float:
    """The mean phi(A1, A2, i, j) for random Gaussian A1 (i x dim) and A2 (j x dim).

    Random subspaces overlap only by chance: the expected value is
    max(i, j) / dim (about 1/dim for i = j = 1), the paper's "random" reference.
    """
    rng = np.random.default_rng(seed)
    values = [subspace_similarity(rng.standard_normal((i, dim)), rng.standard_normal((j, dim)), i, j)
              for _ in range(trials)]
    return float(np.mean(values))


# ----------------------------------------------------------------------------
# Section 7.3: how does Delta W relate to W0?
# ----------------------------------------------------------------------------

@dataclass
class Amplification:
    delta_norm: float          # ||Delta W||_F
    projected_norm: float      # ||U^T W0 V||_F: W0 seen in Delta W's top-r directions
    w0_norm: float             # ||W0||_F, for scale
    factor: float              # delta_norm / projected_norm


def amplification_factor(w0, delta_w, r: int) -> Amplification:
    """||Delta W||_F / ||U^T W0 V||_F, with U [m, r], V [n, r] Delta W's top-r singular vectors.

    The paper (section 7.3) projects W0 onto the r directions Delta W uses. If
    that projection is small while Delta W is large, the fine-tune amplified
    directions W0 already had but did not emphasise: the factor was about 21.5
    for r = 4 and about 2 for r = 64 on GPT-3's Wq.
    """
    W = np.asarray(w0, dtype=np.float64)
    dW = np.asarray(delta_w, dtype=np.float64)
    if W.shape != dW.shape:
        raise ValueError(f"amplification_factor: W0 is {W.shape} but Delta W is {dW.shape}")
    if not 1 <= r <= min(W.shape):
        raise ValueError(f"amplification_factor: r={r} must be between 1 and {min(W.shape)}")
    U, s, Vt = thin_svd(dW)
    projected = float(np.linalg.norm(U[:, :r].T @ W @ Vt[:r].T))   # [r, m] [m, n] [n, r] -> [r, r]
    delta = float(np.linalg.norm(dW))
    factor = delta / projected if projected > 0 else math.inf
    return Amplification(delta, projected, float(np.linalg.norm(W)), factor)


def smallest_reaching(xs, values, target: float):
    """The smallest x whose value is >= target (xs ascending), or None if none reaches it.

    A value equal to the target counts, up to rounding: 0.9 * 0.8 is 0.7200000000000001
    in floating point, and an accuracy of 0.72 should still reach it.
    """
    for x, v in zip(xs, values):
        if v >= target - 1e-12:
            return x
    return None


# ----------------------------------------------------------------------------
# Intrinsic dimension (Li et al. 2018): train in a random d-dimensional subspace
# ----------------------------------------------------------------------------

def random_projection(D: int, d: int, seed: int = 0) -> np.ndarray:
    """A dense random P [D, d] with unit-norm columns: theta = theta0 + P z.

    Gaussian columns normalised to length 1, so a step in z moves theta by a
    comparable amount whatever D is. For D in the millions Li et al. use the
    Fastfood transform instead of storing P; at our sizes the dense matrix fits.
    """
    if not (isinstance(D, (int, np.integer)) and isinstance(d, (int, np.integer)) and 1 <= d and 1 <= D):
        raise ValueError(f"random_projection: D={D!r} and d={d!r} must be positive integers")
    P = np.random.default_rng(seed).standard_normal((D, d))
    return P / np.linalg.norm(P, axis=0, keepdims=True)


def flat_parameters(model) -> np.ndarray:
    """Every parameter of the model, flattened and concatenated (float64): theta."""
    return np.concatenate([as_float64(p.data).ravel() for p in model.parameters()])


def set_flat_parameters(model, theta: np.ndarray) -> None:
    """Write a flat vector back into the model's parameters (the inverse of flat_parameters)."""
    params = list(model.parameters())
    total = sum(int(np.prod(p.shape)) for p in params)
    if theta.shape != (total,):
        raise ValueError(f"set_flat_parameters: the model has {total} parameters but theta has shape {theta.shape}")
    offset = 0
    for p in params:
        n = int(np.prod(p.shape))
        p.data = backend.to_device(theta[offset:offset + n].reshape(p.shape).astype(p.dtype), p.device)
        offset += n


@dataclass
class SubspaceResult:
    z: np.ndarray           # the d coordinates learned
    losses: list            # one per step


def train_in_subspace(model, loss_fn, P: np.ndarray, steps: int, lr: float = 1e-2,
                      betas=(0.9, 0.999), eps: float = 1e-8) -> SubspaceResult:
    """Train only z in theta = theta0 + P z (z starts at 0), with Adam, and leave theta in the model.

    loss_fn(model) -> a scalar Tensor. The chain rule gives the gradient of z
    from the ordinary one: dL/dz = P^T dL/dtheta. So each step runs the model's
    usual forward and backward, flattens the gradients into dL/dtheta [D] and
    projects them: [d, D] @ [D] -> [d]. Adam then updates z (the same rule as
    minilora's AdamW with no weight decay), and theta0 + P z goes back in.
    """
    theta0 = flat_parameters(model)
    D, d = P.shape
    if D != theta0.size:
        raise ValueError(f"train_in_subspace: P has {D} rows but the model has {theta0.size} parameters")
    params = list(model.parameters())
    z = np.zeros(d)
    m, v = np.zeros(d), np.zeros(d)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        for p in params:
            p.grad = None
        loss = loss_fn(model)
        loss.backward()
        grad_theta = np.concatenate([as_float64(p.grad).ravel() if p.grad is not None else np.zeros(int(np.prod(p.shape)))
                                     for p in params])           # [D]
        g = P.T @ grad_theta                                      # [d]
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
        z = z - lr * m_hat / (np.sqrt(v_hat) + eps)
        set_flat_parameters(model, theta0 + P @ z)
        losses.append(float(loss.item()))
    for p in params:
        p.grad = None
    model.eval()
    return SubspaceResult(z, losses)


def d_int90(dims, accuracies, full_accuracy: float, fraction: float = 0.9):
    """The smallest d whose accuracy reaches fraction * full_accuracy (Li et al.'s d_int90).

    dims ascending. Returns None when no d on the grid reaches it; the answer
    is only as fine as the grid of d tried.
    """
    return smallest_reaching(list(dims), list(accuracies), fraction * full_accuracy)


# ----------------------------------------------------------------------------
# A small network and task for intrinsic dimension, made here (no downloads)
# ----------------------------------------------------------------------------

def teacher_task(n: int, in_dim: int = 10, classes: int = 4, seed: int = 0, teacher_seed: int = 1234):
    """n labelled points: x ~ N(0, I) in R^in_dim, label = argmax of a fixed random
    two-layer teacher network (tanh, 8 hidden units). Returns x [n, in_dim] float64, y [n] int64.

    The teacher (fixed by teacher_seed) defines the task; `seed` draws the points,
    so different seeds give a training set and a test set of the same task.
    """
    t = np.random.default_rng(teacher_seed)
    W1, W2 = t.standard_normal((8, in_dim)), t.standard_normal((classes, 8))
    x = np.random.default_rng(seed).standard_normal((n, in_dim))
    y = np.argmax(np.tanh(x @ W1.T * 0.7) @ W2.T, axis=1).astype(np.int64)
    return x, y


class TinyMLP(nn.Module):
    """in_dim -> width (ReLU) -> classes: the network whose intrinsic dimension we measure."""

    def __init__(self, in_dim: int, width: int, classes: int, seed: int = 0):
        super().__init__()
        backend.manual_seed(seed)
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, classes)
        for p in self.parameters():          # float64: the P = I test compares to 1e-10
            p.data = p.data.astype(np.float64)

    def forward(self, x) -> Tensor:
        return self.fc2(self.fc1(x).relu())  # [n, in] -> [n, width] -> [n, classes]


def mlp_accuracy(model, x, y) -> float:
    """Fraction of points whose largest logit is the right class."""
    with no_grad():
        logits = backend.to_numpy(model(Tensor(x)).data)
    return float(np.mean(logits.argmax(axis=1) == y))
