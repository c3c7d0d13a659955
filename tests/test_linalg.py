"""minilora.linalg: rank, Eckart-Young, storage, subspace similarity, LoRA counts."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import linalg
from minilora.lora_count import count_lora_params, lora_params_by_module
from minilora.linalg import (
    break_even_rank,
    factorization_storage,
    low_rank_approx,
    num_bytes,
    numerical_rank,
    optimizer_state_bytes,
    stable_rank,
    subspace_similarity,
    subspace_similarity_grid,
)


def random_rank_r(rng, m, n, r, dtype=np.float64):
    """An m x n matrix of rank exactly r (with probability 1)."""
    return (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(dtype)


# ---------------------------------------------------------------- numerical_rank

def test_rank_of_outer_product_is_one():
    M = np.outer([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert numerical_rank(M) == 1
    assert numerical_rank(np.array([[2, 4, 6], [1, 2, 3], [3, 6, 9]])) == 1   # integers too


@pytest.mark.parametrize("m,n,r", [(5, 7, 1), (20, 10, 3), (30, 30, 29), (8, 8, 8)])
def test_rank_of_product_matches_construction(m, n, r):
    rng = np.random.default_rng(0)
    assert numerical_rank(random_rank_r(rng, m, n, r)) == r


def test_rank_identity_zero_and_empty():
    assert numerical_rank(np.eye(6)) == 6
    assert numerical_rank(np.zeros((4, 3))) == 0
    assert numerical_rank(np.zeros((0, 3))) == 0


def test_default_tolerance_is_numpys_rule_and_uses_source_dtype():
    rng = np.random.default_rng(1)
    for dtype in (np.float64, np.float32):
        M = random_rank_r(rng, 40, 30, 5, dtype)
        s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
        tol = linalg.default_rank_tol(s, M.shape, dtype)
        assert tol == pytest.approx(s.max() * 40 * np.finfo(dtype).eps, rel=1e-12)
        assert numerical_rank(M) == 5
        assert numerical_rank(M) == np.linalg.matrix_rank(M)


def test_float32_rounding_does_not_inflate_rank():
    # A rank-2 matrix rounded to float32 has tiny non-zero singular values;
    # float32's eps (not float64's) must be used to see through them.
    rng = np.random.default_rng(2)
    M32 = random_rank_r(rng, 50, 50, 2, np.float32)
    s = np.linalg.svd(M32.astype(np.float64), compute_uv=False)
    assert s[2] > 50 * s[0] * np.finfo(np.float64).eps      # float64's rule would say rank > 2
    assert numerical_rank(M32) == 2


def test_explicit_tolerance_changes_the_question():
    M = np.diag([10.0, 1.0, 1e-3, 1e-9])
    assert numerical_rank(M) == 4
    assert numerical_rank(M, tol=1e-6) == 3
    assert numerical_rank(M, tol=0.5) == 2
    with pytest.raises(ValueError, match="tol"):
        numerical_rank(M, tol=-1.0)


def test_rank_of_product_is_at_most_min_of_ranks():
    rng = np.random.default_rng(3)
    A = random_rank_r(rng, 12, 9, 4)
    B = random_rank_r(rng, 9, 15, 6)
    assert numerical_rank(A @ B) == 4 == min(numerical_rank(A), numerical_rank(B))


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"2-D matrix.*shape \(3,\)"):
        numerical_rank(np.ones(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        numerical_rank(np.array([[1.0, np.nan]]))
    with pytest.raises(TypeError, match="2-D array of numbers"):
        numerical_rank([["a", "b"]])


# ---------------------------------------------------------------- low_rank_approx

@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (25, 25)])
@pytest.mark.parametrize("r", [0, 1, 3, 10, 20])
def test_eckart_young_errors_equal_direct_norms(shape, r):
    rng = np.random.default_rng(r + shape[0])
    M = rng.standard_normal(shape)
    M_r, info = low_rank_approx(M, r)
    D = M - M_r
    s = np.linalg.svd(M, compute_uv=False)
    assert info.rank == min(r, min(shape))
    assert numerical_rank(M_r) == info.rank
    assert abs(info.spectral_error - np.linalg.norm(D, 2)) < 1e-10
    assert abs(info.frobenius_error - np.linalg.norm(D, "fro")) < 1e-10
    assert abs(info.relative_error - np.linalg.norm(D, "fro") / np.linalg.norm(M, "fro")) < 1e-12
    assert abs(info.energy_kept - np.sum(s[:r] ** 2) / np.sum(s ** 2)) < 1e-12
    assert abs(info.energy_kept + info.relative_error ** 2 - 1.0) < 1e-12
    np.testing.assert_allclose(info.singular_values, s, rtol=1e-12, atol=1e-12)


def test_truncation_beats_other_rank_r_matrices():
    rng = np.random.default_rng(4)
    M = rng.standard_normal((15, 12))
    _, info = low_rank_approx(M, 3)
    for _ in range(50):
        X = random_rank_r(rng, 15, 12, 3)
        X *= np.linalg.norm(M) / np.linalg.norm(X)
        assert np.linalg.norm(M - X, "fro") > info.frobenius_error
        assert np.linalg.norm(M - X, 2) > info.spectral_error


def test_full_rank_returns_the_matrix_and_zero_rank_returns_zero():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((6, 4))
    M_full, info = low_rank_approx(M, 99)
    np.testing.assert_allclose(M_full, M, atol=1e-12)
    assert info.rank == 4 and info.spectral_error == 0.0 and info.frobenius_error == 0.0
    assert info.energy_kept == pytest.approx(1.0)
    M0, info0 = low_rank_approx(M, 0)
    assert np.all(M0 == 0) and info0.relative_error == pytest.approx(1.0) and info0.energy_kept == 0.0
    assert info0.spectral_error == pytest.approx(np.linalg.norm(M, 2), abs=1e-12)


def test_low_rank_of_zero_matrix_and_storage_ratio():
    Z, info = low_rank_approx(np.zeros((3, 5)), 2)
    assert np.all(Z == 0) and info.relative_error == 0.0 and info.energy_kept == 1.0
    _, info = low_rank_approx(np.ones((10, 30)), 2)
    assert info.storage_ratio == pytest.approx(2 * 40 / 300)


def test_exact_low_rank_matrix_is_recovered():
    rng = np.random.default_rng(6)
    M = random_rank_r(rng, 40, 25, 3)
    M3, info = low_rank_approx(M, 3)
    assert np.max(np.abs(M3 - M)) < 1e-10
    assert info.relative_error < 1e-12


def test_precomputed_svd_gives_the_same_answer():
    rng = np.random.default_rng(11)
    M = rng.standard_normal((9, 7))
    svd = linalg.thin_svd(M)
    for r in range(8):
        a, ia = low_rank_approx(M, r)
        b, ib = low_rank_approx(M, r, svd=svd)
        assert np.array_equal(a, b) and ia.frobenius_error == ib.frobenius_error
    with pytest.raises(ValueError, match="svd does not belong to a 9x7 matrix"):
        low_rank_approx(M, 2, svd=linalg.thin_svd(M.T))


def test_low_rank_rejects_bad_rank():
    with pytest.raises(ValueError, match="r must be >= 0"):
        low_rank_approx(np.eye(3), -1)
    with pytest.raises(TypeError, match="r must be an integer"):
        low_rank_approx(np.eye(3), 1.5)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), r=st.integers(0, 13), seed=st.integers(0, 10_000))
def test_low_rank_properties(m, n, r, seed):
    M = np.random.default_rng(seed).standard_normal((m, n))
    M_r, info = low_rank_approx(M, r)
    assert M_r.shape == (m, n)
    assert abs(info.frobenius_error - np.linalg.norm(M - M_r)) < 1e-10
    assert 0.0 <= info.energy_kept <= 1.0 + 1e-12


# ---------------------------------------------------------------- stable rank

def test_stable_rank():
    assert stable_rank(np.eye(5)) == pytest.approx(5.0)
    assert stable_rank(np.diag([2.0, 1.0])) == pytest.approx(1.25)
    assert stable_rank(np.outer([1, 2, 3], [1, 1])) == pytest.approx(1.0)
    assert stable_rank(np.zeros((3, 3))) == 0.0
    rng = np.random.default_rng(7)
    M = rng.standard_normal((20, 30))
    expected = np.linalg.norm(M, "fro") ** 2 / np.linalg.norm(M, 2) ** 2
    assert abs(stable_rank(M) - expected) < 1e-10
    assert 1.0 <= stable_rank(M) <= numerical_rank(M)


# ---------------------------------------------------------------- storage

def test_factorization_storage_and_break_even():
    st3 = factorization_storage(3, 3, 1)
    assert st3 == (6, 9) and st3.factored == 6 and st3.dense == 9 and st3.saves
    assert st3.ratio == pytest.approx(6 / 9)
    big = factorization_storage(12288, 12288, 4)
    assert big.factored == 2 * 12288 * 4 and big.ratio == pytest.approx(8 / 12288)
    assert break_even_rank(100, 100) == 50.0
    assert break_even_rank(3, 6) == pytest.approx(2.0)
    for m, n in [(7, 11), (64, 256), (768, 3072)]:
        be = break_even_rank(m, n)
        for r in range(1, min(m, n) + 1):
            assert factorization_storage(m, n, r).saves == (r < be)
    with pytest.raises(ValueError, match="m must be >= 1"):
        factorization_storage(0, 3, 1)
    with pytest.raises(TypeError, match="r must be an integer"):
        factorization_storage(3, 3, True)


def test_bytes_helpers():
    assert num_bytes(18_874_368, "float16") == 37_748_736
    assert num_bytes(18_874_368, "fp16") / 2 ** 20 == pytest.approx(36.0)   # "about 35 MB" in the paper
    assert num_bytes(10, "float32") == 40 and num_bytes(10, "bf16") == 20
    assert optimizer_state_bytes(1000) == 8000                             # AdamW: m and v in fp32
    assert optimizer_state_bytes(175_000_000_000) == 1_400_000_000_000
    with pytest.raises(ValueError, match="unknown dtype"):
        num_bytes(3, "float8")


# ---------------------------------------------------------------- subspace similarity

def test_subspace_similarity_identical_and_orthogonal():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((8, 64))
    assert subspace_similarity(A, A, 8, 8) == pytest.approx(1.0)
    assert subspace_similarity(A, 3.0 * A, 2, 5) == pytest.approx(1.0)    # scale does not matter
    E = np.eye(64)
    assert subspace_similarity(E[:4], E[4:8], 4, 4) == pytest.approx(0.0)
    # a subspace inside a bigger one: phi = 1 (divided by min(i, j))
    assert subspace_similarity(E[:2], E[:6], 2, 6) == pytest.approx(1.0)


def test_subspace_similarity_matches_definition():
    rng = np.random.default_rng(9)
    A1 = rng.standard_normal((8, 50))
    A2 = rng.standard_normal((16, 50))
    _, _, V1 = np.linalg.svd(A1)
    _, _, V2 = np.linalg.svd(A2)
    for i, j in [(1, 1), (3, 7), (8, 16), (8, 2)]:
        expected = np.linalg.norm(V1[:i] @ V2[:j].T, "fro") ** 2 / min(i, j)
        assert abs(subspace_similarity(A1, A2, i, j) - expected) < 1e-12
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (8, 16)
    for i in range(1, 9):
        for j in range(1, 17):
            assert abs(grid[i - 1, j - 1] - subspace_similarity(A1, A2, i, j)) < 1e-12
    assert np.all((grid >= -1e-12) & (grid <= 1 + 1e-12))


def test_random_subspaces_give_about_max_over_d():
    rng = np.random.default_rng(10)
    d = 400
    phis = [subspace_similarity(rng.standard_normal((8, d)), rng.standard_normal((64, d)), 8, 64)
            for _ in range(10)]
    assert np.mean(phis) == pytest.approx(64 / d, rel=0.15)


def test_subspace_similarity_errors():
    with pytest.raises(ValueError, match="same input space"):
        subspace_similarity(np.ones((2, 5)), np.ones((2, 6)), 1, 1)
    with pytest.raises(ValueError, match="i must be <="):
        subspace_similarity(np.eye(3), np.eye(3), 4, 1)


# ---------------------------------------------------------------- count_lora_params

def _real_contract():
    from minilora import lora, model

    for owner, name in [(model, "GPTConfig"), (model, "module_shapes"), (lora, "LoraConfig"), (lora, "target_matches")]:
        assert hasattr(owner, name), f"{owner.__name__} has no {name}; count_lora_params relies on it"
    return model, lora


def test_linalg_is_pure_numpy():
    """linalg sits below the model in the data flow: it imports no minilora module at all."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(linalg))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "dataclasses", "typing", "numpy"}, imported


def test_linalg_does_not_count_a_gpt_config():
    """Counting for a whole GPT config needs the model's shapes: it lives in lora_count, above the model."""
    assert not hasattr(linalg, "count_lora_params") and not hasattr(linalg, "lora_params_by_module")


def test_count_lora_params_is_r_times_in_plus_out_over_the_targets():
    model, lora = _real_contract()
    c = model.GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=16)

    def count(**kwargs):
        return count_lora_params(c, lora.LoraConfig(**kwargs))

    assert count(r=4, target_modules=["q_proj", "v_proj"]) == 2 * 2 * 4 * (16 + 16)   # layers, targets
    assert count(r=2, target_modules=["fc"]) == 2 * 2 * (16 + 64)                     # fc: 16 -> 64
    assert count(r=3, target_modules=["wte"]) == 3 * (65 + 16)                        # vocab x n_embd
    cfg = lora.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                          rank_pattern={"transformer.h.1.attn.v_proj": 8})
    by = lora_params_by_module(c, cfg)
    assert sorted(by) == [f"transformer.h.{i}.attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert by["transformer.h.1.attn.v_proj"] == 8 * 32 and by["transformer.h.0.attn.v_proj"] == 4 * 32
    assert count_lora_params(c, cfg) == 3 * 4 * 32 + 8 * 32


@pytest.mark.parametrize("r,expected", [(1, 4_718_592), (4, 18_874_368), (8, 37_748_736)])
def test_gpt3_numbers_from_the_paper(r, expected):
    model, lora = _real_contract()
    gpt3 = model.GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288)
    cfg = lora.LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"])
    n = count_lora_params(gpt3, cfg)
    l_hat = 96 * 2                                          # adapted matrices: Wq and Wv in 96 layers
    assert n == expected == 2 * l_hat * 12288 * r           # |Theta| = 2 * L_hat * d_model * r
    if r == 4:
        assert num_bytes(n, "float16") == 37_748_736          # about 35 MB ("35MB" in the paper)


def test_count_matches_a_built_model():
    """Counting from shapes equals counting the parameters of a real LoRA model."""
    model, lora = _real_contract()
    c = model.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cfg = lora.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc"])
    net = lora.apply_lora(model.GPT(c), cfg)
    n_lora = sum(int(np.prod(p.shape)) for name, p in net.named_parameters() if ".lora_" in name)
    assert count_lora_params(c, cfg) == n_lora
