"""What a Workbench's pod runs: `python -m kaip.workbench.lab [JupyterLab options]`.

JupyterLab itself, with one change that command-line options cannot make: its page no longer carries the
server's token. JupyterLab writes the token into every page's config (so that the browser can call the API), but
the browser here never needs it — the Kaip proxy adds it to each request it forwards — and a user must not see it,
since it opens JupyterLab's port directly. JupyterHub clears it the same way.
"""

from __future__ import annotations

import sys
from typing import Any


def hide_token(_handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
    page_config["token"] = ""
    return page_config


def main(argv: list[str] | None = None) -> None:
    from jupyterlab.labapp import LabApp

    server = LabApp.initialize_server(argv=sys.argv[1:] if argv is None else argv,
                                      tornado_settings={"page_config_hook": hide_token})
    server.start()


if __name__ == "__main__":
    main()
