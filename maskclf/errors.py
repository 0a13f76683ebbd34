"""Bad input is reported as one line naming every problem, with exit code 2; a run that failed for
another reason as one line with exit code 1."""

from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class InputError(Exception):
    """Bad user input (files, layout, config). Carries every problem found."""

    def __init__(self, problems: Iterable[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self.message())

    def message(self, limit: int = 20) -> str:
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        text = "; ".join(shown)
        if more > 0:
            text += f"; ... and {more} more"
        n = len(self.problems)
        return f"{n} problem{'s' if n != 1 else ''}: {text}" if n > 1 else text


class RunFailed(Exception):
    """A run that could not finish for a reason that is not the user's input; one line, exit code 1."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's ``main`` so InputError becomes one stderr line and exit 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except InputError as e:
            print(f"error: {e.message()}", file=sys.stderr)
            return 2
        except RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped
