"""Sphinx helpers of the pyro-lfbm site.

``.. lfbm-namespace::`` renders the table of ``pyro_lfbm.__all__``, each name linked to the page of
the sub-package that exports it, so that the table follows the package without editing.
"""

from __future__ import annotations

import importlib
import inspect

from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

#: The sub-packages, lowest layer first (as ``tests/test_layering.py``'s LAYERS).
SUBPACKAGES = ("ops", "data", "transforms", "nets", "priors", "models", "infer", "metrics", "train", "tasks")


def home_of(name: str) -> str:
    """The sub-package whose ``__all__`` exports the top-level name ``name`` (the object itself)."""
    import pyro_lfbm

    obj = getattr(pyro_lfbm, name)
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"pyro_lfbm.{sub}")
        if name in getattr(module, "__all__", ()) and getattr(module, name) is obj:
            return f"pyro_lfbm.{sub}"
    raise ValueError(f"pyro_lfbm.{name} is exported by no sub-package's __all__; add it to one so it is documented")


def summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return first


class NamespaceTable(SphinxDirective):
    has_content = False

    def run(self):
        import pyro_lfbm

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "", "   * - name", "     - what"]
        for name in pyro_lfbm.__all__:
            home = home_of(name)
            lines += [f"   * - :py:obj:`{name} <{home}.{name}>`", f"     - {summary(getattr(pyro_lfbm, name))}"]
        node_lines = StringList(lines, source="lfbm-namespace")
        from docutils import nodes

        container = nodes.container()
        self.state.nested_parse(node_lines, self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("lfbm-namespace", NamespaceTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
