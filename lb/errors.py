"""One error type for everything lb refuses, with the HTTP status it maps to.

The proxy turns an LbError into a response in exactly one place
(`proxy.error_response`); anything else that escapes is a bug and becomes a 500
with the traceback in the log.
"""


class LbError(Exception):
    """A refusal with a status hint: 400/408/413/431 client, 502/503/504 upstream."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class ConfigError(LbError):
    """A bad config value; the message names file, key path and value."""

    def __init__(self, message: str):
        super().__init__(message, status=0)
