"""Every code block of the README section "Using your own Pyro model" runs, in order, as written."""

import re
from pathlib import Path

import pyro

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using your own Pyro model"


def section_code_blocks():
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_section_snippets_run(capsys):
    blocks = section_code_blocks()
    assert len(blocks) >= 5
    pyro.set_rng_seed(0)
    namespace = {}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"README '{SECTION[3:]}' block {number}", "exec"), namespace)
        except Exception as err:  # name the failing block
            raise AssertionError(f"README block {number} failed: {err!r}\n{block}") from err
