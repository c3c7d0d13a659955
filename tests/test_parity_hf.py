"""Parity: minilora's GPT against Hugging Face transformers' GPT-2 and a PyTorch twin.

* transformers: a tiny GPT-2 with random weights (no download) is saved with
  save_pretrained and loaded by `minilora.load_gpt2`; the logits must agree to
  1e-4 absolute in float32 (both sides do the same float32 arithmetic in a
  different order: the observed error is ~1e-6 on logits of size ~5, while a
  wrong mapping, such as an untransposed Conv1D weight or q and k swapped,
  changes the logits by O(1)).
* benchmarks/torch_gpt.py: the same GPT written in PyTorch with identical
  parameter names. In float64 the logits, every parameter gradient and ten
  AdamW training steps must agree to helpers.PARITY_RTOL (1e-6 relative; the
  observed agreement is ~1e-14).
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import PARITY_RTOL, rel_err, requires_torch, to_np

import minilora as ml
from minilora import functional as F
from minilora.train import TrainConfig, learning_rate, train

pytestmark = [pytest.mark.parity, requires_torch]

torch = pytest.importorskip("torch")
TF = torch.nn.functional

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "benchmarks" / "torch_gpt.py")
torch_gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_gpt)

HF = dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4)
HF_ATOL = 1e-4


# ----------------------------------------------------------------------------
# transformers GPT-2 -> load_gpt2


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """(model, directory): a random tiny GPT-2, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**HF, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():   # weights of size O(0.2) so the logits are O(1), not O(0.01)
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(directory)
    return model, directory


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def ml_logits(model, ids) -> np.ndarray:
    with ml.no_grad():
        return model(ids).numpy()


def token_batch(seed=0, shape=(2, HF["n_positions"])):
    return np.random.default_rng(seed).integers(0, HF["vocab_size"], shape)


def hf_state(hf_model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in hf_model.state_dict().items()}


def test_load_gpt2_directory_matches_transformers_logits(hf_gpt2):
    hf, directory = hf_gpt2
    model = ml.load_gpt2(directory)
    assert model.config == ml.GPTConfig(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=48)
    ids = token_batch()
    ref = hf_logits(hf, ids)
    ours = ml_logits(model, ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0, "logits too small for the tolerance to mean anything"
    err = np.abs(ours - ref).max()
    print(f"HF GPT-2 logits: max |minilora - transformers| = {err:.2e} (max |logit| {np.abs(ref).max():.2f})")
    assert err <= HF_ATOL


def test_load_gpt2_from_the_safetensors_file_alone_with_n_head(hf_gpt2, tmp_path):
    hf, directory = hf_gpt2
    lone = tmp_path / "weights.safetensors"               # no config.json beside it
    shutil.copy(directory / "model.safetensors", lone)
    with pytest.raises(ValueError, match="n_head"):
        ml.load_gpt2(lone)
    model = ml.load_gpt2(lone, n_head=4)
    assert model.config.n_head == 4
    ids = token_batch(1, (3, 17))
    assert np.abs(ml_logits(model, ids) - hf_logits(hf, ids)).max() <= HF_ATOL


def test_load_gpt2_from_a_dict_of_arrays(hf_gpt2):
    hf, _ = hf_gpt2
    state = hf_state(hf)      # with the transformer. prefix and the tied lm_head.weight
    assert "lm_head.weight" in state
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((32, 32)))[None, None]   # an old mask buffer
    model = ml.load_gpt2(state, n_head=4)
    ids = token_batch(2)
    assert np.abs(ml_logits(model, ids) - hf_logits(hf, ids)).max() <= HF_ATOL
    # also without the "transformer." prefix (the GPT2Model layout)
    bare = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    assert np.array_equal(ml_logits(ml.load_gpt2(bare, n_head=4), ids), ml_logits(model, ids))


def test_load_gpt2_with_a_wrong_n_head_gives_different_logits(hf_gpt2):
    """n_head is not in the weights' shapes, so it matters that it is read correctly."""
    hf, _ = hf_gpt2
    ids = token_batch(3)
    wrong = ml.load_gpt2(hf_state(hf), n_head=2)
    assert np.abs(ml_logits(wrong, ids) - hf_logits(hf, ids)).max() > 100 * HF_ATOL


def test_load_gpt2_unknown_key_is_an_error_listing_it(hf_gpt2):
    hf, _ = hf_gpt2
    state = hf_state(hf)
    state["transformer.h.1.attn.rotary.weight"] = np.zeros((48, 48), np.float32)
    state["transformer.extra_head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match="unknown keys") as info:
        ml.load_gpt2(state, n_head=4)
    assert "h.1.attn.rotary.weight" in str(info.value) and "extra_head.weight" in str(info.value)


def test_load_gpt2_missing_key_is_an_error_listing_it(hf_gpt2):
    hf, _ = hf_gpt2
    state = hf_state(hf)
    del state["transformer.h.2.mlp.c_fc.bias"]
    del state["transformer.ln_f.weight"]
    with pytest.raises(KeyError, match=r"missing keys.*h\.2\.mlp\.fc\.bias.*ln_f\.weight"):
        ml.load_gpt2(state, n_head=4)
    del state["transformer.wte.weight"]
    with pytest.raises(KeyError, match="not a GPT-2 checkpoint"):
        ml.load_gpt2(state, n_head=4)


def test_load_gpt2_untied_lm_head_is_an_error(hf_gpt2):
    hf, _ = hf_gpt2
    state = hf_state(hf)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        ml.load_gpt2(state, n_head=4)


@pytest.mark.parametrize("key, value, message", [
    ("activation_function", "relu", "activation 'relu' is not GPT-2's tanh GELU"),
    ("activation_function", "gelu", "activation 'gelu' is not GPT-2's tanh GELU"),
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon=1e-06"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True")])
def test_load_gpt2_config_it_cannot_reproduce_is_an_error(hf_gpt2, tmp_path, key, value, message):
    _, directory = hf_gpt2
    copy = tmp_path / "variant"
    shutil.copytree(directory, copy)
    config = json.loads((copy / "config.json").read_text())
    config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)):
        ml.load_gpt2(copy)


def test_load_gpt2_corrupt_or_absent_weights_are_clear_errors(hf_gpt2, tmp_path):
    _, directory = hf_gpt2
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((directory / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{broken}.*truncated or corrupt"):
        ml.load_gpt2(broken, n_head=4)
    with pytest.raises(FileNotFoundError, match="no weights"):
        ml.load_gpt2(tmp_path / "nowhere")


# ----------------------------------------------------------------------------
# the PyTorch twin, float64


def small_gpt(bias=True, seed=0) -> ml.GPT:
    """A small GPT in float64 with every parameter perturbed (no all-ones gains or
    all-zero biases that could hide an error)."""
    ml.manual_seed(seed)
    model = ml.GPT(ml.GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=4, n_embd=32,
                                bias=bias))
    rng = np.random.default_rng(seed + 1)
    for p in model.parameters():
        p.data = p.xp.asarray(to_np(p.data) + rng.normal(0, 0.2, p.shape).astype(np.float32))
    return model.to(np.float64)


IGNORE = -100   # minilora's (and PyTorch's) ignore_index; passed to both sides explicitly


def targets_with_ignored(rng, shape, vocab):
    y = rng.integers(0, vocab, shape)
    y[rng.random(shape) < 0.2] = IGNORE
    return y


def twin(model):
    return torch_gpt.twin_of(model, dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_logits_and_every_gradient_equal_the_torch_twin_float64(bias):
    model = small_gpt(bias)
    tmodel = twin(model)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 37, (3, 12))
    y = targets_with_ignored(rng, (3, 12), 37)

    logits = model(x)
    F.cross_entropy(logits, y, ignore_index=IGNORE).backward()
    tlogits = tmodel(torch.from_numpy(x))
    TF.cross_entropy(tlogits.reshape(-1, 37), torch.from_numpy(y).reshape(-1),
                     ignore_index=IGNORE).backward()

    logit_err = rel_err(logits, tlogits)
    assert logit_err <= PARITY_RTOL, f"logits: {logit_err:.2e}"
    ours = dict(model.named_parameters())
    theirs = dict(tmodel.named_parameters())
    assert set(ours) == set(theirs)
    # The gradient of the key bias is exactly zero in exact arithmetic (adding q.b_k to
    # every score of a row leaves the softmax unchanged): both sides hold rounding noise
    # of ~1e-17 there, so a relative error is meaningless. Errors are measured relative
    # to max(||grad||, 1e-8), far below every genuine gradient (~1e-3 and up).
    k_bias = [n for n in ours if n.endswith("k_proj.bias")]
    assert all(np.abs(to_np(ours[n].grad)).max() <= 1e-12 for n in k_bias)
    worst = max((rel_err(ours[n].grad, theirs[n].grad, tiny=1e-8), n) for n in ours)
    assert min(np.linalg.norm(to_np(ours[n].grad)) for n in ours if n not in k_bias) > 1e-5
    genuine = max(rel_err(ours[n].grad, theirs[n].grad) for n in ours if n not in k_bias)
    print(f"float64 twin (bias={bias}): logits rel err {logit_err:.1e}, gradients rel err "
          f"{genuine:.1e}, worst with the 1e-8 floor {worst[0]:.1e} ({worst[1]})")
    assert worst[0] <= PARITY_RTOL, f"gradient of {worst[1]}: {worst[0]:.2e}"


def test_ten_adamw_training_steps_equal_torch_float64():
    model = small_gpt(seed=3)
    tmodel = twin(model)
    rng = np.random.default_rng(9)
    batches = []
    for _ in range(10):                                   # a learnable task: next token is x + 1
        x = rng.integers(0, 37, (4, 12))
        y = (x + 1) % 37
        y[rng.random(y.shape) < 0.2] = IGNORE
        batches.append((x, y))
    cfg = TrainConfig(steps=10, lr=2e-2, warmup=3, min_lr_ratio=0.1, weight_decay=0.1,
                      betas=(0.8, 0.95), grad_clip=1.0, ignore_index=IGNORE)

    result = train(model, lambda step: batches[step], cfg, progress=False)

    params = list(tmodel.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    losses, norms = [], []
    for step, (x, y) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = TF.cross_entropy(tmodel(torch.from_numpy(x)).reshape(-1, 37),
                                torch.from_numpy(y).reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
        opt.step()
        losses.append(loss.item())

    ours, theirs = np.array(result.losses), np.array(losses)
    assert theirs[-1] < theirs[0] - 0.3, "the run must move, or equal curves would prove little"
    assert any(n > cfg.grad_clip for n in norms), "gradient clipping never acted"
    curve_err = np.max(np.abs(ours - theirs) / np.abs(theirs))
    torch_state = tmodel.state_dict()
    weight_err, worst = max((rel_err(v, torch_state[k]), k) for k, v in model.state_dict().items())
    print(f"10 AdamW steps float64: loss {theirs[0]:.3f} -> {theirs[-1]:.3f}, curve rel err "
          f"{curve_err:.1e}, final weights {weight_err:.1e} ({worst})")
    assert curve_err <= PARITY_RTOL
    assert weight_err <= PARITY_RTOL
