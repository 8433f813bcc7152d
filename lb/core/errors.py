"""lb's one error hierarchy: everything lb refuses is an LbError with a message a person can act on.

- `HttpError(message, status)`: the data plane refuses a request or a backend
  misbehaves; `status` is the response it becomes (400/405/408/413/431 for the
  client, 502/503/504 for the upstream side), like h11's `error_status_hint`.
  It is turned into bytes in exactly one place, `lb.proxy.responses.error_response`.
  Any other exception in the data plane is a bug: the client gets a 500 and the
  traceback goes to the log (`ClientConnection.data_received`, tested).
- `CommandError`: an admin command refused; the message is the reply's `error`.
- `ConfigError`: a bad config file or value; the message names file, key path and value.
- `InvalidValue`: a single value refused by a parser that does not know where
  the value came from; the caller adds the key path (config) or the flag (deploy).
- `DeployError`: bad `lb deploy` arguments or an lb it cannot use.
"""


class LbError(Exception):
    """The base: a refusal with a message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class HttpError(LbError):
    """A refusal on the wire, with the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class CommandError(LbError):
    """An admin command refused."""


class ConfigError(LbError):
    """A bad config value; the message names file, key path and value."""


class InvalidValue(LbError):
    """A value refused before its key path is known (the caller adds it)."""


class DeployError(LbError):
    """Bad deploy arguments, or an lb the deploy cannot use."""
