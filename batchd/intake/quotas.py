"""What one file may cost: the errors that stop reading it when it goes over a limit.

``limits.max_invalid_lines`` (a file of junk lines stays one summary record) and
``limits.max_queued_requests_per_owner`` (one inbox member cannot fill the queue for everyone; the
owner is the uid that owned the file when it was claimed, ``Job.owner_uid``).
"""

from __future__ import annotations

from batchd.errors import InputError


class TooManyInvalid(InputError):
    """More invalid lines than ``limits.max_invalid_lines``: the file fails, read no further."""

    def __init__(self, cap: int, line: int) -> None:
        super().__init__(
            f"more than {cap:,} invalid lines (limits.max_invalid_lines): stopped reading at line "
            f"{line:,}; the first {cap:,} are listed one by one, the rest of the file was not read "
            "and nothing in it ran",
            code="too_many_invalid_lines",
        )


class OverOwnerLimit(InputError):
    """The file would take its owner over ``limits.max_queued_requests_per_owner``."""

    def __init__(self, uid: int, cap: int, queued: int) -> None:
        super().__init__(
            f"the file's owner (uid {uid}) already has {queued:,} requests waiting; this file would take them "
            f"over limits.max_queued_requests_per_owner ({cap:,}); drop it again once those have run",
            code="owner_limit",
        )
