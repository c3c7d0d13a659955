"""Adapter layers and prompt tuning: start as the base model, train only what they add."""
import numpy as np
import pytest

from minilora import backend, data
from minilora import functional as F
from minilora.methods import (BottleneckAdapter, PromptTuning, WithAdapter, adapter_layer_params,
                              apply_adapter_layers)
from minilora.pretrained import load_pretrained
from minilora.tensor import Tensor, no_grad


def _batch(n=4, seed=0):
    return data.make_batch(["inc"], n, 32, np.random.default_rng(seed))


def test_bottleneck_adapter_is_identity_at_init_and_has_the_right_maths():
    ad = BottleneckAdapter(6, 2)
    h = Tensor(np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32))
    assert np.array_equal(ad(h).numpy(), h.numpy())
    rng = np.random.default_rng(1)
    Wd, bd, Wu, bu = rng.standard_normal((2, 6)), rng.standard_normal(2), rng.standard_normal((6, 2)), rng.standard_normal(6)
    for p, v in ((ad.down.weight, Wd), (ad.down.bias, bd), (ad.up.weight, Wu), (ad.up.bias, bu)):
        p.data = backend.to_device(v, p.device)
    x = rng.standard_normal((3, 6))
    z = x @ Wd.T + bd
    gelu = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    assert np.allclose(ad(Tensor(x)).numpy(), x + gelu @ Wu.T + bu, atol=1e-12)


def test_adapter_layers_start_as_base_and_train_only_adapters():
    base = load_pretrained()
    model = apply_adapter_layers(load_pretrained(), bottleneck=4)
    x, y = _batch()
    with no_grad():
        assert np.array_equal(model(x).numpy(), base(x).numpy())
    C, L = base.config.n_embd, base.config.n_layer
    assert model.num_parameters(trainable_only=True) == 2 * L * adapter_layer_params(C, 4)
    assert all(isinstance(b.attn, WithAdapter) and isinstance(b.mlp, WithAdapter) for b in model.transformer.h)
    F.cross_entropy(model(x), y, ignore_index=data.IGNORE).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("adapter" in name), name
    # up starts at zero but gets a gradient; down gets none yet (up = 0 blocks it): as LoRA's B and A
    up = model.transformer.h[0].attn.adapter.up.weight
    assert np.abs(up.grad).max() > 0
    with pytest.raises(ValueError, match="already has an adapter"):
        apply_adapter_layers(model, 4)
    with pytest.raises(ValueError, match="where="):
        apply_adapter_layers(load_pretrained(), 4, where=("ffn",))


def test_prompt_tuning_shapes_context_and_gradients():
    base = load_pretrained()
    pt = PromptTuning(base, 5, seed=0)
    assert pt.config.block_size == base.config.block_size - 5
    assert pt.num_parameters(trainable_only=True) == 5 * base.config.n_embd
    x, y = _batch()
    logits = pt(x)
    assert logits.shape == (x.shape[0], x.shape[1], base.config.vocab_size)
    F.cross_entropy(logits, y, ignore_index=data.IGNORE).backward()
    grads = {n: p.grad for n, p in pt.named_parameters()}
    assert grads["prompt"] is not None and np.abs(grads["prompt"]).max() > 0
    assert all(g is None for n, g in grads.items() if n != "prompt")
    with pytest.raises(ValueError, match="T <= 27"):
        pt(np.zeros((1, 28), dtype=np.int64))
    with pytest.raises(ValueError, match="n_virtual"):
        PromptTuning(load_pretrained(), 32)


def test_prompt_tuning_prompt_changes_the_output_causally():
    """The prompt sits before the tokens: changing it changes every token's logits."""
    pt = PromptTuning(load_pretrained(), 3, seed=0)
    x, _ = _batch(2)
    with no_grad():
        before = pt(x).numpy()
        pt.prompt.data = pt.prompt.data + 1.0
        after = pt(x).numpy()
    assert np.abs(after - before).max(axis=-1).min() > 0
