"""minilora.model: the GPT's shapes, causality, names, counts, attention, generation and errors.

Parity with PyTorch and transformers lives in test_parity_hf.py; here the model
is checked against its own definition. Models are tiny so the file runs in a
few seconds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import rel_err, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import minilora as ml
from minilora import backend, nn
from minilora import functional as F
from minilora.model import GPT, GPTConfig, module_shapes

V, BLOCK = 29, 8


def tiny(dropout=0.0, bias=True, n_layer=2, seed=0, **overrides) -> GPT:
    ml.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=BLOCK, n_layer=n_layer, n_head=2, n_embd=16,
               dropout=dropout, bias=bias)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))


def perturb(model: GPT, scale=0.3, seed=1) -> GPT:
    """Add noise to every parameter (also LayerNorm gains and zero biases), so that no
    weight is a special value that could hide a mistake, and logits are O(1)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = p.data + p.xp.asarray(rng.normal(0, scale, p.shape).astype(p.dtype))
    return model


MODEL = tiny()   # shared by the tests that only read it


def ids(shape, seed=0, vocab=V):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def forward(model, x) -> np.ndarray:
    with ml.no_grad():
        return model(x).numpy()


# ----------------------------------------------------------------------------
# shapes, dtypes, causality


@settings(max_examples=8)
@given(B=st.integers(1, 3), T=st.integers(1, BLOCK))
def test_logits_have_shape_batch_time_vocab(B, T):
    model = MODEL
    out = model(ids((B, T), seed=B * 10 + T))
    assert out.shape == (B, T, V)


def test_float32_stays_float32_and_float64_stays_float64():
    model = tiny()
    assert all(p.dtype == np.float32 for p in model.parameters())
    x, y = ids((2, BLOCK)), ids((2, BLOCK), seed=1)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    loss.backward()
    assert {str(p.grad.dtype) for p in model.parameters()} == {"float32"}

    model.to(np.float64)
    logits = model(x)
    assert logits.dtype == np.float64
    F.cross_entropy(logits, y).backward()
    assert {str(p.grad.dtype) for p in model.parameters()} == {"float64"}


def test_changing_token_t_changes_no_logit_before_t():
    model = perturb(tiny()).to(np.float64)
    x = ids((2, BLOCK), seed=3)
    base = forward(model, x)
    for t in range(BLOCK):
        x2 = x.copy()
        x2[:, t] = (x2[:, t] + 1 + t) % V
        out = forward(model, x2)
        before = np.abs(out[:, :t] - base[:, :t]).max(initial=0.0)
        at_and_after = np.abs(out[:, t:] - base[:, t:]).max()
        assert before <= 1e-12, f"changing token {t} changed an earlier logit by {before:.3e}"
        # the change does reach position t itself: the test could see a leak if there were one
        assert at_and_after > 1e-3, f"changing token {t} changed nothing at or after it"


def test_each_row_of_a_batch_is_computed_independently():
    model = perturb(tiny()).to(np.float64)
    x = ids((3, BLOCK), seed=4)
    together = forward(model, x)
    for b in range(3):
        alone = forward(model, x[b:b + 1])
        assert np.abs(alone[0] - together[b]).max() <= 1e-12


# ----------------------------------------------------------------------------
# names, tying, counts, module_shapes


def expected_names(n_layer, bias=True):
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    suffixes = ("weight", "bias") if bias else ("weight",)
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        for module in ("ln_1", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                       "ln_2", "mlp.fc", "mlp.proj"):
            names += [h + module + "." + s for s in suffixes]
    names += ["transformer.ln_f." + s for s in suffixes]
    return names


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_are_exactly_the_documented_ones(bias):
    model = tiny(bias=bias, n_layer=3)
    names = [n for n, _ in model.named_parameters()]
    assert names == expected_names(3, bias)
    assert list(model.state_dict()) == names


def test_lm_head_is_tied_to_wte_one_parameter_listed_once():
    model = tiny()
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    assert model.lm_head.bias is None
    all_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert "lm_head.weight" in all_names                 # it is there...
    assert "lm_head.weight" not in dict(model.named_parameters())   # ...and listed once
    assert sum(p is wte for p in model.parameters()) == 1
    # both uses send their gradient into the one parameter: the output-head part
    # alone is nonzero for every row, the embedding part only for rows in the batch
    x = np.zeros((1, 4), dtype=np.int64)                 # only token 0 is looked up
    F.cross_entropy(model(x), np.ones((1, 4), dtype=np.int64)).backward()
    g = to_np(wte.grad)
    assert np.all(np.abs(g[1:]).sum(axis=1) > 0), "rows never looked up got no gradient from lm_head"


def parameter_formula(V, T, L, C, bias):
    b = 1 if bias else 0
    attn = 4 * (C * C + b * C)
    mlp = (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)
    norms = 2 * (C + b * C)
    return V * C + T * C + L * (attn + mlp + norms) + (C + b * C)   # wte, wpe, blocks, ln_f


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_layer, n_embd, n_head", [(1, 8, 2), (3, 24, 4)])
def test_parameter_count_formula(bias, n_layer, n_embd, n_head):
    model = tiny(bias=bias, n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    expected = parameter_formula(V, BLOCK, n_layer, n_embd, bias)
    assert model.num_parameters() == expected
    assert sum(p.size for p in model.parameters()) == expected
    if bias and n_layer == 1:
        # 12 L C^2 + 13 L C + (V + T + 2) C, the usual closed form
        assert expected == 12 * n_embd ** 2 + 13 * n_embd + (V + BLOCK + 2) * n_embd


@pytest.mark.parametrize("bias", [True, False])
def test_module_shapes_equal_the_built_models_linears_and_embeddings(bias):
    config = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=3, n_head=4, n_embd=24, bias=bias)
    model = GPT(config)
    built = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            built[name] = ("linear", m.in_features, m.out_features)
            assert m.weight.shape == (m.out_features, m.in_features)
        elif isinstance(m, nn.Embedding):
            built[name] = ("embedding", m.num_embeddings, m.embedding_dim)
            assert m.weight.shape == (m.num_embeddings, m.embedding_dim)
    assert module_shapes(config) == built
    assert len(built) == 2 + 6 * 3 + 1


def test_module_shapes_counts_gpt3_without_building_it():
    cfg = GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288)
    shapes = module_shapes(cfg)
    # weight matrices, lm_head excluded (tied to wte): the paper's "175B"
    total = sum(a * b for name, (_, a, b) in shapes.items() if name != "lm_head")
    assert 174e9 < total < 176e9
    assert shapes["transformer.h.95.attn.q_proj"] == ("linear", 12288, 12288)


# ----------------------------------------------------------------------------
# fused attention == its composition from primitives


def attention_composed(q, k, v, keep=None):
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))           # [B, H, T, T]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    p = F.softmax(scores.masked_fill(future, -np.inf), axis=-1)
    if keep is not None:
        p = p * keep
    return p @ v                                                              # [B, H, T, D]


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 3), (1, 2, 7, 1)])
def test_fused_causal_attention_equals_its_composition(shape, dropout_p):
    rng = np.random.default_rng(sum(shape))
    arrays = [rng.standard_normal(shape) for _ in range(3)]
    weights = rng.standard_normal(shape)

    def run(fn):
        q, k, v = (ml.Tensor(a, requires_grad=True) for a in arrays)
        out = fn(q, k, v)
        out.backward(weights)
        return out.numpy(), [to_np(t.grad) for t in (q, k, v)]

    ml.manual_seed(7)
    fused, fused_grads = run(lambda q, k, v: F.causal_attention(q, k, v, dropout_p, training=True))
    keep = None
    if dropout_p:
        ml.manual_seed(7)                                 # the same mask the fused op drew
        B, H, T, _ = shape
        keep = ml.Tensor((backend.random_uniform((B, H, T, T), ml.default_device()) >= dropout_p).astype(np.float64)
                         / (1 - dropout_p))
    composed, composed_grads = run(lambda q, k, v: attention_composed(q, k, v, keep))
    assert fused.dtype == np.float64
    assert rel_err(fused, composed) <= 1e-6
    for name, g, g_ref in zip("qkv", fused_grads, composed_grads):
        assert rel_err(g, g_ref) <= 1e-6, f"d{name}"


def test_fused_causal_attention_in_eval_mode_ignores_dropout():
    rng = np.random.default_rng(0)
    q, k, v = (ml.Tensor(rng.standard_normal((1, 2, 4, 3))) for _ in range(3))
    a = F.causal_attention(q, k, v, 0.5, training=False).numpy()
    b = attention_composed(q, k, v).numpy()
    assert rel_err(a, b) <= 1e-12


# ----------------------------------------------------------------------------
# dropout: train() vs eval()


def test_train_mode_dropout_differs_between_calls_eval_mode_is_deterministic():
    model = tiny(dropout=0.3)
    x = ids((2, BLOCK))
    model.train()
    a, b = forward(model, x), forward(model, x)
    assert np.abs(a - b).max() > 1e-4, "dropout > 0 in train mode should change the output"
    model.eval()
    c, d = forward(model, x), forward(model, x)
    assert np.array_equal(c, d)
    no_dropout = tiny(dropout=0.0, seed=123)
    no_dropout.load_state_dict(model.state_dict())
    no_dropout.train()
    # eval mode is exactly the network without dropout
    assert np.abs(c - forward(no_dropout, x)).max() <= 1e-6


# ----------------------------------------------------------------------------
# generate


def test_greedy_generation_is_deterministic_and_picks_the_argmax():
    model = perturb(tiny())
    prompt = ids((2, 3), seed=5)
    out = model.generate(prompt, max_new_tokens=4)
    assert isinstance(out, np.ndarray) and out.shape == (2, 7)
    assert np.array_equal(out[:, :3], prompt)
    assert np.array_equal(out, model.generate(prompt, max_new_tokens=4))
    for t in range(3, 7):
        logits = forward(model, out[:, :t])[:, -1]
        assert np.array_equal(out[:, t], logits.argmax(axis=-1)), f"token {t} is not the argmax"


def test_generate_restores_training_mode():
    model = tiny(dropout=0.2)
    model.train()
    model.generate(ids((1, 2)), max_new_tokens=1)
    assert model.training and all(m.training for m in model.modules())


def test_sampling_is_reproducible_with_a_seed():
    model = perturb(tiny())
    prompt = ids((2, 2), seed=6)
    a = model.generate(prompt, 6, temperature=1.5, seed=11)
    b = model.generate(prompt, 6, temperature=1.5, seed=11)
    c = model.generate(prompt, 6, temperature=1.5, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c), "different seeds gave the same 12 samples"
    # top_k=1 is greedy whatever the temperature
    assert np.array_equal(model.generate(prompt, 6, temperature=3.0, top_k=1, seed=1),
                          model.generate(prompt, 6))


def test_top_k_sampling_draws_only_from_the_k_most_likely():
    model = perturb(tiny())
    prompt = ids((3, 2), seed=8)
    out = model.generate(prompt, 5, temperature=5.0, top_k=3, seed=0)
    for t in range(2, 7):
        logits = forward(model, out[:, :t])[:, -1]
        top3 = np.argsort(logits, axis=-1)[:, -3:]
        assert all(out[b, t] in top3[b] for b in range(3)), f"token {t} is outside the top 3"


def test_generate_crops_the_context_to_block_size():
    model = perturb(tiny())
    prompt = ids((2, BLOCK), seed=9)                      # already a full context
    out = model.generate(prompt, max_new_tokens=5)
    assert out.shape == (2, BLOCK + 5)
    for t in range(BLOCK, BLOCK + 5):
        logits = forward(model, out[:, t - BLOCK:t])[:, -1]   # the last BLOCK tokens only
        assert np.array_equal(out[:, t], logits.argmax(axis=-1))


# ----------------------------------------------------------------------------
# errors name the values


def test_sequence_longer_than_block_size_is_an_error_naming_both():
    with pytest.raises(ValueError, match=rf"{BLOCK + 1} tokens.*block_size={BLOCK}"):
        MODEL(ids((1, BLOCK + 1)))


@pytest.mark.parametrize("bad", [V, V + 10, -1])
def test_token_id_outside_the_vocabulary_is_an_error_naming_it(bad):
    x = ids((2, 4))
    x[1, 2] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} .*vocabulary of {V}"):
        MODEL(x)


def test_one_dimensional_ids_are_an_error_showing_the_shape_and_the_fix():
    with pytest.raises(ValueError, match=r"\(5,\).*ids\[None, :\]"):
        MODEL(np.arange(5))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        MODEL.generate(np.arange(5), max_new_tokens=1)


def test_float_ids_are_an_error_naming_the_dtype():
    with pytest.raises(ValueError, match="float64"):
        MODEL(np.zeros((1, 3)))


def test_config_with_n_embd_not_divisible_by_n_head_names_both():
    with pytest.raises(ValueError, match=r"n_embd=30.*n_head=4"):
        GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=4, n_embd=30)


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("vocab_size", -3), ("n_head", 2.5)])
def test_config_rejects_non_positive_or_non_integer_sizes(field, value):
    cfg = dict(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    cfg[field] = value
    with pytest.raises(ValueError, match=rf"{field}={value}"):
        GPTConfig(**cfg)


def test_negative_temperature_is_an_error():
    with pytest.raises(ValueError, match="temperature=-1"):
        MODEL.generate(ids((1, 2)), 1, temperature=-1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), r"max_new_tokens=-1 must be an integer >= 0"),
    (dict(max_new_tokens=2.0), r"max_new_tokens=2.0 must be an integer"),
    (dict(max_new_tokens=1, temperature=float("nan")), r"temperature=nan must be a number >= 0"),
    (dict(max_new_tokens=1, temperature="hot"), r"temperature='hot' must be a number"),
    (dict(max_new_tokens=1, temperature=1.0, top_k=0), r"top_k=0 must be a positive integer"),
])
def test_generate_refuses_nonsense_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MODEL.generate(ids((1, 2)), **kwargs)


def test_config_refuses_a_bool_size():
    with pytest.raises(ValueError, match=r"vocab_size=True must be a positive integer"):
        GPTConfig(vocab_size=True, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
