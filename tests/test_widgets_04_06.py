"""The alpha / r slider of notebook 06, driven in plain pytest (callbacks are synchronous)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

import ipywidgets  # noqa: E402

from minilora.widgets import lora_relative_change, lora_scaling_explorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def moved(w, alpha, r, sqrt_r=False):
    """The relative change computed here, from the widget's matrices, independently of its code path."""
    A, B = w.A_full[:r], w.B_full[:, :r]
    scaling = alpha / (math.sqrt(r) if sqrt_r else r)
    base = w.X @ w.W0.T + w.b
    delta = scaling * (w.X @ (B @ A).T)                     # B A formed first: a different route
    return np.linalg.norm(delta) / np.linalg.norm(base)


def test_slider_redraws_and_reports_the_change():
    w = lora_scaling_explorer(alpha=8, r=4)
    assert isinstance(w, ipywidgets.Box) and w.slider is w.alpha_slider
    img, text = bytes(w.image.value), w.text.value
    assert img.startswith(PNG_MAGIC)
    assert w.scaling == 2.0 and "scaling alpha / r = 2" in text
    assert math.isclose(w.relative_change, moved(w, 8, 4), rel_tol=1e-12)
    assert f"{w.relative_change:.2%}" in text

    w.alpha_slider.value = 16
    assert bytes(w.image.value) != img and w.text.value != text
    assert w.scaling == 4.0 and math.isclose(w.relative_change, moved(w, 16, 4), rel_tol=1e-12)


def test_change_is_proportional_to_alpha_and_zero_at_alpha_zero():
    w = lora_scaling_explorer(alpha=4, r=8)
    small = w.relative_change
    w.alpha_slider.value = 12
    assert math.isclose(w.relative_change, 3 * small, rel_tol=1e-12)
    w.alpha_slider.value = 0
    assert w.relative_change == 0.0 and "frozen layer exactly" in w.text.value


def test_larger_rank_moves_less_with_alpha_over_r_and_about_the_same_with_rslora():
    w = lora_scaling_explorer(alpha=8, r=1)
    changes = []
    for r in (1, 4, 16):
        w.r_slider.value = r
        changes.append(w.relative_change)
        assert math.isclose(w.relative_change, moved(w, 8, r), rel_tol=1e-12)
    assert changes[0] > changes[1] > changes[2]
    w.rslora.value = True
    assert "alpha / sqrt(r)" in w.text.value and w.scaling == 8 / 4
    assert math.isclose(w.relative_change, moved(w, 8, 16, sqrt_r=True), rel_tol=1e-12)
    spread = [w.change_at(8, r) for r in (1, 4, 16)]
    assert max(spread) / min(spread) < changes[0] / changes[2]     # rsLoRA drifts less across ranks


def test_relative_change_function():
    rng = np.random.default_rng(0)
    W0, A, B = np.eye(3), rng.standard_normal((1, 3)), rng.standard_normal((3, 1))
    X = rng.standard_normal((5, 3))
    assert lora_relative_change(W0, np.zeros(3), A, np.zeros((3, 1)), X, 2.0) == 0.0
    got = lora_relative_change(W0, np.zeros(3), A, B, X, 2.0)
    assert math.isclose(got, np.linalg.norm(2 * X @ A.T @ B.T) / np.linalg.norm(X), rel_tol=1e-12)
