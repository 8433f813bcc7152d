"""HTTP/1.1 message parsing behind one small interface, with two implementations.

Theory of operation
-------------------
A parser is fed bytes (`feed`) and calls back into a *sink* with whole heads and
body pieces; it does no I/O. Requests: `sink.on_request(head)`,
`sink.on_request_body(bytes)`, `sink.on_request_end()`. Responses: the same with
`response`. A response parser must be told what the next response answers
(`expect(method, upgrade)`) because HEAD and Upgrade change how it is framed.

Both implementations hand the raw (name, value) pairs to `analyze_request` /
`analyze_response`, which hold every framing and smuggling rule in one place:
conflicting Content-Length, Transfer-Encoding other than a single final
`chunked`, TE together with CL, a missing or doubled Host. They also strip the
hop-by-hop headers, so what reaches `serialize_*` is rebuilt from parsed fields,
never copied from the wire.

`httptools` (llhttp, C) is the fast path. `h11` is pure Python: it is slower
(~70 us a head) and more lenient (it accepts TE+CL, bare LF, obs-fold), which is
why its header list is never forwarded as-is but goes through the same analysis.

The modules, each depending only on those above it:
  framing.py         body length, chunked, keep-alive or close: the framing rules
  heads.py           RequestHead, ResponseHead, the shared analysis and the size limits
  llhttp_adapter.py  the parsers over httptools
  h11_adapter.py     the parsers over h11
  writer.py          heads and chunks as bytes
This package's namespace is what the rest of lb uses; the modules' own names are theirs.
"""

from __future__ import annotations

from collections.abc import Mapping

from .heads import (
    REPLAY_LIMIT_BYTES,
    RequestHead,
    ResponseHead,
    analyze_request,
    analyze_response,
    check_head_size,
    check_header_count,
    check_target,
    check_target_grammar,
    client_address,
)
from .llhttp_adapter import HttptoolsRequestParser, HttptoolsResponseParser
from .writer import LAST_CHUNK, chained, chunk, own_headers, reason_phrase, serialize_request, serialize_response

__all__ = [
    "LAST_CHUNK", "PARSERS", "REPLAY_LIMIT_BYTES", "RequestHead", "ResponseHead", "analyze_request",
    "analyze_response", "chained", "check_head_size", "check_header_count", "check_target",
    "check_target_grammar", "chunk", "client_address", "own_headers", "parsers_for", "reason_phrase",
    "serialize_request", "serialize_response",
]

class _Parsers(Mapping):
    """name -> (RequestParser class, ResponseParser class). h11 is imported by the process
    that asks for it only: most never do (`http: auto`), and it holds ~2 MB in each."""

    def __getitem__(self, name: str):
        if name == "httptools":
            return HttptoolsRequestParser, HttptoolsResponseParser
        if name == "h11":
            from .h11_adapter import H11RequestParser, H11ResponseParser
            return H11RequestParser, H11ResponseParser
        raise KeyError(name)

    def __iter__(self):
        return iter(("httptools", "h11"))

    def __len__(self) -> int:
        return 2


PARSERS = _Parsers()


def parsers_for(name: str):
    """(RequestParser class, ResponseParser class) for config `http:`."""
    return PARSERS["httptools" if name == "auto" else name]
