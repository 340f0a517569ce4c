"""What a ``batchd doctor`` check answers: a level (OK, WARN, FAIL), what it found, the fix, and the line
it prints."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Level(str, Enum):
    """How a check came out: only FAIL makes ``batchd doctor`` exit non-zero."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One check's answer: its level, what was found, and the fix (printed unless the level is OK)."""

    level: Level
    what: str
    fix: str = ""

    def text(self) -> str:
        shown = f"{self.level.value:<4} {self.what}"
        return shown + (f"\n     fix: {self.fix}" if self.fix and self.level is not Level.OK else "")
