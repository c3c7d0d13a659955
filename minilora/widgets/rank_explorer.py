"""The rank explorer: accuracy against LoRA's rank, from adapters that were really trained.

    lora_rank_explorer()      # the shipped sweep: task inc, ranks 1-16, two target sets, 3 seeds

Training an adapter takes seconds to minutes, far too slow for a slider. So
`python -m minilora.sweep` trains every (rank, targets, seed) once with one
fixed recipe and writes the results to a small JSON file that ships with the
package; the explorer only reads it, so it answers instantly. Every dot on the
plot is one trained adapter; the line is the mean over seeds, so you see the
spread as well as the average.
"""
from __future__ import annotations

import numpy as np

from minilora.sweep import TARGET_SETS, load_sweep, summarize
from minilora.widgets.linalg_explorers import figure_to_png

try:
    import ipywidgets as widgets
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise ImportError("minilora.widgets needs ipywidgets and matplotlib: "
                      "pip install 'minilora[notebooks]'") from exc

__all__ = ["lora_rank_explorer", "RankExplorer"]


class RankExplorer(widgets.VBox):
    """A rank slider and a target-set choice over a sweep's results.

    Attributes for code and tests: `slider` (the rank), `targets` (the target
    set), `image` (PNG), `text` (HTML), `sweep` (the raw file), `summary`
    ({(targets, rank): stats}), `current` (the stats on show).
    """

    def __init__(self, sweep: dict, rank: int = 4, targets: str | None = None):
        self.sweep = sweep
        self.summary = summarize(sweep)
        self.recipe = sweep["recipe"]
        sets = list(dict.fromkeys(t for t, _ in self.summary))
        ranks = sorted({r for _, r in self.summary})
        rank = min(ranks, key=lambda r_: abs(r_ - rank))
        self.slider = widgets.SelectionSlider(options=ranks, value=rank, description="rank r",
                                              continuous_update=False, layout=widgets.Layout(width="50%"))
        self.targets = widgets.ToggleButtons(options=sets, value=targets if targets in sets else sets[0],
                                             description="adapt")
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.current: dict = {}
        super().__init__([self.slider, self.targets, self.image, self.text])
        self.add_class("minilora-rank-explorer")
        self.slider.observe(self._on_change, names="value")
        self.targets.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change: dict) -> None:
        self.redraw()

    def redraw(self) -> None:
        r, chosen = int(self.slider.value), self.targets.value
        s = self.summary[(chosen, r)]
        self.current = {"rank": r, "targets": chosen, **s}

        fig = Figure(figsize=(7.5, 3.4))
        ax = fig.subplots()
        for k, name in enumerate(dict.fromkeys(t for t, _ in self.summary)):
            ranks = sorted(r_ for t, r_ in self.summary if t == name)
            means = [100 * self.summary[(name, r_)]["mean"] for r_ in ranks]
            style = {"linewidth": 2.2 if name == chosen else 1.0, "alpha": 1.0 if name == chosen else 0.45}
            ax.plot(ranks, means, "-", color=f"C{k}", label=f"{name}: mean of seeds", **style)
            for r_ in ranks:
                acc = 100 * np.array(self.summary[(name, r_)]["accuracies"])
                jitter = r_ * (1 + 0.04 * (np.arange(acc.size) - (acc.size - 1) / 2))
                ax.plot(jitter, acc, "o", color=f"C{k}", markersize=4, alpha=style["alpha"])
        ax.plot([r], [100 * s["mean"]], "s", color="k", markersize=9, fillstyle="none", label="selected")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r_ for _, r_ in self.summary}), [str(r_) for r_ in sorted({r_ for _, r_ in self.summary})])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("rank r")
        ax.set_ylabel(f"held-out accuracy on {self.recipe['task']} (%)")
        ax.set_title(f"{self.recipe['task']}: every dot is one trained adapter (one seed)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.9)
        self.image.value = figure_to_png(fig)

        seeds = ", ".join(f"{100 * a:.1f}%" for a in s["accuracies"])
        self.text.value = (
            "<div style='font-family: monospace; line-height: 1.5'>"
            f"r = {r}, adapting {chosen} ({', '.join(TARGET_SETS.get(chosen, []))})<br>"
            f"accuracy: {100 * s['mean']:.1f}% (mean of {len(s['accuracies'])} seeds; each seed: {seeds})<br>"
            f"spread across seeds: {100 * s['min']:.1f}% to {100 * s['max']:.1f}%<br>"
            f"trainable parameters: {s['trainable']:,}<br>"
            f"recipe, the same for every dot: {self.recipe['steps']} steps, lr {self.recipe['lr']:g}, "
            f"alpha = r (scaling 1), batch {self.recipe['batch_size']}</div>")


def lora_rank_explorer(path=None, rank: int = 4, targets: str | None = None) -> RankExplorer:
    """A rank slider (1-16) and target choice showing accuracy and trainable parameters of real adapters.

    Reads the shipped sweep (or the JSON file at `path`, written by `python -m minilora.sweep`).
    """
    return RankExplorer(load_sweep(path), rank=rank, targets=targets)
