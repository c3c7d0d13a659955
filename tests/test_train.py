"""minilora.train: the schedule, the loop (learning, freezing, NaN guard, evaluation)
and checkpoints (round trip, atomic writes, clear errors on bad files).

The task is "predict x + 1 mod V": learnable by a one-layer GPT in a few dozen
steps, so the loop is checked to learn, not merely to run.
"""
from __future__ import annotations

import errno
import importlib
import json
import math
import os
import time

import numpy as np
import pytest

import minilora as ml
from minilora import backend, files
from minilora.files import read_safetensors
from minilora.model import GPT, GPTConfig
from minilora.train import (TrainConfig, evaluate_loss, learning_rate, load_checkpoint, logits_fn,
                            save_checkpoint, train)

# the module (minilora.train, the attribute of the package, is the function train())
train_module = importlib.import_module("minilora.train")

V, BLOCK = 11, 8


def tiny(seed=0, **overrides) -> GPT:
    ml.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))


def successor_batches(seed=0, batch=16):
    """get_batch(step) for the task y = (x + 1) mod V, deterministic in (seed, step)."""
    def get_batch(step):
        x = np.random.default_rng([seed, step]).integers(0, V, (batch, BLOCK))
        return x, (x + 1) % V
    return get_batch


def host(p) -> np.ndarray:
    return backend.to_numpy(p.data).copy()


# ----------------------------------------------------------------------------
# learning-rate schedule


def test_learning_rate_warms_up_linearly_then_cosine_decays_to_the_floor_at_the_last_step():
    cfg = TrainConfig(steps=16, lr=0.5, warmup=5, min_lr_ratio=0.1)
    lrs = [learning_rate(s, cfg) for s in range(cfg.steps)]
    # warm-up: lr * (s + 1) / warmup, reaching lr exactly at its last step
    assert lrs[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-12)
    assert max(lrs) == pytest.approx(0.5, abs=1e-12)
    # cosine over steps 5..15: lr at the start, halfway at step 10, the floor at the last step
    assert lrs[5] == pytest.approx(0.5, abs=1e-12)
    assert lrs[10] == pytest.approx(0.05 + 0.5 * 0.45, abs=1e-12)
    assert lrs[15] == pytest.approx(0.05, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])), "decay is not monotone"
    for s in range(5, 16):   # the cosine formula itself
        progress = (s - 5) / 10
        assert lrs[s] == pytest.approx(0.05 + 0.225 * (1 + math.cos(math.pi * progress)), abs=1e-12)


def test_learning_rate_without_warmup_starts_at_lr():
    cfg = TrainConfig(steps=4, lr=1.0, warmup=0, min_lr_ratio=0.0)
    assert [learning_rate(s, cfg) for s in range(4)] == pytest.approx([1.0, 0.75, 0.25, 0.0], abs=1e-12)


def test_train_uses_the_schedule():
    cfg = TrainConfig(steps=6, lr=1e-3, warmup=2)
    result = train(tiny(), successor_batches(), cfg, progress=False)
    assert result.lrs == [learning_rate(s, cfg) for s in range(6)]
    assert len(result.losses) == 6


# ----------------------------------------------------------------------------
# the loop learns, trains only what requires grad


def test_train_lowers_the_loss_on_a_learnable_task():
    model = tiny()
    held_out = [successor_batches(seed=99)(i) for i in range(2)]
    before = evaluate_loss(model, held_out)
    assert before == pytest.approx(math.log(V), rel=0.1)          # chance level at init
    result = train(model, successor_batches(), TrainConfig(steps=60, lr=1e-2, warmup=5),
                   progress=False)
    after = evaluate_loss(model, held_out)
    assert after < 0.25 * before, f"held-out loss {before:.3f} -> {after:.3f}"
    assert np.mean(result.losses[-5:]) < 0.25 * np.mean(result.losses[:5])
    # and it predicts the successor
    pred = logits_fn(model)(held_out[0][0]).argmax(axis=-1)
    assert np.mean(pred == held_out[0][1]) > 0.9
    assert not model.training, "train() leaves the model in eval mode"


def test_train_updates_only_parameters_that_require_grad():
    model = tiny()
    trainable = {"transformer.h.0.mlp.fc.weight", "transformer.h.0.mlp.fc.bias", "transformer.ln_f.weight"}
    for name, p in model.named_parameters():
        p.requires_grad = name in trainable
    params = dict(model.named_parameters())
    before = {n: host(p) for n, p in params.items()}

    result = train(model, successor_batches(), TrainConfig(steps=5, lr=1e-2, warmup=0), progress=False)

    for name, p in params.items():
        if name in trainable:
            assert not np.array_equal(host(p), before[name]), f"{name} did not change"
        else:
            assert np.array_equal(host(p), before[name]), f"frozen {name} changed"
            assert p.grad is None, f"frozen {name} holds a gradient"
    state = result.optimizer.state
    assert set(state) == {id(params[n]) for n in trainable}, "optimizer state for a frozen parameter"
    trained = {id(p) for g in result.optimizer.param_groups for p in g["params"]}
    assert trained == {id(params[n]) for n in trainable}


def test_train_with_nothing_trainable_is_an_error():
    model = tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        train(model, successor_batches(), TrainConfig(steps=1), progress=False)


# ----------------------------------------------------------------------------
# NaN guard


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_learning_rate_stops_with_an_error_naming_the_step():
    model = tiny()
    cfg = TrainConfig(steps=30, lr=1e6, warmup=0, grad_clip=0.0)
    with pytest.raises(FloatingPointError, match=r"at step [1-9]\d*.*smaller learning rate") as info:
        train(model, successor_batches(), cfg, progress=False)
    assert "lr=3.33e+05" in str(info.value)     # the suggestion is a concrete, smaller value


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_infinite_weight_stops_training_at_step_0():
    model = tiny()
    w = model.transformer.h[0].mlp.fc.weight
    data = host(w)
    data[0, 0] = np.inf
    w.data = backend.to_device(data, w.device)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 0 .*smaller learning rate"):
        train(model, successor_batches(), TrainConfig(steps=3), progress=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_after_divergence_the_weights_are_those_of_the_last_finite_step():
    cfg = TrainConfig(steps=30, lr=1e6, warmup=0, grad_clip=0.0)
    model = tiny()
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as info:
        train(model, successor_batches(), cfg, progress=False)
    failed = int(info.value.args[0].split("at step ")[1].split()[0])
    assert f"the weights are those after step {failed - 1}" in str(info.value)
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    # the same run, stopped (as by Ctrl-C) just before the failing step, has exactly these weights
    replay = tiny()
    batches = successor_batches()

    def until_failed(step):
        if step == failed:
            raise KeyboardInterrupt
        return batches(step)
    with pytest.raises(KeyboardInterrupt):
        train(replay, until_failed, cfg, progress=False)
    replay_state = replay.state_dict()
    assert all(np.array_equal(replay_state[k], v) for k, v in model.state_dict().items())


def test_a_nan_gradient_with_a_finite_loss_stops_before_the_update(monkeypatch):
    model = tiny()
    before = model.state_dict()
    real_clip = train_module.clip_grad_norm_

    def poisoned(params, max_norm):
        params = list(params)
        params[0].grad = params[0].grad * np.nan             # an overflow in backward
        return real_clip(params, max_norm)
    monkeypatch.setattr(train_module, "clip_grad_norm_", poisoned)
    with pytest.raises(FloatingPointError, match=r"gradient norm became nan \(loss .*\) at step 0 .*the weights were not changed"):
        train(model, successor_batches(), TrainConfig(steps=3, grad_clip=0.0), progress=False)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("field, value, needle", [
    ("grad_clip", -1.0, "grad_clip=-1.0 must be a finite number in [0, inf)"),
    ("min_lr_ratio", -0.5, "min_lr_ratio=-0.5 must be a finite number in [0, 1]"),
    ("min_lr_ratio", 1.5, "min_lr_ratio=1.5"),
    ("lr", float("nan"), "lr=nan"),
    ("lr", float("inf"), "lr=inf"),
    ("lr", -1e-3, "lr=-0.001"),
    ("weight_decay", -0.01, "weight_decay=-0.01"),
    ("betas", (0.9, 1.0), "betas[1]=1.0 must be a finite number in [0, 1)"),
    ("steps", 0, "steps=0 must be at least 1"),
    ("warmup", -1, "warmup=-1 must be at least 0"),
])
def test_train_config_refuses_nonsense(field, value, needle):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    assert needle in str(info.value)


@pytest.mark.parametrize("field, value", [("steps", True), ("steps", 2.5), ("lr", "1e-3"), ("eval_every", None)])
def test_train_config_refuses_the_wrong_type(field, value):
    with pytest.raises(TypeError, match=f"{field}="):
        TrainConfig(**{field: value})


def test_targets_marked_minus_100_do_not_count_as_in_pytorch():
    assert TrainConfig().ignore_index == -100
    x, y = successor_batches()(0)
    y = y.copy()
    y[:, ::2] = -100
    model = tiny()
    full = evaluate_loss(model, [(x, y)])
    kept = y != -100
    assert full == pytest.approx(evaluate_loss(model, [(x, np.where(kept, y, -100))]), abs=0)
    logits = logits_fn(model)(x).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    by_hand = -np.take_along_axis(logp, np.where(kept, y, 0)[..., None], -1)[..., 0][kept].mean()
    assert full == pytest.approx(by_hand, rel=1e-5)


# ----------------------------------------------------------------------------
# evaluation callback


@pytest.mark.parametrize("steps, every, expected", [(10, 3, [3, 6, 9, 10]), (9, 3, [3, 6, 9]),
                                                    (5, 0, [5]), (4, 10, [4])])
def test_eval_fn_is_called_every_eval_every_steps_and_at_the_end(steps, every, expected):
    seen = []
    get = successor_batches()

    def get_batch(step):
        seen.append(step)
        return get(step)

    def eval_fn(model):
        return {"batches_seen": len(seen), "training": model.training}

    result = train(tiny(), get_batch, TrainConfig(steps=steps, lr=1e-3, eval_every=every),
                   eval_fn=eval_fn, progress=False)
    assert [s for s, _ in result.evals] == expected
    assert [m["batches_seen"] for _, m in result.evals] == expected   # called after that many steps


# ----------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip_gives_identical_logits_and_config(tmp_path):
    model = tiny(seed=3, dropout=0.1, bias=False)
    train(model, successor_batches(), TrainConfig(steps=3, lr=1e-2), progress=False)
    directory = save_checkpoint(model, tmp_path / "ckpt", metadata={"task": "successor"})
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]                    # no temporaries left

    loaded = load_checkpoint(directory)
    assert loaded.config == model.config
    assert not loaded.training
    x = successor_batches(seed=5)(0)[0]
    assert np.array_equal(logits_fn(loaded)(x), logits_fn(model)(x))
    assert json.loads((directory / "config.json").read_text())["task"] == "successor"


def test_checkpoint_files_are_safetensors_and_json_not_pickle(tmp_path):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    raw = (directory / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")                     # safetensors layout:
    header = json.loads(raw[8:8 + header_len])                         # u64 length, JSON header, data
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(tensors) == set(tiny().state_dict())
    # nothing but the declared raw arrays follows the header
    assert len(raw) == 8 + header_len + max(v["data_offsets"][1] for v in tensors.values())
    assert {v["dtype"] for v in tensors.values()} == {"F32"}
    assert json.loads((directory / "config.json").read_text())["format"] == "minilora-gpt"


def test_saving_over_a_checkpoint_replaces_it_and_keeps_other_files(tmp_path):
    directory = tmp_path / "ckpt"
    save_checkpoint(tiny(seed=1), directory)
    (directory / "notes.txt").write_text("mine")
    newer = tiny(seed=2)
    save_checkpoint(newer, directory)
    assert (directory / "notes.txt").read_text() == "mine"
    x = successor_batches()(0)[0]
    assert np.array_equal(logits_fn(load_checkpoint(directory))(x), logits_fn(newer)(x))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def _fail_on_call(real, n):
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(f"simulated failure in call {n}")
        return real(*args, **kwargs)
    return fake


def _no_exchange(a, b):
    """A platform without an atomic exchange of two folders: files.py falls back to two renames."""
    raise OSError(errno.ENOSYS, "no exchange here")


FAILURES = {
    "serialising the weights": lambda mp: mp.setattr(train_module, "safetensors_bytes",
                                                     _fail_on_call(files.safetensors_bytes, 1)),
    "after the first file is written": lambda mp: mp.setattr(files.os, "fsync",
                                                             _fail_on_call(os.fsync, 2)),
    "exchanging the two directories": lambda mp: mp.setattr(files, "_exchange",
                                                            _fail_on_call(files._exchange, 1)),
    "moving the old directory aside (no exchange)": lambda mp: (
        mp.setattr(files, "_exchange", _no_exchange), mp.setattr(files.os, "replace", _fail_on_call(os.replace, 1))),
    "moving the new directory in (no exchange)": lambda mp: (
        mp.setattr(files, "_exchange", _no_exchange), mp.setattr(files.os, "replace", _fail_on_call(os.replace, 2))),
}


@pytest.mark.parametrize("where", list(FAILURES))
def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, where):
    directory = tmp_path / "ckpt"
    old_model = tiny(seed=1)
    save_checkpoint(old_model, directory)
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}

    FAILURES[where](monkeypatch)
    with pytest.raises(OSError, match="simulated failure"):
        save_checkpoint(tiny(seed=2), directory)
    monkeypatch.undo()

    after = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"], "a temporary directory was left behind"
    x = successor_batches()(0)[0]
    assert np.array_equal(logits_fn(load_checkpoint(directory))(x), logits_fn(old_model)(x))


def test_a_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", _fail_on_call(os.fsync, 2))
    with pytest.raises(OSError):
        save_checkpoint(tiny(), tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_loading_a_corrupt_model_file_is_a_clear_error_naming_the_path(tmp_path, damage):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    weights = directory / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x00not safetensors" * 9,
                         "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_checkpoint(directory)
    assert str(weights) in str(info.value)


def test_loading_without_a_config_or_with_a_foreign_config_is_a_clear_error(tmp_path):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    (directory / "config.json").write_text(json.dumps({"n_embd": 16}))
    with pytest.raises(ValueError, match="no 'gpt_config'"):
        load_checkpoint(directory)
    (directory / "config.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(directory)


def test_loading_a_checkpoint_into_a_mismatching_config_raises_and_changes_nothing(tmp_path):
    directory = save_checkpoint(tiny(seed=1), tmp_path / "ckpt")
    other = tiny(seed=2, n_embd=24)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"nothing was changed: transformer\.wte\.weight: checkpoint shape \(11, 16\) != model shape \(11, 24\)"):
        other.load_state_dict(read_safetensors(directory / "model.safetensors"))
    after = other.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)

    deeper = tiny(seed=2, n_layer=2)
    before = deeper.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['transformer\.h\.1\."):
        deeper.load_state_dict(read_safetensors(directory / "model.safetensors"))
    assert all(np.array_equal(deeper.state_dict()[k], before[k]) for k in before)


def test_a_checkpoint_whose_config_disagrees_with_its_weights_does_not_load(tmp_path):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    info = json.loads((directory / "config.json").read_text())
    info["gpt_config"]["vocab_size"] = V + 1
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"transformer\.wte\.weight: file \({V}, 16\) != config \({V + 1}, 16\)"):
        load_checkpoint(directory)


# ----------------------------------------------------------------------------
# checkpoints: what cannot be loaded back is refused


def test_save_checkpoint_refuses_a_lora_model_and_names_both_fixes(tmp_path):
    from minilora.lora import LoraConfig, apply_lora, merge_and_unload

    model = apply_lora(tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"LoRA layers .*save_adapter\(model, dir\).*merge_and_unload"):
        save_checkpoint(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    x = successor_batches()(0)[0]
    expected = logits_fn(model)(x)
    directory = save_checkpoint(merge_and_unload(model), tmp_path / "ckpt")     # the fix works
    np.testing.assert_allclose(logits_fn(load_checkpoint(directory))(x), expected, rtol=1e-5, atol=1e-5)


def test_a_config_asking_for_a_huge_model_fails_before_building_it(tmp_path, monkeypatch):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    info = json.loads((directory / "config.json").read_text())
    info["gpt_config"]["n_layer"] = 100_000
    (directory / "config.json").write_text(json.dumps(info))
    built = []
    monkeypatch.setattr(train_module, "GPT", lambda config: built.append(config))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config.json says n_layer=100000 but model.safetensors holds 1 "
                                         r"layers; nothing was built"):
        load_checkpoint(directory)
    assert built == [] and time.perf_counter() - start < 1.0
    # a smaller disagreement is found by comparing every shape
    info["gpt_config"]["n_layer"], info["gpt_config"]["n_embd"] = 1, 32
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight: file \(11, 16\) != config \(11, 32\)"):
        load_checkpoint(directory)
    assert built == []


@pytest.mark.parametrize("field, value, needle", [
    ("vocab_size", True, "gpt_config.vocab_size=True has the wrong type (bool)"),
    ("n_layer", "1", "gpt_config.n_layer='1' has the wrong type (str)"),
    ("n_embd", 16.0, "gpt_config.n_embd=16.0 has the wrong type (float)"),
    ("bias", "false", "gpt_config.bias='false' has the wrong type (str); write it as true or false"),
    ("n_head", 0, "n_head=0 must be a positive integer"),
    ("rotary", True, "fields GPTConfig does not know: ['rotary']"),
])
def test_config_fields_are_type_checked_on_load(tmp_path, field, value, needle):
    directory = save_checkpoint(tiny(), tmp_path / "ckpt")
    info = json.loads((directory / "config.json").read_text())
    info["gpt_config"][field] = value
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError) as err:
        load_checkpoint(directory)
    assert needle in str(err.value)


def test_gpt_config_refuses_a_bool_size():
    with pytest.raises(ValueError, match="vocab_size=True must be a positive integer"):
        GPTConfig(vocab_size=True, block_size=8, n_layer=1, n_head=1, n_embd=8)
