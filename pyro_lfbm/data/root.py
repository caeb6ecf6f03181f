"""Where data sets live on disk.

One rule, used by every loader and command-line entry point: an explicit
``--data-root`` wins, then the ``PYRO_LFBM_DATA`` environment variable, then the
first of ``./data`` and ``../shared/data`` (relative to the current working
directory) that holds the requested data set; downloads go to ``./data``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Optional

#: Environment variable naming the data root.
DATA_ROOT_ENV = "PYRO_LFBM_DATA"

#: Fallback data root when neither an argument nor the environment variable is given (downloads land here).
DEFAULT_DATA_ROOT = "./data"

#: Folders searched, in order, when neither an argument nor the environment variable is given.
DEFAULT_DATA_ROOTS = (DEFAULT_DATA_ROOT, "../shared/data")


def resolve_data_root(
    data_root: str | os.PathLike[str] | None = None,
    has_data: Optional[Callable[[pathlib.Path], bool]] = None,
) -> pathlib.Path:
    """Return the folder that holds the data sets (torchvision layout).

    :param data_root: explicit root (e.g. from ``--data-root``); ``None`` or an
        empty string falls through to ``$PYRO_LFBM_DATA``, then to the defaults.
    :param has_data: optional test of a default folder; the first of
        :data:`DEFAULT_DATA_ROOTS` that passes it is returned, else ``./data``.
    :returns: the root as a :class:`pathlib.Path` with ``~`` expanded. It is not
        required to exist; the loaders report missing files.
    """
    if data_root is not None and str(data_root) != "":
        return pathlib.Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV, "")
    if env:
        return pathlib.Path(env).expanduser()
    if has_data is not None:
        for candidate in map(pathlib.Path, DEFAULT_DATA_ROOTS):
            if has_data(candidate):
                return candidate
    return pathlib.Path(DEFAULT_DATA_ROOT)
