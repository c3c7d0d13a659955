"""Sphinx configuration for the minilora course website.

Build: python -m sphinx -W -b html docs docs/_build/html   (pip install -e ".[docs]")

The notebooks are shown with the outputs of one run: the test suite's run when
it is fresh (tests/test_docs.py saves each executed notebook under
docs/_build/executed/), otherwise the build runs them itself. MyST-NB never
executes anything (nb_execution_mode = "off"); see _ext/notebook_cache.py.
"""
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))            # the minilora package, for autodoc

project = "minilora"
author = "the minilora authors"
copyright = "minilora authors, MIT licence"

extensions = [
    "myst_nb",                   # Markdown pages and notebooks
    "sphinx.ext.autodoc",        # the API reference, from docstrings
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "minilora_sphinx",           # writes course/ and api/ before the build reads them
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "_ext", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Notebooks: render the saved outputs, never execute here.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"member-order": "bysource"}
default_role = "literal"

html_theme = "sphinx_book_theme"
html_title = "minilora: learn LoRA by building it"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_static_path = []

# Equations offline: MathJax 2 from the jupyter-server-mathjax package (the docs extra),
# copied into _static/mathjax by _ext/minilora_sphinx.py; without it, MathJax's CDN.
try:
    import jupyter_server_mathjax
    MATHJAX_DIR = Path(jupyter_server_mathjax.__file__).parent / "static"
except ImportError:
    MATHJAX_DIR = None
if MATHJAX_DIR is not None and (MATHJAX_DIR / "MathJax.js").is_file():
    mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML"
html_last_updated_fmt = None
