"""Where WebSocket frames end in a spliced byte stream, so shutdown can say goodbye.

After a ``101`` the router copies bytes without reading them. To close a
WebSocket politely on shutdown (a close frame with code 1001, "going away")
it must write that frame *between* two of the app's frames, never inside
one. ``FrameEdges`` follows the frame headers of one direction (RFC 6455
section 5.2: 2 bytes, an optional 2- or 8-byte length, an optional 4-byte
mask) and skips payloads by counting, so it costs a few operations per
chunk and never buffers more than one header (at most 14 bytes).

It frames nothing and checks nothing: the endpoints do that. Frames
themselves come from the ``websockets`` library (``close_frame``).
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Close, CloseCode, Frame, Opcode

_CLOSE_OPCODE: Final = 0x8
_MASK_BIT: Final = 0x80
_LENGTH_BITS: Final = 0x7F


class FrameEdges:
    """Follows frame boundaries in one direction of a WebSocket byte stream."""

    __slots__ = ("_head", "_left", "saw_close")

    def __init__(self) -> None:
        self._head = bytearray()  # the header read so far (at most 14 bytes)
        self._left = 0  # payload bytes of the current frame still to come
        self.saw_close = False  # this direction already sent a close frame

    def __repr__(self) -> str:
        return f"<FrameEdges at_edge={self.at_edge} left={self._left} close={self.saw_close}>"

    @property
    def at_edge(self) -> bool:
        """True between two frames: a frame written now would not cut one in two."""
        return self._left == 0 and not self._head

    def feed(self, data: bytes | bytearray | memoryview, *, stop_at_edge: bool = False) -> int:
        """Follow ``data``; returns how many bytes were taken.

        All of them, unless ``stop_at_edge``: then it stops at the first frame
        edge it reaches (the caller forwards that much and no more).
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
            else:
                self._head.append(data[pos])
                pos += 1
                if not self._take_header():
                    continue
            if stop_at_edge and self.at_edge:
                return pos
        return pos

    def _take_header(self) -> bool:
        """True once ``_head`` holds a whole header (then the payload starts)."""
        head = self._head
        if len(head) < 2:
            return False
        length = head[1] & _LENGTH_BITS
        extra = 2 if length == 126 else 8 if length == 127 else 0
        size = 2 + extra + (4 if head[1] & _MASK_BIT else 0)
        if len(head) < size:
            return False
        if extra:
            length = int.from_bytes(head[2 : 2 + extra], "big")
        if head[0] & 0x0F == _CLOSE_OPCODE:
            self.saw_close = True
        self._left = length
        head.clear()
        return True


def close_frame(*, masked: bool) -> bytes:
    """A close frame with code 1001 ("going away"); masked when sent to the app."""
    frame = Frame(Opcode.CLOSE, Close(CloseCode.GOING_AWAY, "server shutting down").serialize())
    return frame.serialize(mask=masked)
