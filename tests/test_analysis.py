"""minilora.analysis against cases worked out by hand."""
import numpy as np
import pytest

from minilora import analysis as A
from minilora import functional as F
from minilora.optim import AdamW
from minilora.tensor import Tensor


def _orthonormal(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


# ---------------------------------------------------------------- subspace similarity (section 7.2)

def test_phi_of_identical_subspaces_is_one():
    rng = np.random.default_rng(0)
    A1 = rng.standard_normal((4, 10))
    # A2 = M A1 with M invertible has the same row space, so every phi(i, i) with i = 4 is 1.
    A2 = rng.standard_normal((4, 4)) @ A1
    assert A.subspace_similarity(A1, A2, 4, 4) == pytest.approx(1.0, abs=1e-12)
    assert A.subspace_similarity(A1, A1, 2, 2) == pytest.approx(1.0, abs=1e-12)


def test_phi_of_orthogonal_subspaces_is_zero():
    A1 = np.eye(6)[:2]          # rows span e1, e2
    A2 = np.eye(6)[3:6]         # rows span e4, e5, e6
    assert A.subspace_similarity(A1, A2, 2, 3) == pytest.approx(0.0, abs=1e-15)


def test_phi_half_overlap_by_hand():
    # span{e1} against span{(e1 + e2)/sqrt 2}: cos^2 of 45 degrees = 1/2.
    assert A.subspace_similarity(np.array([[1.0, 0, 0]]), np.array([[1.0, 1.0, 0]]), 1, 1) == pytest.approx(0.5)


def test_random_baseline_is_about_one_over_dim():
    # E[(u . v)^2] for independent unit vectors in R^d is exactly 1/d; 2000 trials give about 3% noise.
    value = A.random_subspace_baseline(32, 1, 1, trials=2000, seed=0)
    assert value == pytest.approx(1 / 32, rel=0.15)


# ---------------------------------------------------------------- amplification (section 7.3)

def test_amplification_on_a_constructed_case():
    rng = np.random.default_rng(1)
    U, V = _orthonormal(rng, 8, 8), _orthonormal(rng, 6, 6)
    # W0 = U diag(10, 5, 1, 0.5, 0.2, 0.1) V^T. Delta W = 3 u3 v3^T: along W0's third direction (sigma 1).
    s = np.array([10, 5, 1, 0.5, 0.2, 0.1])
    W0 = (U[:, :6] * s) @ V.T
    dW = 3.0 * np.outer(U[:, 2], V[:, 2])
    amp = A.amplification_factor(W0, dW, 1)
    # ||U^T W0 V|| with U = u3, V = v3 is sigma_3 = 1; ||Delta W||_F = 3, so the factor is 3.
    assert amp.projected_norm == pytest.approx(1.0, rel=1e-12)
    assert amp.delta_norm == pytest.approx(3.0, rel=1e-12)
    assert amp.factor == pytest.approx(3.0, rel=1e-12)
    # Along W0's top direction instead, the projection is 10: factor 0.3 (nothing amplified).
    assert A.amplification_factor(W0, 3.0 * np.outer(U[:, 0], V[:, 0]), 1).factor == pytest.approx(0.3)


def test_amplification_rejects_bad_input():
    with pytest.raises(ValueError, match="r=0"):
        A.amplification_factor(np.eye(3), np.eye(3), 0)
    with pytest.raises(ValueError, match="W0 is"):
        A.amplification_factor(np.eye(3), np.eye(2), 1)


# ---------------------------------------------------------------- updates, truncation, control

def test_truncate_updates_keeps_top_directions_and_energy():
    rng = np.random.default_rng(2)
    U, V = _orthonormal(rng, 5, 3), _orthonormal(rng, 4, 3)
    dW = (U * np.array([4.0, 2.0, 1.0])) @ V.T
    kept = A.truncate_updates({"w": dW}, 1)["w"]
    assert np.allclose(kept, 4.0 * np.outer(U[:, 0], V[:, 0]), atol=1e-12)
    assert A.energy_kept(dW, 2) == pytest.approx(20 / 21)       # (16 + 4) / (16 + 4 + 1)


def test_random_directions_keep_the_spectrum_but_not_the_directions():
    rng = np.random.default_rng(3)
    dW = rng.standard_normal((6, 5)) @ np.diag([5, 3, 1, 0.1, 0.01])
    ctrl = A.random_directions_like(dW, np.random.default_rng(4))
    assert np.allclose(np.linalg.svd(ctrl, compute_uv=False), np.linalg.svd(dW, compute_uv=False), atol=1e-12)
    assert not np.allclose(ctrl, dW, atol=1e-3)


def test_weight_updates_and_with_updates_round_trip():
    from minilora.pretrained import load_pretrained

    base = load_pretrained()
    names = A.adapted_matrix_names(base)
    assert names and all(".h." in n for n in names) and not any("wte" in n for n in names)
    rng = np.random.default_rng(5)
    updates = {n: rng.standard_normal(dict(base.named_parameters())[n].shape) * 1e-2 for n in names[:2]}
    tuned = A.with_updates(base, updates)
    got = A.weight_updates(base, tuned, names[:2])
    for n in updates:   # float32 weights: the round trip is exact to float32 rounding of W0 + dW
        assert np.allclose(got[n], updates[n], atol=1e-6)
    # base itself is unchanged
    assert all(np.abs(v).max() == 0 for v in A.weight_updates(base, load_pretrained(), names).values())


def test_smallest_reaching_and_d_int90():
    assert A.smallest_reaching([1, 2, 4, 8], [0.1, 0.5, 0.91, 0.95], 0.9) == 4
    assert A.smallest_reaching([1, 2], [0.1, 0.2], 0.9) is None
    # d_int90: 90% of 0.8 is 0.72; the first d at or above is 16 (a tie counts despite 0.9 * 0.8 > 0.72 in floats).
    assert A.d_int90([4, 8, 16, 32], [0.3, 0.7, 0.72, 0.8], 0.8) == 16
    assert A.d_int90([4, 8, 16, 32], [0.3, 0.7, 0.719, 0.8], 0.8) == 32
    assert A.d_int90([4, 8], [0.3, 0.7], 0.8) is None


# ---------------------------------------------------------------- intrinsic dimension

def test_random_projection_has_unit_columns():
    P = A.random_projection(50, 7, seed=0)
    assert P.shape == (50, 7)
    assert np.allclose(np.linalg.norm(P, axis=0), 1.0, atol=1e-12)
    with pytest.raises(ValueError):
        A.random_projection(50, 0)


def test_flat_parameters_round_trip():
    m = A.TinyMLP(3, 4, 2, seed=0)
    theta = A.flat_parameters(m)
    assert theta.shape == (m.num_parameters(),)
    A.set_flat_parameters(m, theta * 2)
    assert np.allclose(A.flat_parameters(m), theta * 2)
    with pytest.raises(ValueError, match="parameters but theta"):
        A.set_flat_parameters(m, theta[:-1])


def test_subspace_training_with_identity_equals_ordinary_training():
    """d = D and P = I: theta = theta0 + z, so Adam on z is Adam on theta, step for step."""
    x, y = A.teacher_task(64, in_dim=5, seed=0)

    def loss_fn(model):
        return F.cross_entropy(model(Tensor(x)), y)

    direct = A.TinyMLP(5, 7, 4, seed=3)
    opt = AdamW(direct.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(direct)
        losses.append(loss.item())
        loss.backward()
        opt.step()

    sub = A.TinyMLP(5, 7, 4, seed=3)
    D = sub.num_parameters()
    result = A.train_in_subspace(sub, loss_fn, np.eye(D), steps=20, lr=1e-2)
    assert np.allclose(result.losses, losses, rtol=1e-10, atol=0)
    assert np.allclose(A.flat_parameters(sub), A.flat_parameters(direct), rtol=1e-9, atol=1e-12)


def test_subspace_training_stays_in_the_subspace():
    x, y = A.teacher_task(64, in_dim=5, seed=0)
    m = A.TinyMLP(5, 7, 4, seed=0)
    theta0 = A.flat_parameters(m)
    P = A.random_projection(theta0.size, 3, seed=1)
    res = A.train_in_subspace(m, lambda mm: F.cross_entropy(mm(Tensor(x)), y), P, steps=30, lr=5e-2)
    moved = A.flat_parameters(m) - theta0
    assert np.allclose(moved, P @ res.z, atol=1e-12)         # theta - theta0 lies in span(P)
    assert res.losses[-1] < res.losses[0]                    # and training made progress
    with pytest.raises(ValueError, match="rows"):
        A.train_in_subspace(m, lambda mm: None, np.eye(3), steps=1)


def test_lora_updates_match_merge():
    from minilora.lora import LoraConfig, apply_lora, merge
    from minilora.pretrained import load_pretrained

    base = load_pretrained()
    model = apply_lora(load_pretrained(), LoraConfig(r=2, lora_alpha=4, init_lora_weights=False))
    updates = A.lora_updates(model)
    assert set(updates) == {n for n in A.adapted_matrix_names(base) if "q_proj" in n or "v_proj" in n}
    merge(model)
    merged = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for n, dw in updates.items():
        w0 = dict(base.named_parameters())[n].numpy().astype(np.float64)
        assert np.allclose(merged[n].numpy() - w0, dw, atol=1e-5)
    assert all(a.shape[0] == 2 for a in A.lora_A_matrices(model).values())


def test_truncation_curve_evaluates_each_rank_on_a_truncated_copy():
    from minilora.pretrained import load_pretrained

    base = load_pretrained()
    name = A.adapted_matrix_names(base)[0]
    shape = dict(base.named_parameters())[name].shape
    rng = np.random.default_rng(6)
    U, V = _orthonormal(rng, shape[0], 3), _orthonormal(rng, shape[1], 3)
    dW = (U * np.array([3.0, 2.0, 1.0])) @ V.T
    w0 = dict(base.named_parameters())[name].numpy().astype(np.float64)

    def evaluate(model):   # the Frobenius norm of the update that reached the model
        return np.linalg.norm(dict(model.named_parameters())[name].numpy().astype(np.float64) - w0)

    got = A.truncation_curve(base, {name: dW}, [1, 2, 3], evaluate)
    assert np.allclose(got, [3.0, np.sqrt(13), np.sqrt(14)], atol=1e-5)
