"""Resumable training: 3 steps, stop, resume, 3 more steps equals 6 straight steps, bit for bit.

The interruption is a KeyboardInterrupt raised by get_batch at step 3, as a
Ctrl-C would be, after the checkpoint of step 3 was written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minilora as ml
from minilora import backend, data
from minilora.lora import LoraConfig, apply_lora
from minilora.model import GPT, GPTConfig
from minilora.pretrained import task_batches
from minilora.train import TrainConfig, train

V, BLOCK = 11, 8
CPU_ONLY = pytest.mark.skipif(backend.default_device() != "cpu", reason="bit-exact resume is promised on the CPU")


def tiny(seed=0, dropout=0.0) -> GPT:
    ml.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=dropout))


def pure_batches(step):
    """A get_batch that is a pure function of the step: nothing to save."""
    x = np.random.default_rng([7, step]).integers(0, V, (8, BLOCK))
    return x, (x + 1) % V


class StopAt:
    """Wraps get_batch; raises KeyboardInterrupt when asked for `step` (a Ctrl-C there)."""

    def __init__(self, get_batch, step):
        self.get_batch, self.step = get_batch, step

    def __call__(self, step):
        if step == self.step:
            raise KeyboardInterrupt
        return self.get_batch(step)

    def __getattr__(self, name):          # state_dict / load_state_dict, when the wrapped one has them
        return getattr(self.get_batch, name)


CONFIG = TrainConfig(steps=6, lr=3e-2, warmup=2, min_lr_ratio=0.1, grad_clip=0.5)


def weights(model) -> dict:
    return model.state_dict()


def assert_bit_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{k} differs"


def run_straight_and_resumed(make_model, make_batches, tmp_path, config=CONFIG):
    straight = make_model()
    ml.manual_seed(123)                      # the dropout stream starts here in both runs
    full = train(straight, make_batches(), config, progress=False)

    first = make_model()
    ml.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        train(first, StopAt(make_batches(), 3), config, progress=False,
              checkpoint_dir=tmp_path / "state", checkpoint_every=3)
    ml.manual_seed(999)                      # a new process would start from another state
    second = make_model(seed=42)             # different starting weights: the resume must restore them
    resumed = train(second, make_batches(), config, progress=False, resume_from=tmp_path / "state",
                    checkpoint_dir=tmp_path / "state", checkpoint_every=3)
    return straight, second, full, resumed


@CPU_ONLY
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_three_steps_resume_three_steps_equals_six_straight_steps(tmp_path, dropout):
    make_model = lambda seed=0: tiny(seed, dropout)  # noqa: E731
    straight, second, full, resumed = run_straight_and_resumed(make_model, lambda: pure_batches, tmp_path)
    assert_bit_equal(weights(straight), weights(second))
    assert resumed.losses == full.losses and resumed.lrs == full.lrs     # the history is carried over
    assert resumed.steps_run == 3 and len(resumed.losses) == 6
    assert_bit_equal(resumed.optimizer.state_dict()[0], full.optimizer.state_dict()[0])


@CPU_ONLY
def test_resume_with_batches_drawn_from_a_generator_restores_its_state(tmp_path):
    make_batches = lambda: task_batches(["rev", "cpy"], 4, 32, seed=5)  # noqa: E731
    make_model = lambda seed=0: (ml.manual_seed(seed), GPT(GPTConfig(  # noqa: E731
        vocab_size=data.TOKENIZER.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.1)))[1]
    straight, second, full, resumed = run_straight_and_resumed(make_model, make_batches, tmp_path)
    assert_bit_equal(weights(straight), weights(second))
    assert resumed.losses == full.losses


@CPU_ONLY
def test_resume_a_lora_model_where_only_a_and_b_train(tmp_path):
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)

    def make_model(seed=0):
        model = tiny(seed)
        ml.manual_seed(seed + 1)
        return apply_lora(model, cfg)
    straight, second, full, resumed = run_straight_and_resumed(make_model, lambda: pure_batches, tmp_path)
    assert_bit_equal(weights(straight), weights(second))
    trained = [n for n, p in second.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert resumed.losses == full.losses


def test_the_state_is_safetensors_and_json_only_and_written_atomically(tmp_path):
    train(tiny(), pure_batches, TrainConfig(steps=4, lr=1e-2, warmup=0), progress=False,
          checkpoint_dir=tmp_path / "state", checkpoint_every=2)
    assert sorted(os.listdir(tmp_path)) == ["state"]          # no temporary folder left
    assert sorted(os.listdir(tmp_path / "state")) == ["model.safetensors", "optimizer.safetensors",
                                                      "trainer_state.json"]
    state = json.loads((tmp_path / "state" / "trainer_state.json").read_text())
    assert state["next_step"] == 4 and len(state["losses"]) == 4


def test_resuming_with_another_config_or_model_is_refused_and_changes_nothing(tmp_path):
    train(tiny(), pure_batches, CONFIG, progress=False, checkpoint_dir=tmp_path / "s", checkpoint_every=3)
    other = tiny(seed=5)
    before = weights(other)
    with pytest.raises(ValueError, match=r"TrainConfig differs \(lr: saved 0.03, now 0.01\)"):
        train(other, pure_batches, TrainConfig(**{**CONFIG.__dict__, "lr": 1e-2}), progress=False,
              resume_from=tmp_path / "s")
    lora = apply_lora(tiny(seed=5), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="build the model the same way"):
        train(lora, pure_batches, CONFIG, progress=False, resume_from=tmp_path / "s")
    assert_bit_equal(weights(other), before)
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        train(other, pure_batches, CONFIG, progress=False, resume_from=tmp_path / "nothing")


def test_checkpoint_every_needs_a_folder_and_a_whole_number():
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_dir"):
        train(tiny(), pure_batches, CONFIG, progress=False, checkpoint_every=2)
    with pytest.raises(TypeError, match="checkpoint_every=2.5"):
        train(tiny(), pure_batches, CONFIG, progress=False, checkpoint_every=2.5, checkpoint_dir="x")


def test_evaluations_are_carried_over_a_resume(tmp_path):
    config = TrainConfig(steps=6, lr=1e-2, warmup=0, eval_every=2)

    def eval_fn(model):
        return {"first_weight": np.float32(backend.to_numpy(model.transformer.wte.weight.data)[0, 0])}
    full = train(tiny(), pure_batches, config, eval_fn=eval_fn, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), StopAt(pure_batches, 3), config, eval_fn=eval_fn, progress=False,
              checkpoint_dir=tmp_path / "s", checkpoint_every=3)
    resumed = train(tiny(), pure_batches, config, eval_fn=eval_fn, progress=False, resume_from=tmp_path / "s")
    assert [s for s, _ in resumed.evals] == [2, 4, 6]
    assert [m["first_weight"] for _, m in resumed.evals] == pytest.approx(
        [float(m["first_weight"]) for _, m in full.evals], abs=0 if backend.default_device() == "cpu" else 1e-6)
