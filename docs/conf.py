"""Sphinx configuration of the pyro-lfbm site: ``sphinx-build -W -b html docs docs/_build/html``.

Nothing here needs the network: no intersphinx, MathJax is served from the build's own ``_static``
(the ``sphinx-mathjax-offline`` package), and the tutorials (sphinx-gallery) read MNIST from
``$PYRO_LFBM_DATA`` (else ``../shared/data``). ``PYRO_LFBM_DOCS_FULL=1`` runs the tutorials at
full size; the default is a small mode that builds in a few minutes on one thread.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout's package, not another installed copy
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
if "PYRO_LFBM_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["PYRO_LFBM_DATA"] = str(ROOT.parent / "shared" / "data")

import pyro_lfbm  # noqa: E402

project = "pyro-lfbm"
author = "the pyro-lfbm developers"
copyright = "2026, the pyro-lfbm developers"
release = version = pyro_lfbm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # bundles MathJax 3 and sets mathjax_path to the local copy
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "lfbm_docs",
]
mathjax_path = "mathjax/tex-chtml.js"

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/*.py", "tutorials/*.txt", "tutorials/README*"]

autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # torch's and Pyro's inherited docstrings are not ours to render
autosummary_generate = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
nitpicky = False
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = f"pyro-lfbm {release}"
html_static_path = []
pygments_style = "sphinx"

FULL = os.environ.get("PYRO_LFBM_DOCS_FULL", "") == "1"
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials"],
    "gallery_dirs": ["auto_tutorials"],
    "filename_pattern": r"/plot_",  # every tutorial is executed
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    # PYRO_LFBM_DOCS_RUN=0: render the tutorials without running them (a quick check of the pages;
    # without -W, as sphinx-gallery then warns that nothing ran)
    "plot_gallery": "False" if os.environ.get("PYRO_LFBM_DOCS_RUN") == "0" else "True",
    "min_reported_time": 1,
    "show_memory": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "seaborn"),
}
