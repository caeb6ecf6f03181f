"""The documentation site (docs/) covers the package: every sub-package of the layering has an API
page, every harness module is on the harness page, every top-level name has a home, every tutorial
has the small / full switch and one thread, and CI builds the site exactly as the README says."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def automodules() -> set:
    found = set()
    for page in (DOCS / "api").glob("*.rst"):
        found.update(re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(), flags=re.M))
    return found


def test_every_layer_has_an_api_page():
    from tests.test_layering import LAYERS

    documented = automodules()
    missing = sorted(f"pyro_lfbm.{name}" for name in LAYERS if not name.startswith("_") and f"pyro_lfbm.{name}" not in documented)
    assert not missing, f"sub-packages without an automodule in docs/api/: {missing}"


def test_every_harness_module_is_documented():
    modules = {f"pyro_lfbm.harness.{p.stem}" for p in (ROOT / "pyro_lfbm" / "harness").glob("*.py") if p.stem != "__init__"}
    missing = sorted(modules - automodules())
    assert not missing, f"harness modules missing from docs/api/harness.rst (the harness has no __all__): {missing}"


def test_every_top_level_name_has_a_home_page(monkeypatch):
    pytest.importorskip("sphinx")
    monkeypatch.syspath_prepend(str(DOCS / "_ext"))
    import lfbm_docs
    import pyro_lfbm

    homes = {name: lfbm_docs.home_of(name) for name in pyro_lfbm.__all__}
    assert homes["LangevinGuide"] == "pyro_lfbm.infer" and homes["fit"] == "pyro_lfbm.train"
    monkeypatch.setattr(pyro_lfbm, "Stray", object(), raising=False)
    with pytest.raises(ValueError, match="pyro_lfbm.Stray is exported by no sub-package"):
        lfbm_docs.home_of("Stray")


@pytest.mark.parametrize("script", sorted((DOCS / "tutorials").glob("plot_*.py")), ids=lambda p: p.stem)
def test_tutorials_have_the_full_switch_and_one_thread(script):
    text = script.read_text()
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{script.name}: sphinx-gallery needs the title docstring first"
    assert 'os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"' in text, f"{script.name}: no PYRO_LFBM_DOCS_FULL switch"
    assert "torch.set_num_threads(1)" in text, f"{script.name}: the docs build runs on one thread"


def test_ci_builds_the_site_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    (build,) = set(re.findall(r"^(sphinx-build -W .*)$", readme, flags=re.M))
    assert build in ci, f"README's build command {build!r} is not what .ci/run runs"
    install = re.findall(r"^(pip install -e \S+)$", readme, flags=re.M)
    assert len(install) == 1 and install[0].replace("pip install", "python -m pip install --quiet") in ci
