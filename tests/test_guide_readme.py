"""Every code block of the user-guide page "Using your own Pyro model" (docs/guide/own_model.md, once a
README section) and of the README section "The API in 20 lines" runs, in order, as written."""

import re
from pathlib import Path

import pyro
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OWN_MODEL = ROOT / "docs" / "guide" / "own_model.md"


def section_code_blocks(title: str, path: Path = README):
    text = path.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_own_model_page_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", OWN_MODEL.read_text(), flags=re.S)  # the whole page
    assert len(blocks) >= 5
    pyro.set_rng_seed(0)
    namespace = {}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/guide/own_model.md block {number}", "exec"), namespace)
        except Exception as err:  # name the failing block
            raise AssertionError(f"docs/guide/own_model.md block {number} failed: {err!r}\n{block}") from err


@pytest.mark.slow
def test_readme_api_in_20_lines_runs(monkeypatch):
    """The README's first example as written, on the real MNIST files: 100 training steps of the
    default (paper-size) generator and 400-step test-time inference, about 2 minutes on one core."""
    from tests.conftest import require_mnist

    monkeypatch.setenv("PYRO_LFBM_DATA", str(require_mnist()))
    (block,) = section_code_blocks("## The API in 20 lines")
    pyro.set_rng_seed(0)
    namespace = {}
    exec(compile(block, "README 'The API in 20 lines'", "exec"), namespace)
    assert namespace["z"].shape == (100, 20) and namespace["score"].shape == (100,)
    assert namespace["samples"].shape == (64, 1, 28, 28) and namespace["recon"]["z"].shape == (1, 8, 20)
    assert bool(namespace["score"].isfinite().all())
