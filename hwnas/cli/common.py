"""Shared CLI plumbing: JSON output, one-line errors, progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np


def _default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``result`` as JSON on stdout (``--json``) or through ``human``."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=_default) + "\n")
    elif human is not None:
        human(result)
    else:
        sys.stdout.write(json.dumps(result, indent=2, default=_default) + "\n")


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``update(completed, total=None, description=None)``; draws on stderr, never on stdout."""
    if not enabled or not sys.stderr.isatty():
        # no terminal (CI, pipes): print a line every ~10% instead of redrawing a bar
        state = {"last": -1}

        def update(completed: int, total_: int | None = None, description_: str | None = None) -> None:
            t = total_ or total
            if not enabled or not t:
                return
            tenth = int(10 * completed / t)
            if tenth != state["last"]:
                state["last"] = tenth
                sys.stderr.write(f"{description_ or description}: {completed}/{t}\n")
                sys.stderr.flush()

        yield update
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total)

        def update(completed: int, total_: int | None = None, description_: str | None = None) -> None:
            kw: dict = {"completed": completed}
            if total_ is not None:
                kw["total"] = total_
            if description_ is not None:
                kw["description"] = description_
            prog.update(task, **kw)

        yield update
