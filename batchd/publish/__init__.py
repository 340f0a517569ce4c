"""Publish: a finished job's journal rows become its outbox folder.

Takes: a job whose run has ended (the journal's rows, its ``JobMetrics``) and the settings.
Hands on: ``outbox/<stem>/`` (results, errors, scores, report, metrics, the input), written as
``.<stem>.partial/`` and renamed, readable by the share's group; the journal marks it published.
May import: the root leaves, ``journal`` and ``run.translate`` (result ids); never ``status``,
``api`` or ``ops``.

- ``outbox``: the single streaming pass and the atomic rename
- ``notify``: a signed webhook and/or a command per final state, journaled and retried
- ``preview``: ``NAME.preview/``, a first look at a running job (the answered rows so far)
- ``scores``: ``scores.csv``: score extraction and safe cells
- ``report``, ``svgchart``: the self-contained ``report.html`` and its inline SVG charts
- ``share``: ``SharedFolder``: group and modes of everything published
"""
