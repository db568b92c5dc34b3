"""A Jupyter server extension: notebooks saved from JupyterLab come back tomorrow.

A lesson saved with live panels would reopen showing "Error displaying widget: model not found"
(no kernel serves those widgets any more) and carry megabytes of widget state. With this
extension enabled, every save goes through :func:`bitkit.runs.pre_save_hook`, which writes each
panel's static view and its figures instead, exactly as ``bitkit run`` writes its executed
copies. The open browser tab keeps its live panels; re-running a cell brings one back live.

Jupyter enables a server extension when a JSON file under
``<prefix>/etc/jupyter/jupyter_server_config.d/`` names it. A wheel puts bitkit's file there
itself. An editable install (``pip install -e``, which ``make install`` uses) skips such data
files, and ``jupyter server extension enable`` only toggles extensions a file already names, so
``make install`` writes the file with ``python -m bitkit.jupyter_extension``; run that after any
``pip install -e .`` of your own. ``jupyter server extension disable bitkit.jupyter_extension``
turns the hook off. Nothing here imports Jupyter: the server hands itself in.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

NAME = "bitkit.jupyter_extension"
# The file a wheel installs (pyproject's data-files) and `python -m bitkit.jupyter_extension` copies.
CONFIG = Path(__file__).parent / "jupyter_config" / "bitkit.json"
CONFIG_DIR = Path("etc") / "jupyter" / "jupyter_server_config.d"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from bitkit.runs import pre_save_hook

    serverapp.contents_manager.register_pre_save_hook(pre_save_hook)
    serverapp.log.info("bitkit: notebooks are saved with static panel views "
                       "(bitkit.runs.pre_save_hook)")


def enable(prefix: str | Path = sys.prefix) -> Path:
    """Enable the extension for the Jupyter server of the environment at ``prefix`` (this one by
    default), as a wheel install does; returns the config file written."""
    target = Path(prefix) / CONFIG_DIR / CONFIG.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, target)
    return target


if __name__ == "__main__":
    try:
        print(f"enabled {NAME} for this environment's Jupyter server: {enable()}")
    except OSError as e:  # e.g. a system Python's prefix is not writable
        sys.exit(f"could not enable {NAME}: {e}. Run it with the Python of an environment "
                 "you own (a venv or conda env), or copy "
                 f"{CONFIG} into <prefix>/{CONFIG_DIR}/ yourself.")
