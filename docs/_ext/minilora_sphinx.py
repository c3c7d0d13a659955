"""The website's own pages, written before Sphinx reads the sources.

- course/NN_name.ipynb: each notebook with the outputs of its one run (see
  notebook_cache.py), a card at the top (learning goal, prerequisites, time,
  lesson; from course.yml) and its explorers shown as pictures.
- api/: one page per minilora module documenting every public name defined
  there (autodoc), and a page for the package listing what it re-exports.

Both folders are generated and git-ignored. A docstring that is not valid
reStructuredText is shown verbatim rather than mangled or failing the build.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import yaml
from docutils.core import publish_doctree
from docutils.utils import SystemMessage

import notebook_cache

DOCS = Path(__file__).resolve().parents[1]
COURSE_DIR = DOCS / "course"
API_DIR = DOCS / "api"


def _log():
    from sphinx.util import logging

    return logging.getLogger("minilora_sphinx")


def _write_if_changed(path: Path, text: str) -> None:
    # unchanged files keep their timestamps, so an incremental build re-reads only what changed
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- the notebooks

def _card(number: str, entry: dict, seconds: float | None, name: str) -> str:
    lesson = entry.get("lesson")
    lesson_text = ("optional" if lesson == "optional" else
                   f"{{ref}}`lesson {lesson} <lesson-{lesson}>` of the teacher's guide") if lesson else "—"
    runs = f"; the notebook runs top to bottom in {seconds:.0f} s" if seconds is not None else ""
    return "\n".join([
        "```{admonition} About this notebook",
        ":class: tip minilora-card",
        "",
        f"**Learning goal.** {entry['goal']}",
        "",
        f"**Prerequisites.** {entry['prerequisites']}",
        "",
        f"**Time.** About {entry['minutes']} minutes in class{runs}.",
        "",
        f"**Lesson.** {lesson_text}. The notebook itself: `notebooks/{name}`"
        " (open it in JupyterLab to run it and do the exercises).",
        "```",
    ])


def stage_notebooks(course: dict) -> list[str]:
    """Write docs/course/NN_name.ipynb for every course notebook; returns their names."""
    names = []
    for notebook in notebook_cache.course_notebooks():
        number = notebook.name[:2]
        try:
            book = notebook_cache.static_widgets(notebook_cache.executed(notebook, log=_log().info))
        except Exception as exc:                  # noqa: BLE001 - a failing cell: say which, build the rest
            _log().warning(f"{notebook.name} failed when run for the website, shown without outputs: "
                           f"{getattr(exc, 'ename', type(exc).__name__)}: "
                           f"{getattr(exc, 'evalue', str(exc))[:500]}")
            book = json.loads(notebook.read_text(encoding="utf-8"))
        entry = course.get(number)
        if entry is None:
            _log().warning(f"docs/course.yml has no entry for {notebook.name}: add its goal, prerequisites, "
                           "minutes and lesson under the key '%s'", number)
            entry = {"goal": "—", "prerequisites": "—", "minutes": "?"}
        seconds = book.get("metadata", {}).get("minilora_executed", {}).get("seconds")
        card = {"cell_type": "markdown", "id": "minilora-card", "metadata": {},
                "source": _card(number, entry, seconds, notebook.name)}
        cells = book["cells"]
        at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0     # after the title cell
        cells.insert(at, card)
        book.get("metadata", {}).pop("jupytext", None)
        _write_if_changed(COURSE_DIR / notebook.name, json.dumps(book, indent=1, ensure_ascii=False) + "\n")
        names.append(notebook.name)
    for stale in COURSE_DIR.glob("*.ipynb"):            # a notebook renamed or removed since the last build
        if stale.name not in names:
            stale.unlink()
    return names


# ---------------------------------------------------------------- the API reference

def _cannot_import(name: str) -> None:
    _log().warning(f"API reference: cannot import the package {name}")


def public_modules() -> list[str]:
    """minilora and every module under it (private ones, '_x', left out)."""
    import minilora

    names = ["minilora"]
    for info in pkgutil.walk_packages(minilora.__path__, prefix="minilora.", onerror=_cannot_import):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def public_names(module) -> list[str]:
    """The module's public names: its __all__, else names not starting with '_' that it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(obj) or inspect.isclass(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    return sorted(dict.fromkeys(names))


def home_of(module, name: str) -> str:
    """The module where `module.name` is defined (itself for data without a __module__)."""
    obj = getattr(module, name)
    home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
    return home or module.__name__


def _directive(module_name: str, name: str, obj) -> str:
    target = f"{module_name}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n   :show-inheritance:\n"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f".. autofunction:: {target}\n"
    # a constant: its own docstring would be its type's (an ndarray's, say), so state the type only
    # (the name is relative: automodule above has set the current module)
    value = repr(obj)
    shown = f"   :value: {value}\n" if len(value) <= 60 and "\n" not in value else ""
    return f".. py:data:: {name}\n   :module: {module_name}\n   :type: {type(obj).__name__}\n{shown}"


def _first_line(module) -> str:
    doc = inspect.getdoc(module) or ""
    return doc.strip().split("\n")[0].replace("|", "\\|") if doc else ""


def write_api_pages() -> list[str]:
    modules = public_modules()
    rows = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:                  # noqa: BLE001 - say which module, document the rest
            _log().warning(f"API reference: cannot import {module_name} ({type(exc).__name__}: {exc})")
            continue
        here, elsewhere = [], []
        for name in public_names(module):
            if not hasattr(module, name):
                _log().warning(f"{module_name}.__all__ names {name!r}, which the module does not define")
                continue
            home = home_of(module, name)
            (here if home == module_name else elsewhere).append((name, home))
        lines = [module_name, "=" * len(module_name), "",
                 f".. automodule:: {module_name}", "   :no-members:", ""]
        if elsewhere:
            lines += ["Also available here", "-------------------", "",
                      ".. list-table::", "   :header-rows: 0", ""]
            for name, home in elsewhere:
                lines += [f"   * - :py:obj:`{module_name}.{name} <{home}.{name}>`",
                          f"     - defined in :py:mod:`{home}`"]
            lines.append("")
        if here:
            lines += ["Reference", "---------", ""]
            for name, _ in here:
                lines += [_directive(module_name, name, getattr(module, name))]
        _write_if_changed(API_DIR / f"{module_name}.rst", "\n".join(lines) + "\n")
        rows.append((module_name, _first_line(module)))
    index = ["API reference", "=============", "",
             "Every public name of the package, module by module, from the docstrings in the code.", "",
             ".. list-table::", "   :header-rows: 1", "", "   * - module", "     - what it is"]
    for module_name, line in rows:
        index += [f"   * - :doc:`{module_name}`", f"     - {line}"]
    index += ["", ".. toctree::", "   :hidden:", ""] + [f"   {m}" for m, _ in rows]
    _write_if_changed(API_DIR / "index.rst", "\n".join(index) + "\n")
    for stale in API_DIR.glob("*.rst"):
        if stale.stem != "index" and stale.stem not in modules:
            stale.unlink()
    return modules


# ---------------------------------------------------------------- docstrings that are not reST

def _is_clean_rst(text: str, env) -> bool:
    # a trial parse with Sphinx's roles and directives available (they look up `env`);
    # nothing is reported, we only look for warnings in the throwaway tree
    try:
        doctree = publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 5,
                                                             "warning_stream": False, "env": env})
    except (SystemMessage, Exception):       # noqa: BLE001 - any failure means "show it verbatim"
        return False
    messages = list(doctree.findall(lambda n: n.tagname == "system_message")) + doctree.transform_messages
    problems = list(doctree.findall(lambda n: n.tagname == "problematic"))   # e.g. |x| read as a substitution
    return not problems and not any(message["level"] >= 2 for message in messages)


def _verbatim_if_not_rst(app, what, name, obj, options, lines: list[str]) -> None:
    text = "\n".join(lines)
    if text.strip() and not _is_clean_rst(text, app.env):
        lines[:] = ["::", ""] + ["   " + line for line in lines] + [""]


OTHER_PAGES = "_other_pages_"


def _list_other_pages(app, docname: str, source: list[str]) -> None:
    """In index.md, replace the line _other_pages_ with the top-level pages it does not name."""
    if docname != "index" or OTHER_PAGES not in source[0]:
        return
    named = set(re.findall(r"^([\w./-]+)\s*$", source[0], flags=re.MULTILINE))
    others = [p.stem for p in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*.rst"))
              if p.stem not in named and p.stem != "index" and not p.stem.startswith("_")
              and p.name != "README.md"]
    source[0] = re.sub(rf"^{OTHER_PAGES}$", "\n".join(others), source[0], flags=re.MULTILINE)


def _generate(app) -> None:
    course = yaml.safe_load((DOCS / "course.yml").read_text(encoding="utf-8")) or {}
    stage_notebooks({str(k): v for k, v in course.items()})
    write_api_pages()


def _copy_mathjax(app, exception):
    """Ship MathJax with the site (conf.py's MATHJAX_DIR), so equations render without a network."""
    source = getattr(app.config, "MATHJAX_DIR", None)
    if exception is not None or source is None or app.builder.format != "html":
        return
    import shutil
    shutil.copytree(source, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))


def setup(app):
    app.add_config_value("MATHJAX_DIR", None, "html")
    app.connect("build-finished", _copy_mathjax)
    app.connect("builder-inited", _generate)
    app.connect("source-read", _list_other_pages)
    app.connect("autodoc-process-docstring", _verbatim_if_not_rst)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
