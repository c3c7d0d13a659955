"""Arrays follow their data: a result lives where its inputs live, and set_device only
decides where new tensors and models are created.

These run on every machine: `fake_cupy` gives the backend a "GPU" whose arrays are
a NumPy subclass that refuses to meet host arrays, as CuPy's do. Each test checks
where every result, gradient and optimizer buffer lands, and that the numbers are
exactly the CPU's (the fake device computes with NumPy, so they must be equal).
"""
from __future__ import annotations

import numpy as np
import pytest
from fake_cupy import DeviceArray, fake_gpu

import minilora as ml
from minilora import backend, nn, optim
from minilora import functional as F
from minilora.lora import LoraConfig, apply_lora, merge_and_unload


@pytest.fixture
def gpu():
    with fake_gpu():
        yield


def on_gpu(array) -> bool:
    return isinstance(array, DeviceArray)


def on_cpu(array) -> bool:
    """A NumPy array, or the NumPy scalar a reduction of one gives."""
    return isinstance(array, (np.ndarray, np.generic)) and not isinstance(array, DeviceArray)


def tiny_gpt(seed=0, dropout=0.0):
    ml.manual_seed(seed)
    return ml.GPT(ml.GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=8,
                               dropout=dropout))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, (3, 8)), rng.integers(0, 17, (3, 8))


def one_step(model, x, y, lr=1e-2):
    """One AdamW step; returns the loss tensor and the optimizer."""
    opt = optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = F.cross_entropy(model(x).reshape(y.size, -1), y.reshape(-1))
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, opt


def everything(model, opt):
    """Every array a training step touches: weights, gradients, optimizer buffers."""
    arrays = {n: p.data for n, p in model.named_parameters()}
    arrays.update({n + ".grad": p.grad for n, p in model.named_parameters() if p.grad is not None})
    for i, state in enumerate(opt.state.values()):
        arrays.update({f"state{i}.{k}": v for k, v in state.items() if hasattr(v, "shape")})
    return arrays


# ----------------------------------------------------------------------------
# where new tensors go


def test_set_device_moves_nothing_that_exists(gpu):
    before = ml.Tensor([1.0, 2.0])
    ml.set_device("cuda")
    after = ml.Tensor([1.0, 2.0])
    assert on_cpu(before.data) and before.device == "cpu" and before.xp is np
    assert on_gpu(after.data) and after.device == "cuda"
    assert on_cpu((before * 2 + 1).exp().data)           # a CPU tensor's results stay on the CPU
    assert on_gpu((after * 2 + 1).exp().data)


def test_creation_functions_take_a_device_and_like_functions_follow_their_model(gpu):
    cpu = ml.ones(2, 3)
    ml.set_device("cuda")
    for make in (ml.zeros, ml.ones, ml.rand, ml.randn):
        assert on_gpu(make(2, 3).data) and on_cpu(make(2, 3, device="cpu").data)
    assert on_gpu(ml.arange(4).data) and on_gpu(ml.eye(3).data) and on_gpu(ml.full((2,), 1.5).data)
    assert on_cpu(ml.tensor([1, 2], device="cpu").data)
    for like in (ml.zeros_like, ml.ones_like, ml.rand_like, ml.randn_like):
        assert on_cpu(like(cpu).data), like.__name__      # *_like: the model tensor's device
    assert on_cpu(ml.full_like(cpu, 3.0).data)
    ml.set_device("cpu")
    assert on_gpu(ml.zeros(2, device="cuda").data)


def test_tensor_of_a_gpu_array_stays_and_device_argument_moves(gpu):
    ml.set_device("cuda")
    g = ml.Tensor([1.0, 2.0])
    ml.set_device("cpu")
    assert on_gpu(ml.Tensor(g).data) and on_gpu(ml.Tensor(g.data).data)
    assert on_cpu(ml.Tensor(g, device="cpu").data)
    assert on_gpu(ml.Tensor(np.ones(2), device="cuda").data)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ml.Tensor([1.0], device="tpu")


# ----------------------------------------------------------------------------
# results follow their inputs, whatever set_device says


def test_to_and_detach_go_where_they_are_told_and_nowhere_else(gpu):
    ml.set_device("cuda")
    x = ml.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    host = (x * 2).to("cpu")                     # the default is cuda; .to("cpu") still means cpu
    assert on_cpu(host.data) and on_cpu(host.detach().data)
    host.sum().backward()                        # the gradient goes back to the GPU
    assert on_gpu(x.grad) and np.array_equal(backend.to_numpy(x.grad), [2.0, 2.0, 2.0])
    assert on_cpu((host > 1).data) and on_cpu(host.argmax().data) and on_cpu(host.max(0).indices.data)
    assert on_cpu(host.astype(np.int64).data) and on_cpu(host.isnan().data)


OPS = {
    "add, mul, div, pow": lambda a, b: (a + b * 2 - 1 / (b * b + 1)) ** 2 + a ** b.abs(),
    "matmul, T": lambda a, b: a @ b.T,
    "exp, log, tanh, sigmoid, relu, sqrt": lambda a, b: (a.exp() + (b * b + 1).log() + a.tanh()
                                                         + b.sigmoid() + a.relu() + (b * b).sqrt()),
    "sum, mean, var, std": lambda a, b: a.sum(0) + a.mean(1, keepdim=True) + b.var(0) + b.std(),
    "max, min, amax, logsumexp": lambda a, b: a.max(1).values + b.min(1).values + a.amax(0).sum()
                                              + a.logsumexp(1),
    "where, masked_fill, clamp, maximum": lambda a, b: (ml.where(a > b, a, b) + a.masked_fill(b < 0, 0.5)
                                                        + a.clamp(-0.5, 0.5) + ml.maximum(a, b)),
    "indexing, gather, cat, stack": lambda a, b: (a[[0, 2, 2]].sum() + a[:, 1:].sum(1).sum()
                                                  + a.gather(1, np.array([[0, 1, 1, 0]] * 3)).sum()
                                                  + ml.cat([a, b]).sum() + ml.stack([a, b]).mean()),
    "reshape, permute, expand, tril": lambda a, b: (a.reshape(4, 3).permute(1, 0) * 2).sum()
                                                   + b[:1].expand(3, 4).tril().sum(),
    "cumsum, prod, einsum": lambda a, b: a.cumsum(1).sum() + (b * 0.1 + 1).prod(1).sum()
                                         + ml.einsum("ij,kj->ik", a, b).sum(),
    "softmax, log_softmax": lambda a, b: F.softmax(a, dim=-1) + F.log_softmax(b, dim=0),
    "gelu (both), layer_norm": lambda a, b: (F.gelu(a) + F.gelu(b, approximate="tanh")
                                             + F.layer_norm(a, (4,))),
    "losses": lambda a, b: (F.cross_entropy(a, np.array([0, 3, 1])) + F.mse_loss(a, b)
                            + F.nll_loss(F.log_softmax(a, dim=-1), [1, -100, 2])
                            + F.binary_cross_entropy_with_logits(a, (b > 0).float())
                            + F.cross_entropy(a, np.array([0, 3, 1]), weight=np.ones(4),
                                              label_smoothing=0.1)),
    "embedding, one_hot": lambda a, b: (F.embedding(np.array([[1, 1], [0, 2]]), a).sum()
                                        + (F.one_hot(ml.tensor([1, 3], device=b.device), 4) * b[:2]).sum()),
    "attention": lambda a, b: F.scaled_dot_product_attention(a[None], b[None], a[None],
                                                             is_causal=True).sum(),
}


@pytest.mark.parametrize("name", list(OPS))
def test_every_result_and_gradient_stays_on_its_device_with_the_same_numbers(gpu, name):
    rng = np.random.default_rng(0)
    a0, b0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def run(device):
        a = ml.Tensor(a0, requires_grad=True, device=device)
        b = ml.Tensor(b0, requires_grad=True, device=device)
        out = OPS[name](a, b)
        out.sum().backward()
        return out, a, b

    ml.set_device("cuda")                        # the default must not pull the CPU run over
    host, ha, hb = run("cpu")
    assert on_cpu(host.data) and on_cpu(ha.grad) and on_cpu(hb.grad)
    ml.set_device("cpu")                         # nor push the GPU run back
    dev, da, db = run("cuda")
    assert on_gpu(dev.data) and on_gpu(da.grad) and on_gpu(db.grad)
    for mine, theirs in ((dev.data, host.data), (da.grad, ha.grad), (db.grad, hb.grad)):
        assert np.array_equal(backend.to_numpy(mine), theirs, equal_nan=True)


def test_dropout_masks_are_drawn_on_the_inputs_device(gpu):
    ml.set_device("cuda")
    x = ml.ones(4, 5, device="cpu")
    assert on_cpu(F.dropout(x, 0.5, training=True).data)
    ml.set_device("cpu")
    assert on_gpu(F.dropout(ml.ones(4, 5, device="cuda"), 0.5, training=True).data)


# ----------------------------------------------------------------------------
# models: built where set_device says, trained where they are


def test_a_lora_training_step_keeps_every_array_on_the_models_device(gpu):
    x, y = batch()
    cpu_model = tiny_gpt()
    ml.set_device("cuda")
    gpu_model = tiny_gpt()
    assert all(on_gpu(p.data) for p in gpu_model.parameters())
    assert all(on_cpu(p.data) for p in cpu_model.parameters())    # set_device moved nothing
    results = {}
    for name, model, where in (("cpu", cpu_model, on_cpu), ("cuda", gpu_model, on_gpu)):
        ml.manual_seed(1)                          # the same A for both
        model = apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights="gaussian"))
        loss, opt = one_step(model, x, y)          # host ids and targets go to the model
        arrays = everything(model, opt)
        misplaced = [k for k, v in arrays.items() if not where(v)]
        assert where(loss.data) and not misplaced, (name, misplaced)
        assert any(k.startswith("state") for k in arrays)
        results[name] = {k: backend.to_numpy(v) for k, v in arrays.items()}
    assert results["cpu"].keys() == results["cuda"].keys()
    for k in results["cpu"]:
        assert np.array_equal(results["cpu"][k], results["cuda"][k]), k


def test_full_training_with_dropout_then_merge_and_generate_on_the_gpu(gpu):
    ml.set_device("cuda")
    model = tiny_gpt(dropout=0.1)
    model.train()
    x, y = batch(1)
    loss, opt = one_step(model, x, y)
    assert on_gpu(loss.data) and all(on_gpu(v) for v in everything(model, opt).values())
    merged = merge_and_unload(apply_lora(model, LoraConfig(r=2, target_modules=["fc"])))
    assert all(on_gpu(p.data) for p in merged.parameters())
    model.eval()
    assert on_gpu(merged(x).data)
    out = merged.generate(np.array([[1, 2]]), max_new_tokens=3)
    assert np.asarray(out).shape == (1, 5)


def test_a_model_moved_back_to_the_cpu_trains_there_while_the_default_is_cuda(gpu):
    ml.set_device("cuda")
    model = tiny_gpt().to("cpu")
    loss, opt = one_step(model, *batch())
    assert on_cpu(loss.data) and all(on_cpu(v) for v in everything(model, opt).values())
    layer = nn.Embedding.from_pretrained(model.transformer.wte.weight)   # a copy stays on its device
    assert on_cpu(layer.weight.data)
    assert on_gpu(nn.Linear(2, 3).weight.data) and on_cpu(nn.Linear(2, 3, device="cpu").weight.data)


def test_mixing_devices_in_one_op_is_an_error_as_on_a_real_gpu(gpu):
    ml.set_device("cuda")
    g = ml.ones(3)
    with pytest.raises(TypeError, match="CuPy would refuse"):
        g + ml.ones(3, device="cpu")
