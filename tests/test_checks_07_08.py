"""Checks of notebooks 07 (frozen weights) and 08 (training LoRA): right passes, wrong is explained."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minilora import checks, linalg, lora_count
from minilora.checks import ExerciseError
from minilora.checks.train_lora import KINDS


def rejects(fn, *args, match: str, exercise: str):
    with pytest.raises(ExerciseError, match=match) as info:
        fn(*args)
    assert info.value.exercise == exercise
    assert str(info.value).startswith(f"Exercise {exercise}: ")
    assert info.value.hint
    return info.value


def accepts(fn, *args, capsys, exercise: str):
    assert fn(*args) is None
    assert capsys.readouterr().out.startswith(f"Correct! (Exercise {exercise})")


@pytest.mark.parametrize("ex", ["7.2", "8.3"])
def test_two_levels_of_hint(ex, capsys):
    checks.hint(ex, 1)
    checks.hint(ex, 2)
    out = capsys.readouterr().out
    assert f"Exercise {ex}, nudge:" in out and f"Exercise {ex}, method:" in out


# ---------------------------------------------------------------- 7.1

def test_reveal_grad_count(capsys):
    # independent count: 2 blocks x (q, v) x (A, B) of the tiny GPT
    checks.reveal_grad_count(2 * 2 * 2)
    out = capsys.readouterr().out
    assert "exactly the 8 LoRA matrices" in out and "Spot on" in out
    checks.reveal_grad_count(44)
    assert "Not quite" in capsys.readouterr().out
    rejects(checks.reveal_grad_count, None, match="still empty", exercise="7.1")
    rejects(checks.reveal_grad_count, "8", match="should be a number", exercise="7.1")
    rejects(checks.reveal_grad_count, 7.5, match="whole number", exercise="7.1")


# ---------------------------------------------------------------- 7.2

def good_adam(model):
    return sum(2 * p.data.nbytes for p in model.parameters() if p.requires_grad)


def test_adam_state_bytes_fn(capsys):
    accepts(checks.check_adam_state_bytes_fn, good_adam, capsys=capsys, exercise="7.2")
    # an independent route to the same number: 2 moments x 4 bytes (float32) x trainable numbers
    accepts(checks.check_adam_state_bytes_fn, lambda m: 8 * m.num_parameters(trainable_only=True),
            capsys=capsys, exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: sum(2 * p.data.nbytes for p in m.parameters()),
            match="counted frozen parameters too", exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: good_adam(m) // 2, match="one moment array",
            exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: good_adam(m) // 8, match="not bytes", exercise="7.2")

    def via_optimizer(m):                                   # build AdamW and read its state: caught
        from minilora.optim import AdamW
        opt = AdamW([p for p in m.parameters() if p.requires_grad])
        return opt.state_bytes()
    rejects(checks.check_adam_state_bytes_fn, via_optimizer, match="state_bytes", exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: None, match="should be a number", exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: "lots", match="should be a number", exercise="7.2")
    rejects(checks.check_adam_state_bytes_fn, lambda m: float("nan"), match="not a finite", exercise="7.2")


def test_adam_truth_matches_a_real_optimizer():
    """The check's expected bytes are what AdamW really allocates after a step."""
    from minilora.checks.frozen import _hidden_models, _truth
    from minilora.optim import AdamW

    for _, model in _hidden_models(np.random.default_rng(1)):
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.grad = p.xp.zeros(p.shape, dtype=p.data.dtype)
        opt = AdamW(trainable, lr=1e-3)
        opt.step()
        assert opt.state_bytes() == _truth(model)


# ---------------------------------------------------------------- 7.3 and 8.1 (predict, measured ratio)

@pytest.mark.parametrize("reveal,ex", [(checks.reveal_forward_ratio, "7.3"), (checks.reveal_merged_speed, "8.1")])
def test_reveal_ratios(reveal, ex, capsys):
    reveal(1.05, 1.0)
    assert "Spot on" in capsys.readouterr().out
    reveal(0.5, 1.0)
    assert "Not quite" in capsys.readouterr().out
    rejects(reveal, None, 1.0, match="still empty", exercise=ex)
    rejects(reveal, "fast", 1.0, match="should be a number", exercise=ex)
    rejects(reveal, np.nan, 1.0, match="not a finite", exercise=ex)


# ---------------------------------------------------------------- 8.2

def fake_sweep(tmp_path, accuracies):
    runs = [{"rank": r, "targets": "q,v", "seed": s, "accuracy": a, "trainable": 512 * r, "seconds": 1.0}
            for r, accs in accuracies.items() for s, a in enumerate(accs)]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"format": "minilora-rank-sweep", "version": 1, "recipe": {}, "runs": runs}))
    return path


def test_reveal_best_rank(tmp_path, capsys):
    path = fake_sweep(tmp_path, {1: [0.0, 0.1], 4: [1.0, 0.9], 16: [1.0, 0.5]})
    checks.reveal_best_rank(4, path=path)
    out = capsys.readouterr().out
    assert "r =  4: mean  95.0%" in out and "r = 4 has the best mean" in out and "Spot on" in out
    checks.reveal_best_rank(16, path=path)
    assert "Not quite" in capsys.readouterr().out
    tie = fake_sweep(tmp_path, {1: [0.0], 4: [0.995], 16: [1.0]})
    for guess in (4, 16):                    # within one point (2 prompts of 200): either counts as right
        checks.reveal_best_rank(guess, path=tie)
        assert "Spot on" in capsys.readouterr().out
    rejects(checks.reveal_best_rank, None, "q,v", path, match="still empty", exercise="8.2")
    rejects(checks.reveal_best_rank, 4, "everything", path, match="no target set", exercise="8.2")


def test_reveal_best_rank_on_the_shipped_sweep(capsys):
    from minilora.sweep import load_sweep, summarize

    summary = summarize(load_sweep())
    best = max((r for t, r in summary if t == "q,v"), key=lambda r: summary[("q,v", r)]["mean"])
    checks.reveal_best_rank(best)
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_best_rank(1)                       # r = 1 on q, v cannot learn inc in this recipe
    assert "Not quite" in capsys.readouterr().out


# ---------------------------------------------------------------- 8.3

def good_trainable(n_layer, n_embd, r, targets):
    return n_layer * sum(r * (a + b) * n_embd for t, (a, b) in KINDS.items() if t in targets)


def test_trainable_params(capsys):
    accepts(checks.check_trainable_params, good_trainable, capsys=capsys, exercise="8.3")
    rejects(checks.check_trainable_params, lambda L, d, r, t: L * len(t) * 2 * r * d, match="treated every Linear as square",
            exercise="8.3")
    rejects(checks.check_trainable_params, lambda L, d, r, t: good_trainable(1, d, r, t), match="one block|returned",
            exercise="8.3")
    rejects(checks.check_trainable_params, lambda L, d, r, t: L * len(t) * d * d, match="returned", exercise="8.3")

    def via_model(L, d, r, t):                              # build the model and count: caught
        from minilora.lora import LoraConfig, apply_lora
        from minilora.model import GPT, GPTConfig
        m = apply_lora(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=L, n_head=1, n_embd=d)),
                       LoraConfig(r=r, lora_alpha=r, target_modules=t))
        return m.num_parameters(trainable_only=True)
    rejects(checks.check_trainable_params, via_model, match="apply_lora|num_parameters", exercise="8.3")

    def via_linalg(L, d, r, t):
        from minilora.lora import LoraConfig
        from minilora.model import GPTConfig
        return lora_count.count_lora_params(GPTConfig(vocab_size=10, block_size=8, n_layer=L, n_head=1, n_embd=d),
                                        LoraConfig(r=r, lora_alpha=r, target_modules=t))
    rejects(checks.check_trainable_params, via_linalg, match="count_lora_params", exercise="8.3")
    rejects(checks.check_trainable_params, lambda L, d, r, t: None, match="should be a number", exercise="8.3")
    rejects(checks.check_trainable_params, lambda L, d, r: 0, match="raised TypeError", exercise="8.3")


def test_trainable_params_formula_matches_a_real_model():
    """KINDS (the check's shapes) agree with the GPT minilora builds."""
    from minilora.lora import LoraConfig, apply_lora
    from minilora.model import GPT, GPTConfig

    for targets in (["q_proj", "v_proj"], list(KINDS), ["fc"], ["proj", "k_proj"]):
        model = apply_lora(GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=12)),
                           LoraConfig(r=3, lora_alpha=3, target_modules=targets))
        assert model.num_parameters(trainable_only=True) == good_trainable(3, 12, 3, targets)
