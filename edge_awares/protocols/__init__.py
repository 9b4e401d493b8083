"""Protocol registry: `get_protocol(name)` for `awares`, `tool_call` (default for trained policies), `ergo`."""

from __future__ import annotations

from ..errors import ProtocolError
from .awares import AwaresProtocol
from .base import Parsed, Protocol
from .ergo import ErgoProtocol
from .tool_call import ToolCallProtocol

PROTOCOLS = {"tool_call": ToolCallProtocol, "awares": AwaresProtocol, "ergo": ErgoProtocol}
DEFAULT_PROTOCOL = "tool_call"


def get_protocol(name: str, **options) -> Protocol:
    try:
        cls = PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
    return cls(**options)


def protocol_from_dict(d: dict) -> Protocol:
    d = dict(d)
    return get_protocol(d.pop("name", ""), **d)


__all__ = ["Parsed", "Protocol", "PROTOCOLS", "DEFAULT_PROTOCOL", "get_protocol", "protocol_from_dict"]
