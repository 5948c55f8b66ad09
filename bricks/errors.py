"""The one exception type users see. Every message names the problem and the fix."""

from __future__ import annotations


class BrickError(Exception):
    """A mistake a user can cause: bad manifest, unknown brick, wrong host, bad file, bad request.

    `status` is the HTTP status the server maps it to; the CLI prints `str(err)` and exits 1.
    """

    status = 400

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class NotFoundError(BrickError):
    status = 404


class HostMismatchError(BrickError):
    status = 409


class InvalidInputError(BrickError):
    status = 422


class ConflictError(BrickError):
    status = 409
