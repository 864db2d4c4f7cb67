"""Progress reporting without printing: the library reports, the caller decides how to show it.

Long stages take a ``progress`` argument, a :class:`ProgressFactory`. The library default is
:func:`silent`; the CLI passes a tqdm-backed factory. Tests can pass a recording one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values: object) -> None: ...


ProgressFactory = Callable[..., AbstractContextManager[ProgressBar]]
"""Called as ``progress(total=..., desc=..., unit=...)``; returns a context manager yielding a bar."""


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: object) -> None:
        pass


@contextmanager
def silent(total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[ProgressBar]:
    yield _NullBar()


def into(bar: ProgressBar) -> ProgressFactory:
    """A factory whose bars tick ``bar``: an inner loop (one part of a stage) moves the stage's own bar.

    For work whose unit of resumption is large (a part of 256 passages of a slow generator: minutes on
    a CPU) while its unit of work is small (one batch): the bar moves per batch, not per part.
    """

    @contextmanager
    def factory(total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[ProgressBar]:
        yield bar

    return factory


@contextmanager
def tqdm_progress(total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[ProgressBar]:
    """A tqdm bar on stderr (used by the CLI)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True) as bar:
        yield bar
