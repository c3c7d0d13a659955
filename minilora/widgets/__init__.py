"""Interactive explorers for the notebooks (ipywidgets), one module per idea.

Each explorer is an ipywidgets container whose slider callbacks run
synchronously, so a test can set `w.slider.value = 5` and read the picture
and the numbers straight after, with no browser and no kernel.

Needs the notebook extras: `pip install minilora[notebooks]`.
"""
from minilora.widgets.linalg_explorers import *  # noqa: F401,F403  SVD rank slider, 2dr vs d^2
from minilora.widgets.linalg_explorers import figure_to_png, load_sample_image
from minilora.widgets.lora_scaling import *  # noqa: F401,F403  alpha / r slider
from minilora.widgets.trainable_toggle import *  # noqa: F401,F403  which weights train, and their bytes
from minilora.widgets.rank_explorer import *  # noqa: F401,F403  rank explorer over trained adapters
from minilora.widgets.delta_w import *  # noqa: F401,F403  truncated-Delta W rank slider, prompt length
