"""``python -m tests.support.emulator`` (or ``python tests/support/emulator``): the emulator in its own process."""

import os
import sys

if __package__ in (None, ""):  # run by path: this folder is on sys.path, not the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from tests.support.emulator.cli import main  # noqa: E402

sys.exit(main())
