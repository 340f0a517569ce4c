"""Intake: files in the inbox become queued jobs in the journal.

Takes: the inbox folder (files people drop, pipeline folders) and the settings.
Hands on: a claimed file (spool copy + sha256) and a job in the journal with one request row per
valid input line, or that file's error record; nothing else leaves this stage.
May import: the root leaves (``config``, ``errors``, ``pipeline``, ``fsutil`` ...), ``backends.base``
records and ``journal``; never ``run``, ``publish``, ``status``, ``api`` or ``ops``.

- ``inbox``: what in the inbox is a candidate, the ignore rules, pipeline folders, safe outbox names
- ``watch``: the inotify/poll watcher and the ``StabilityTracker`` claim rule
- ``cancels``: ``NAME.cancel`` from the share: the dropper's cancels their job, anyone else's is refused
- ``claim``: claim a file (spool copy, hash, journal rows, unlink), then ingest it
- ``definition``: the pipeline as the journal keeps it and the duplicate key hashed over it
- ``quotas``: what one file may cost (invalid lines; requests its owner has waiting)
- ``ingest``: streaming JSONL/CSV readers with per-line validation
- ``worker``: the watch task and the claim task (own journal connection, worker thread), rescans
"""
