"""A step counter for the small pretraining loops (``pretrain-lm``, ``pretrain-vlm``): a rich progress bar on a
terminal, else one plain line every twentieth of the run (a log file or CI gets progress without bar redraws)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def step_progress(title: str, steps: int, console: Console, enabled: bool = True,
                  prefix: str = "") -> Iterator[Callable[[int, str], None]]:
    """Yield ``update(step, info)``; call it after each of `steps` steps.

    Args:
        title: the bar's label.
        enabled: False shows and prints nothing.
        prefix: put before ``step i/n`` in the plain lines.
    """
    show = enabled and console.is_terminal
    every = max(1, steps // 20)
    columns = (TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, disable=not show) as bar:
        task = bar.add_task(title, total=steps, info="")

        def update(step: int, info: str) -> None:
            bar.update(task, completed=step, info=info)
            if enabled and not show and (step % every == 0 or step == steps):
                console.print(f"{prefix}step {step}/{steps}  {info}", highlight=False)

        yield update
