"""FlowAct.

Installed, `flowact.schemas`, `flowact.bus`, `flowact.renderer` and the rest are folders of
this package (pyproject's package-dir). Run from a source checkout that is not installed
editable (a non-editable install with the checkout as the working directory, as in the
Docker image, or a plain `PYTHONPATH=.`), this folder is found first and holds none of them;
they are the checkout's top-level folders, so the checkout's root is searched as well.
"""

from pathlib import Path as _Path

_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "renderer" / "__init__.py").is_file():
    __path__.append(str(_root))
del _Path, _root
