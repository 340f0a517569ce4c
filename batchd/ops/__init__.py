"""Ops: the operator's commands, run from a shell beside the service.

Takes: the settings (the service's effective settings when the shell names none) and the journal.
Hands on: what the operator reads (``batchd status``, ``doctor``'s checks) and the journal's guarded
changes they ask for (cancel, retry).
May import: every stage below it (``intake``, ``run``, ``publish``, ``status``, ``api``); nothing
imports ``ops`` but the command line and the daemon's start-up.

- ``commands``: ``status``, ``convert``, ``render``, ``cancel``, ``retry``
- ``doctor``: the checks ``batchd doctor`` runs
- ``checks``: what a check answers (``Check``, its ``Level``) and the line it prints
- ``preflight``: what ``batchd run`` refuses at start-up beyond the model
- ``effective``: the service's settings (minus secrets) in ``state_dir/effective-settings.json``
"""
