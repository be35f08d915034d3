"""A job with a JSON Schema: its answer validated as it ends, with one repair run if it fails.

The repair is the same request continued: the original user turn and the invalid answer become
history, and a new user turn quotes the validator's message and asks for only the corrected
JSON. Its usage and cost add to the first run's. A second failure ends the job
``schema_validation_failed`` with the validator's message and the raw text of the last answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ccgate.runners.base import RunRequest, RunResult
from ccgate.structured import repair_instruction, schema_of, validate_answer_async

SCHEMA_VALIDATION_FAILED = "schema_validation_failed"

# Runs the repair request; what it returns is the repair run's result.
Rerun = Callable[[RunRequest, str], Awaitable[RunResult]]


class SchemaMismatch(Exception):
    """The answer did not match the schema, repaired once or not.

    ``error`` is the validator's message, ``text`` the last answer as the model wrote it and
    ``result`` both runs' result (usage and cost summed).
    """

    def __init__(self, error: str, text: str, result: RunResult) -> None:
        self.message = f"the answer does not match the JSON Schema (after one repair): {error}"
        super().__init__(self.message)
        self.error = error
        self.text = text
        self.result = result


def repair_request(request: RunRequest, answer: str, error: str) -> RunRequest:
    """``request`` continued: its user turn and ``answer`` as history, then the repair turn."""
    return dataclasses.replace(
        request,
        history=[
            *request.history,
            {"role": "user", "content": request.content},
            # An empty text block is refused upstream.
            {"role": "assistant", "content": [{"type": "text", "text": answer or "(empty)"}]},
        ],
        content=[{"type": "text", "text": repair_instruction(error)}],
    )


def combined(first: RunResult, second: RunResult) -> RunResult:
    """``second`` with ``first``'s usage and cost added: what the job spent on both runs."""
    usage = dict(first.usage)
    for name, count in second.usage.items():
        usage[name] = usage.get(name, 0) + count
    costs = [c for c in (first.cost_usd, second.cost_usd) if c is not None]
    return dataclasses.replace(
        second,
        usage=usage,
        cost_usd=sum(costs) if costs else None,
        model=second.model or first.model,
        warning=second.warning or first.warning,
    )


async def answer_to_schema(
    stored: Mapping[str, Any], request: RunRequest, result: RunResult, rerun: Rerun
) -> tuple[RunResult, dict[str, Any]]:
    """The job's final result and the answer reading to store with it, once ``result``'s
    answer (or, after one repair run by ``rerun``, the repaired one) matches the schema in
    the stored request ``stored``; ``SchemaMismatch`` when neither does."""
    schema = schema_of(stored)
    assert schema is not None
    verdict = await validate_answer_async(schema, result.text)
    if verdict.ok:
        return result, {"result_json": verdict.text, "result_parse_error": None}
    assert verdict.error is not None
    repaired = await rerun(repair_request(request, result.text, verdict.error), verdict.error)
    total = combined(result, repaired)
    verdict = await validate_answer_async(schema, repaired.text)
    if verdict.ok:
        return total, {"result_json": verdict.text, "result_parse_error": None}
    assert verdict.error is not None
    raise SchemaMismatch(verdict.error, repaired.text, total)
