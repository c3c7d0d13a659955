"""Sliders over measured results: truncating Delta W (notebook 09) and prompt length (notebook 11).

Training inside a slider callback would be far too slow for a class, so these
read results that `minilora paper` measured (the package ships a full run):

- `delta_w_rank_explorer`: every block matrix's full fine-tuning update
  Delta W truncated to rank r; the slider shows the model's exact-match
  accuracy at that r, the share of ||Delta W||_F^2 kept, and the random-
  directions control;
- `prompt_length_explorer`: soft-prompt tuning with n virtual tokens; the
  slider shows accuracy, trainable parameters and the context left to the input.

The callbacks run synchronously: a test can set `w.slider.value` and read
`w.info` at once.
"""
from __future__ import annotations

import numpy as np

from minilora.widgets.linalg_explorers import _html, figure_to_png

try:
    import ipywidgets as widgets
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise ImportError("minilora.widgets needs ipywidgets and matplotlib: "
                      "pip install 'minilora[notebooks]'") from exc

__all__ = ["delta_w_rank_explorer", "DeltaWRankExplorer", "prompt_length_explorer", "PromptLengthExplorer",
           "mean_energy_kept"]


def mean_energy_kept(spectra: dict, r: int) -> float:
    """Mean over matrices of sum_{i<=r} s_i^2 / sum_i s_i^2 (the spectra may be scaled; the ratio is not)."""
    shares = []
    for s in spectra.values():
        s2 = np.asarray(s, dtype=np.float64) ** 2
        shares.append(float(s2[:r].sum() / s2.sum()))
    return float(np.mean(shares))


def _results(results):
    if results is None:
        from minilora.paper import load_results
        results = load_results()
    return results


class DeltaWRankExplorer(widgets.VBox):
    """Slide r: accuracy of the base model plus every Delta W truncated to rank r.

    Attributes: `slider` (SelectionSlider over the measured ranks), `image`,
    `text`, and `info` (dict: rank, accuracy, full_accuracy, random_control,
    energy_kept) for the current position.
    """

    def __init__(self, results: dict | None = None, rank: int | None = None):
        ir = _results(results)["intrinsic_rank"]
        self.ranks = list(ir["truncation"]["ranks"])
        self.accuracy = list(ir["truncation"]["accuracy"])
        self.full_accuracy = ir["full_accuracy"]
        self.random_control = ir["random_control_accuracy"]
        self.spectra = ir["spectra"]
        self.task = ir["task"]
        self.slider = widgets.SelectionSlider(options=self.ranks, value=rank if rank in self.ranks else self.ranks[0],
                                              description="rank r", continuous_update=False,
                                              layout=widgets.Layout(width="60%"))
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.info: dict = {}
        super().__init__([self.slider, self.image, self.text])
        self.add_class("minilora-delta-w-rank")
        self.slider.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        r = self.slider.value
        acc = self.accuracy[self.ranks.index(r)]
        energy = mean_energy_kept(self.spectra, r)
        self.info = {"rank": r, "accuracy": acc, "full_accuracy": self.full_accuracy,
                     "random_control": self.random_control, "energy_kept": energy}
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        ax.plot(self.ranks, self.accuracy, "o-", color="C0", label="Delta W truncated to rank r")
        ax.plot([r], [acc], "o", color="C3", markersize=12, label=f"r = {r}")
        ax.axhline(self.full_accuracy, color="k", ls="--", label="untruncated Delta W")
        ax.axhline(self.random_control, color="r", ls=":", label="same spectrum, random directions")
        ax.set(xscale="log", xlabel="rank r kept in every Delta W", ylabel=f"exact match on {self.task}",
               ylim=(-0.03, 1.03))
        ax.set_xticks(self.ranks, [str(k) for k in self.ranks])
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        self.image.value = figure_to_png(fig)
        self.text.value = _html([
            f"rank {r} in each of {len(self.spectra)} matrices: accuracy {acc:.1%} "
            f"(untruncated {self.full_accuracy:.1%})",
            f"share of ||Delta W||_F^2 kept: {energy:.1%} (mean over matrices)",
            f"control, same singular values in random directions: {self.random_control:.1%}"])


def delta_w_rank_explorer(results: dict | None = None, rank: int | None = None) -> DeltaWRankExplorer:
    """The rank slider over truncated Delta W (default: the shipped full run)."""
    return DeltaWRankExplorer(results, rank)


class PromptLengthExplorer(widgets.VBox):
    """Slide the number of virtual tokens: accuracy, trainable parameters, context left.

    Attributes: `slider`, `image`, `text`, and `info` (dict: prompt_length,
    accuracy, trainable_params, context_left, lora_accuracy).
    """

    def __init__(self, results: dict | None = None, block_size: int = 32):
        em = _results(results)["earlier_methods"]
        pt = em["prompt_tuning"]
        self.lengths, self.accuracy, self.params = pt["prompt_lengths"], pt["accuracy"], pt["trainable_params"]
        self.lora = em["lora"]
        self.block_size = block_size
        self.task = em["task"]
        self.slider = widgets.SelectionSlider(options=self.lengths, value=self.lengths[0],
                                              description="prompt length", continuous_update=False,
                                              layout=widgets.Layout(width="60%"))
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.info: dict = {}
        super().__init__([self.slider, self.image, self.text])
        self.add_class("minilora-prompt-length")
        self.slider.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        n = self.slider.value
        i = self.lengths.index(n)
        self.info = {"prompt_length": n, "accuracy": self.accuracy[i], "trainable_params": self.params[i],
                     "context_left": self.block_size - n, "lora_accuracy": self.lora["accuracy"]}
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        ax.plot(self.lengths, self.accuracy, "o-", label="prompt tuning")
        ax.plot([n], [self.accuracy[i]], "o", color="C3", markersize=12)
        ax.axhline(self.lora["accuracy"], color="k", ls="--",
                   label=f"LoRA r={self.lora['r']} ({self.lora['trainable_params']} parameters)")
        ax.set(xlabel="virtual tokens", ylabel=f"exact match on {self.task}", ylim=(-0.03, 1.03))
        ax.legend(fontsize=7)
        fig.tight_layout()
        self.image.value = figure_to_png(fig)
        self.text.value = _html([
            f"{n} virtual tokens: accuracy {self.accuracy[i]:.1%}, {self.params[i]} trainable parameters",
            f"context left to the input: {self.block_size - n} of {self.block_size} positions"])


def prompt_length_explorer(results: dict | None = None) -> PromptLengthExplorer:
    """The prompt-length slider (default: the shipped full run)."""
    return PromptLengthExplorer(results)
