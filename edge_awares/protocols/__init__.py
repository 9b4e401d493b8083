"""Protocol registry: `get_protocol(name)` for `awares`, `tool_call` (default for trained policies), `ergo`,
and `plain` (no crop tool: base models and baselines)."""

from __future__ import annotations

from ..errors import ProtocolError
from .awares import AwaresProtocol
from .base import Parsed, Protocol
from .ergo import ErgoProtocol
from .plain import PlainProtocol
from .tool_call import ToolCallProtocol

PROTOCOLS = {
    "tool_call": ToolCallProtocol, "awares": AwaresProtocol, "ergo": ErgoProtocol, "plain": PlainProtocol,
}
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
