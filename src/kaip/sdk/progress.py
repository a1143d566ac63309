"""Progress bars that render in JupyterLab (as widgets) and in terminals (as text): tqdm's `auto` front end.

The SDK's `wait()` methods poll the server and move one bar: training steps with the loss, pipeline tasks
done, a rollout's share of traffic on the new revision.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled(progress: bool | None) -> bool:
    """`None` means: show bars when someone is watching (a notebook or a terminal), not in CI logs."""
    if progress is not None:
        return progress
    if os.environ.get("KAIP_PROGRESS") in ("0", "false", "no"):
        return False
    return "ipykernel" in sys.modules or sys.stderr.isatty()


class Bar:
    """A progress bar whose total may become known later (a training job learns its step count once it runs)."""

    def __init__(self, desc: str, *, unit: str = "it", total: float | None = None, show: bool | None = None) -> None:
        self._bar: Any = None
        if enabled(show):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def update_to(self, n: float, *, total: float | None = None, postfix: dict[str, Any] | None = None,
                  desc: str | None = None) -> None:
        """Move the bar to `n` (absolute), with an optional new total, postfix fields and description."""
        bar = self._bar
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = total
        if desc is not None and desc != bar.desc:
            bar.set_description_str(desc, refresh=False)
        if postfix:
            bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
        bar.n = n
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
