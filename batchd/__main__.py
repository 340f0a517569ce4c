"""`python -m batchd`: the command line's entry point (``cli.main``)."""

from batchd.cli import main

raise SystemExit(main())
