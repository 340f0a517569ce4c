"""A job's definition: the pipeline as the journal keeps it and the duplicate key hashed over it.

Both go through orjson, which refuses what a hostile ``pipeline.toml`` may hold (an integer over
64 bits, nesting over 254 levels); ``checked_definition`` finds that at claim time, so such a file
gets its error record and never becomes a job that cannot be ingested.
"""

from __future__ import annotations

import hashlib

import orjson

from batchd.config import Settings
from batchd.pipeline import Pipeline, pipeline_json


def work_key(sha256: str, folder: str | None, pipeline: Pipeline, settings: Settings) -> str:
    """The duplicate key: the file's bytes plus everything that decides what would be sent (system
    prompt, template, few-shot, schema, options, mode: the pipeline; the model and num_ctx it resolves
    to). The same file under an edited pipeline is new work."""
    definition = {
        "folder": folder,
        # who goes first is not what is sent: a pipeline's priority keeps its duplicate key
        "pipeline": pipeline.model_dump(mode="json", exclude={"priority"}),
        "model": settings.model_for(pipeline),
        "mode": pipeline.mode or settings.context.mode,
        "num_ctx": settings.context.num_ctx,
        "num_ctx_cap": settings.context.num_ctx_cap,
    }
    digest = hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{sha256}:{digest[:32]}"


def checked_definition(folder: str | None, pipeline: Pipeline, settings: Settings) -> str:
    """The pipeline's journal JSON, once it is known to hash; raises ``pipeline.HOSTILE_ERRORS``."""
    definition = pipeline_json(pipeline)
    work_key("", folder, pipeline, settings)
    return definition
