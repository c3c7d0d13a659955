"""The alpha / r slider: how far a LoRA update moves a layer's output.

One Linear layer, W0 (32 x 32) and a bias, and a LoRA update with a random A
(PEFT's initialisation) and a random, non-zero B standing in for a trained
one. Its rank-r version uses the first r rows of A and the first r columns of
B, so raising r adds directions and keeps the old ones. Move alpha and r and
read how much the output moves:

    relative change = ||(alpha / r) B A X|| / ||W0 X + b||      over 64 fixed inputs X

Two things to see: the change is exactly proportional to alpha (alpha scales
the update, it is not a learning rate), and at a fixed alpha a larger r moves
the output *less*, because alpha / r shrinks faster than B A x grows (like
sqrt(r) for random directions). rsLoRA's alpha / sqrt(r) removes most of that
drift. The callbacks run synchronously, so tests can set
`w.alpha_slider.value` and read `w.relative_change` at once.
"""
from __future__ import annotations

import math

import numpy as np

from minilora.widgets.linalg_explorers import _html, figure_to_png

try:
    import ipywidgets as widgets
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise ImportError("minilora.widgets needs ipywidgets and matplotlib: "
                      "pip install 'minilora[notebooks]'") from exc

__all__ = ["lora_scaling_explorer", "LoRAScalingExplorer", "lora_relative_change"]

WIDTH = 32          # d_in = d_out of the layer
MAX_RANK = 16
N_INPUTS = 64
RANKS_DRAWN = (1, 2, 4, 8, 16)


def lora_relative_change(W0, b, A, B, X, scaling: float) -> float:
    """||scaling * X A^T B^T||_F / ||X W0^T + b||_F: how far the update moves the outputs of inputs X (N, in)."""
    base = X @ W0.T + b                                  # [N, out]
    delta = scaling * ((X @ A.T) @ B.T)                  # [N, r] then [N, out]
    return float(np.linalg.norm(delta) / np.linalg.norm(base))


class LoRAScalingExplorer(widgets.VBox):
    """Sliders for alpha and r (and an rsLoRA switch) over one LoRA-adapted layer.

    Attributes for code and tests: `alpha_slider` (also `slider`), `r_slider`,
    `rslora` (Checkbox), `image` (PNG), `text` (HTML), and the numbers behind
    them: `W0`, `b`, `A_full` (16, 32), `B_full` (32, 16), `X` (64, 32),
    `scaling` and `relative_change` for the current settings.
    """

    def __init__(self, alpha: float = 8.0, r: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        d = WIDTH
        self.W0 = rng.standard_normal((d, d)) / math.sqrt(d)              # a pretrained-looking weight
        self.b = 0.1 * rng.standard_normal(d)
        self.A_full = rng.uniform(-1, 1, (MAX_RANK, d)) / math.sqrt(d)    # PEFT's init for A
        self.B_full = 0.05 * rng.standard_normal((d, MAX_RANK))           # B after some training
        self.X = rng.standard_normal((N_INPUTS, d))
        self.alpha_slider = widgets.FloatSlider(value=alpha, min=0.0, max=32.0, step=0.5, description="alpha",
                                                continuous_update=False, layout=widgets.Layout(width="60%"))
        self.r_slider = widgets.IntSlider(value=r, min=1, max=MAX_RANK, step=1, description="rank r",
                                          continuous_update=False, layout=widgets.Layout(width="60%"))
        self.rslora = widgets.Checkbox(value=False, description="rsLoRA: alpha / sqrt(r)")
        self.slider = self.alpha_slider
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.scaling = self.relative_change = 0.0
        super().__init__([self.alpha_slider, self.r_slider, self.rslora, self.image, self.text])
        self.add_class("minilora-lora-scaling")
        for control in (self.alpha_slider, self.r_slider, self.rslora):
            control.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change: dict) -> None:
        self.redraw()

    def scaling_for(self, alpha: float, r: int) -> float:
        return alpha / math.sqrt(r) if self.rslora.value else alpha / r

    def change_at(self, alpha: float, r: int) -> float:
        """The relative change of the outputs for this alpha and rank (with the current scaling rule)."""
        return lora_relative_change(self.W0, self.b, self.A_full[:r], self.B_full[:, :r], self.X,
                                    self.scaling_for(alpha, r))

    def redraw(self) -> None:
        alpha, r = float(self.alpha_slider.value), int(self.r_slider.value)
        self.scaling = self.scaling_for(alpha, r)
        self.relative_change = self.change_at(alpha, r)
        A, B = self.A_full[:r], self.B_full[:, :r]
        x = self.X[0]
        base = self.W0 @ x + self.b                                   # [out]
        adapted = base + self.scaling * (B @ (A @ x))                 # [out]

        fig = Figure(figsize=(10, 3.4))
        ax_out, ax_curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
        idx = np.arange(16)
        ax_out.bar(idx - 0.2, base[:16], width=0.4, color="0.7", label="frozen: W0 x + b")
        ax_out.bar(idx + 0.2, adapted[:16], width=0.4, color="C0", label="with LoRA")
        ax_out.axhline(0, color="0.3", linewidth=0.6)
        ax_out.set_xlabel("output coordinate (first 16 of 32), one input x", fontsize=9)
        ax_out.set_title(f"scaling = {self._rule()} = {self.scaling:.3g}", fontsize=10)
        ax_out.legend(fontsize=8, loc="upper right")
        ax_out.tick_params(labelsize=8)

        alphas = np.linspace(0, 32, 65)
        for rank in RANKS_DRAWN:
            curve = [self.change_at(a, rank) for a in alphas]
            bold = rank == r
            ax_curve.plot(alphas, curve, color=f"C{RANKS_DRAWN.index(rank) + 1}", linewidth=2.5 if bold else 1,
                          label=f"r = {rank}")
        if r not in RANKS_DRAWN:
            ax_curve.plot(alphas, [self.change_at(a, r) for a in alphas], color="C0", linewidth=2.5,
                          label=f"r = {r}")
        ax_curve.plot([alpha], [self.relative_change], "o", color="C3")
        ax_curve.legend(fontsize=7, loc="upper left")
        ax_curve.set_xlabel("alpha", fontsize=9)
        ax_curve.set_ylabel("relative change of the outputs", fontsize=9)
        ax_curve.set_title("change grows in proportion to alpha", fontsize=10)
        ax_curve.tick_params(labelsize=8)
        ax_curve.grid(True, alpha=0.3)
        fig.subplots_adjust(left=0.06, right=0.97, bottom=0.15, top=0.89, wspace=0.25)
        self.image.value = figure_to_png(fig)

        self.text.value = _html([
            f"alpha = {alpha:g}, r = {r}: scaling {self._rule()} = {self.scaling:.4g}",
            f"relative change ||scaling B A X|| / ||W0 X + b|| = {self.relative_change:.2%} "
            f"(over {N_INPUTS} inputs)",
            "alpha = 0: the frozen layer exactly" if alpha == 0 else
            f"doubling alpha doubles the change: at alpha = {2 * alpha:g} it would be "
            f"{self.change_at(2 * alpha, r):.2%}",
        ])

    def _rule(self) -> str:
        return "alpha / sqrt(r)" if self.rslora.value else "alpha / r"


def lora_scaling_explorer(alpha: float = 8.0, r: int = 4) -> LoRAScalingExplorer:
    """Sliders for alpha and r over one LoRA layer: the scaling, the outputs, and how far they move."""
    return LoRAScalingExplorer(alpha=alpha, r=r)
