"""Uvicorn's logging, with the query string of every access-log line redacted.

A query string can carry a secret (an API key pasted into a URL); a log line is read by far
more people than the key's owner, so the access log keeps the path and drops the query."""

import copy
import logging

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter


class RedactingAccessFormatter(AccessFormatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, full_path, version, status = record.args
            path, sep, _query = str(full_path).partition("?")
            record = copy.copy(record)
            record.args = (client, method, path + ("?[redacted]" if sep else ""), version, status)
        return super().formatMessage(record)


def log_config() -> dict:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"]["()"] = f"{__name__}.RedactingAccessFormatter"
    return config
