"""A Jupyter server extension: notebooks saved from JupyterLab come back tomorrow.

A lesson saved with live panels would reopen showing "Error displaying widget: model not found"
(no kernel serves those widgets any more) and carry megabytes of widget state. With this
extension enabled, every save goes through :func:`bitkit.runs.pre_save_hook`, which writes each
panel's static view and its figures instead, exactly as ``bitkit run`` writes its executed
copies. The open browser tab keeps its live panels; re-running a cell brings one back live.

Installing bitkit enables it for its environment's Jupyter server: a wheel puts
``etc/jupyter/jupyter_server_config.d/bitkit.json`` there, and ``make install`` (an editable
install, which skips data files) runs ``jupyter server extension enable --sys-prefix
bitkit.jupyter_extension``; ``jupyter server extension disable bitkit.jupyter_extension`` turns
it off. Nothing here imports Jupyter: the server hands itself in.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "bitkit.jupyter_extension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from bitkit.runs import pre_save_hook

    serverapp.contents_manager.register_pre_save_hook(pre_save_hook)
    serverapp.log.info("bitkit: notebooks are saved with static panel views "
                       "(bitkit.runs.pre_save_hook)")
