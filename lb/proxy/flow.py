"""Flow control by named reasons: reading stops while any reason holds and goes on when
the last one is lifted. A client connection's stops its transport's reading; an HTTP/2
stream's holds back the window updates of its DATA (lb/proxy/h2stream.py)."""

from __future__ import annotations


class FlowControl:
    """Pauses a transport's reading while any named reason holds."""

    __slots__ = ("_target", "_reasons")

    def __init__(self, target):
        self._target = target
        self._reasons: tuple[str, ...] = ()      # a tuple: an idle connection's costs nothing

    def _stop(self) -> None:
        self._target.pause_reading()

    def _go(self) -> None:
        if not self._target.is_closing():
            self._target.resume_reading()

    def pause(self, reason: str) -> None:
        reasons = self._reasons
        if not reasons:
            self._stop()
        if reason not in reasons:
            self._reasons = reasons + (reason,)

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def held_by(self, *reasons: str) -> bool:
        """Whether any of these reasons holds."""
        return any(reason in self._reasons for reason in reasons)

    def resume_all(self) -> None:
        if self._reasons:
            self._reasons = ()
            self._go()

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons = tuple(r for r in self._reasons if r != reason)
            if not self._reasons:
                self._go()
