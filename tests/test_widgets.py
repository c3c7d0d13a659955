"""minilora.widgets: slider callbacks redraw synchronously, in plain pytest (no kernel, no browser)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

import ipywidgets  # noqa: E402

from minilora import linalg  # noqa: E402
from minilora.widgets import load_sample_image, param_count_explorer, svd_explorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sample_image_is_grayscale_photo():
    img = load_sample_image()
    assert img.shape == (300, 256) and img.dtype == np.float64
    assert 0.0 <= img.min() < 0.2 and 0.8 < img.max() <= 1.0
    assert load_sample_image(downsample=1).shape == (600, 512)


def test_svd_explorer_redraws_on_slider_move():
    w = svd_explorer()
    assert isinstance(w, ipywidgets.Box)
    assert isinstance(w.slider, ipywidgets.IntSlider) and isinstance(w.image, ipywidgets.Image)
    assert w.slider.max == 256 and w.slider.value == 10
    before_img, before_text = bytes(w.image.value), w.text.value
    assert before_img.startswith(PNG_MAGIC)
    assert "rank r = 10 of 256" in before_text

    w.slider.value = 5
    assert bytes(w.image.value) != before_img and bytes(w.image.value).startswith(PNG_MAGIC)
    assert w.text.value != before_text and "rank r = 5 of 256" in w.text.value
    # the numbers shown are linalg's
    _, info = linalg.low_rank_approx(load_sample_image(), 5)
    assert w.info.rank == 5
    assert abs(w.info.relative_error - info.relative_error) < 1e-12
    assert f"{info.relative_error:.4f}" in w.text.value
    assert f"{5 * (300 + 256):,}" in w.text.value and "76,800" in w.text.value


def test_svd_explorer_error_falls_as_rank_grows():
    w = svd_explorer(rank=1)
    errors = []
    for r in (1, 5, 20, 256):
        w.slider.value = r
        errors.append(w.info.relative_error)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-12


def test_svd_explorer_on_a_matrix_and_a_colour_image():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((12, 30)) @ rng.standard_normal((30, 20))
    w = svd_explorer(M, title="test", rank=3)
    assert w.slider.max == 12 and w.rank == 12 and "rank r = 3 of 12" in w.text.value
    w.slider.value = 12
    assert w.info.relative_error < 1e-12
    assert "no saving" in w.text.value                 # 12 > 12*20/32 = 7.5
    rgb = (rng.random((20, 16, 3)) * 255).astype(np.uint8)
    c = svd_explorer(rgb)
    assert c.is_image and c.matrix.shape == (20, 16) and c.matrix.max() <= 1.0


def test_svd_explorer_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D matrix"):
        svd_explorer(np.ones(5))


def test_param_count_explorer():
    w = param_count_explorer()
    assert isinstance(w, ipywidgets.Box)
    assert w.slider is w.r_slider and w.d_slider.value == 768 and w.r_slider.value == 8
    img, text = bytes(w.image.value), w.text.value
    assert img.startswith(PNG_MAGIC)
    assert "2dr = 12,288 vs d^2 = 589,824" in text and "GPT-2 small" in text and "GPT-3" in text

    w.slider.value = 5
    assert bytes(w.image.value) != img and "2dr = 7,680" in w.text.value
    img2 = bytes(w.image.value)
    w.d_slider.value = 12288
    assert bytes(w.image.value) != img2
    assert f"2dr = {2 * 12288 * 5:,} vs d^2 = {12288 ** 2:,}" in w.text.value
    w.d_slider.value = 64
    w.r_slider.value = 40
    assert "no cheaper" in w.text.value                # r past d/2


def test_widgets_leave_pyplot_alone():
    """Object-API figures only: no pyplot figure is created (none would leak into a notebook)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    svd_explorer(np.eye(4)).slider.value = 2
    param_count_explorer().slider.value = 3
    assert plt.get_fignums() == before


def test_param_count_explorer_keeps_r_at_most_d():
    w = param_count_explorer()
    w.d_slider.value = 16
    assert w.r_slider.max == 16 and w.r_slider.value <= 16
    w.r_slider.value = 16
    text = w.text.value
    assert "0x fewer" not in text and "no saving" in text          # 2dr = 512 > d^2 = 256
    w.d_slider.value = 768
    assert w.r_slider.max == 64
    w.r_slider.value = 8
    assert "48.0x fewer" in w.text.value                           # 589,824 / 12,288


def test_trainable_toggle_measures_what_training_stores():
    from minilora.widgets import trainable_toggle

    w = trainable_toggle()
    assert isinstance(w, ipywidgets.Box)
    # LoRA r = 4 on q, v of 2 blocks: 2 x 2 x 4 x (64 + 64) = 2,048 float32 numbers
    assert w.measured["trainable"] == 2048
    assert w.measured["grad_bytes"] == 2048 * 4 and w.measured["adam_bytes"] == 2 * 2048 * 4
    assert "2,048 of" in w.text.value
    lora_text = w.text.value

    w.full.click()                                   # every base weight, no adapter
    total = sum(p.size for p in w.model.parameters())
    assert w.measured["trainable"] == total - 2048
    assert w.measured["adam_bytes"] == 2 * 4 * (total - 2048)
    assert w.text.value != lora_text

    w.select(["lora A, B", "layernorm"])             # LayerNorms: 5 vectors of 64 weights and biases
    assert w.measured["trainable"] == 2048 + 5 * 2 * 64
    w.boxes["layernorm"].value = False
    assert w.measured["trainable"] == 2048
    w.select([])
    assert w.measured["trainable"] == 0 and "nothing is trainable" in w.text.value
