"""The one error every radiograph read failure becomes."""

from __future__ import annotations

from os import PathLike


class RadiographReadError(Exception):
    """A radiograph could not be read.

    Args:
        path: the file that failed.
        reason: what went wrong, in words a user can act on.
    """

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))
