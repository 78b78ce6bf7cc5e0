"""Per-client-connection state that several addons share: what a CONNECT established."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tunnel:
    """What the CONNECT that opened a client connection's tunnel told the gateway."""

    target: tuple[str, int] | None = None  # normalised host and port (egress checks the flows)
    session: str | None = None  # the session its Proxy-Authorization named (session.py)


class Connections:
    """One map, client connection id -> Tunnel, owned by the core; forgotten on disconnect."""

    def __init__(self) -> None:
        self._tunnels: dict[str, Tunnel] = {}

    def tunnel(self, client_id: str) -> Tunnel:
        """The connection's tunnel state, created on first use."""
        t = self._tunnels.get(client_id)
        if t is None:
            t = self._tunnels[client_id] = Tunnel()
        return t

    def get(self, client_id: str) -> Tunnel | None:
        return self._tunnels.get(client_id)

    def forget(self, client_id: str) -> None:
        self._tunnels.pop(client_id, None)

    def __len__(self) -> int:
        return len(self._tunnels)
