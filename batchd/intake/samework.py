"""The same work: an earlier job with the same duplicate key that the same model file answered.

The duplicate key (``definition.work_key``) holds the file's bytes and the model *name*; a model
re-pulled under the same tag, or another quantisation served under it, answers under that name.
So when the key matches an earlier job that ran, ingest asks the server for the model's fingerprint
now (``Backend.fingerprint``: Ollama's ``/api/tags`` digest, an OpenAI-compatible server's
``/v1/models`` entry, the embedded GGUF's sha256) and compares it with every fingerprint that job
recorded (``run.fingerprints``: the one taken at its start and each ``model_changed``, kept in the
journal with its counters). The same -> a duplicate, as always. Another -> new work: the job runs,
and ``duplicate_model_changed`` names both. The server cannot be asked (down, over
``PROBE_SECONDS``, or it does not tell) -> a duplicate, as before fingerprints, and
``duplicate_fingerprint_unchecked`` says why: a claim never waits on a server for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from batchd.backends.base import Backend, Fingerprint
from batchd.errors import BatchdError
from batchd.journal import Job, JobState, Journal

log = structlog.get_logger("batchd.claim")

#: how long a claim waits for the server to say which model it serves (Ollama: one ``/api/tags``)
PROBE_SECONDS = 5.0

#: the fingerprint of the model the server serves under a name now; None where it cannot tell.
#: Raises ``Unchecked`` when the server cannot be asked.
Probe = Callable[[str], Fingerprint | None]


class Unchecked(Exception):
    """The server could not be asked which model it serves (down, too slow, misconfigured)."""


def no_probe(model: str) -> Fingerprint | None:
    """The ``Probe`` of a claimer with no server to ask: every comparison is unchecked."""
    raise Unchecked("no server to ask")


def probe_for(make: Callable[[], Backend], timeout: float = PROBE_SECONDS) -> Probe:
    """A ``Probe`` over a backend of its own (``make``), on its own event loop in a helper thread, so
    any thread may call it (the claim thread; the loop thread of ``run --once``), for ``timeout`` at most."""

    async def ask(model: str) -> Fingerprint | None:
        backend = make()
        try:
            read = getattr(backend, "fingerprint", None)
            return None if read is None else await read(model)
        finally:
            await backend.aclose()

    def bounded(model: str) -> Fingerprint | None:
        return asyncio.run(asyncio.wait_for(ask(model), timeout))

    def probe(model: str) -> Fingerprint | None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="batchd-probe")
        try:
            return pool.submit(bounded, model).result(timeout + 1.0)
        except TimeoutError as exc:
            raise Unchecked(f"no answer within {timeout:g} s") from exc
        except BatchdError as exc:
            raise Unchecked(exc.message) from exc
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the claim goes on without the answer
            raise Unchecked(str(exc) or type(exc).__name__) from exc
        finally:
            pool.shutdown(wait=False)

    return probe


def answered_by(job: Job) -> frozenset[str]:
    """Every fingerprint id a job recorded: the last and both sides of each change (its runner's
    counters in the journal); empty where none was taken (a backend that cannot tell, a server away
    at the start, a job from before fingerprints)."""
    state = job.metrics.get("state")
    if not isinstance(state, dict):
        return frozenset()
    last = state.get("fingerprint")
    ids = {last.get("id")} if isinstance(last, dict) else set()
    for change in state.get("model_changes") or ():
        if isinstance(change, dict):
            ids |= {change.get("from"), change.get("to")}
    return frozenset(i for i in ids if isinstance(i, str))


def same_work(journal: Journal, job: Job, key: str, model: str, probe: Probe) -> str | None:
    """Record the job's key; the earlier job it duplicates (marked so in the journal), else None."""
    twins = journal.work_twins(job.id, key)
    twin = _twin(twins, job, model, probe) if twins else None
    if twin is not None:
        journal.mark_duplicate(job.id, twin)
        log.info("job_duplicate", job_id=job.id, input=job.input_name, duplicate_of=twin)
    return twin


def _twin(twins: list[Job], job: Job, model: str, probe: Probe) -> str | None:
    # A twin still to run answers with whatever the server has then; one that recorded no
    # fingerprint cannot be compared: either is the same work, as before fingerprints.
    blind = [t for t in twins if t.state in (JobState.QUEUED, JobState.RUNNING) or not answered_by(t)]
    if blind:
        return blind[0].id
    try:
        now = probe(model)
        if now is None:
            raise Unchecked("the server does not tell this model's fingerprint")
    except Unchecked as exc:
        log.warning(
            "duplicate_fingerprint_unchecked",
            job_id=job.id,
            input=job.input_name,
            duplicate_of=twins[0].id,
            model=model,
            reason=str(exc),
            hint="taken as the same model; drop the file again once the server answers to have it compared",
        )
        return twins[0].id
    for twin in twins:
        if answered_by(twin) == {now.id}:
            return twin.id
    last = twins[-1]
    log.info(
        "duplicate_model_changed",
        job_id=job.id,
        input=job.input_name,
        earlier=last.id,
        model=model,
        was=",".join(sorted(answered_by(last))),
        now=now.id,
        details=now.details,
        hint="the same file and pipeline, but the server serves another model file under this name: it runs again",
    )
    return None
