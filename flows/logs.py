"""Failed runs say what is wrong in one line: the error and its fix, not Prefect's tracebacks.

Prefect logs a task that raises as "Task run failed with exception: …" and the flow around it as "Encountered
exception during execution: …", each with the whole traceback. For this project's own errors
(:class:`~activation.errors.ActivationError`: a setting, a guardrail, a missing snapshot, a held warehouse) the
traceback says nothing the message does not, and it buries the fix. This filter turns such records into the
message and the fix; any other exception (a bug) keeps its traceback.
"""

from __future__ import annotations

import logging

from activation.errors import ActivationError

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class OneLineActivationErrors(logging.Filter):
    """Rewrite a run-log record that carries an :class:`ActivationError` to ``<what failed>: <message> (fix: …)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, ActivationError):
            return True
        what = "task run failed" if record.name.endswith("task_runs") else "flow run failed"
        fix = f" (fix: {exc.fix})" if exc.fix else ""
        record.msg = f"{what}: {exc.message}{fix}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's flow- and task-run loggers (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineActivationErrors) for f in logger.filters):
            logger.addFilter(OneLineActivationErrors())
