"""OSC, one transport over the control surface: the UDP server (bridges/osc_server.py) hands each parsed
message to `surface.handle`; the feedback sender (bridges/osc_feedback.py) is one outlet of the surface; the
OSCQuery HTTP server and its mDNS advertisement (bridges/oscquery.py) describe the surface's nodes.
Started and closed as one.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from bridges.osc_feedback import OscFeedback
from bridges.osc_server import OscServer
from bridges.oscquery import EXTENSIONS, Advertisement, OscQueryServer, advertise
from engine.config.schema import OscConfig
from engine.control.nodes import oscquery_nodes
from engine.control.surface import ControlSurface
from engine.live.loop import LiveEngine

log = logging.getLogger(__name__)


class OscTransport:
    def __init__(self, surface: ControlSurface, owns_surface: bool = False) -> None:
        self.surface, self.config = surface, surface.config
        self._owns_surface = owns_surface  # made by alone(): closed with this transport
        self.feedback: OscFeedback | None = None
        self.server: OscServer | None = None
        self.query: OscQueryServer | None = None
        self.advertisement: Advertisement | None = None

    @classmethod
    def start(cls, surface: ControlSurface, discovery: bool = True) -> OscTransport:
        """Bind and start everything; a port that cannot be bound is a DreamwireError (and nothing is left open).
        discovery=False skips the mDNS advertisement (tests)."""
        transport = cls(surface)
        try:
            transport._start(discovery)
        except BaseException:
            transport.close()
            raise
        return transport

    @classmethod
    def alone(cls, engine: LiveEngine, config: OscConfig, discovery: bool = True) -> OscTransport:
        """The engine's control surface (ControlSurface.of) with OSC on it, the surface closed with this transport
        (`dreamwire run`, tests, the OSC bench)."""
        surface = ControlSurface.of(engine, config)
        try:
            transport = cls.start(surface, discovery)
        except BaseException:
            surface.close()
            raise
        transport._owns_surface = True
        return transport

    def _start(self, discovery: bool) -> None:
        config, surface, engine = self.config, self.surface, self.surface.engine
        if config.feedback:
            self.feedback = OscFeedback(config.feedback)
        self.server = OscServer(config.host, config.port, surface.handle, config.allow)
        query_port = self.server.port if config.query_port is None else config.query_port
        self.query = OscQueryServer(config.host, query_port, lambda: oscquery_nodes(surface), self.host_info)
        if self.feedback is not None:
            self.feedback.start()
            surface.add_outlet(self._feedback_outlet)
            engine.status_sources.append(self.feedback.counters)
        engine.status_sources.append(self.server.counters)
        self.server.start()
        self.query.start()
        if discovery:
            self.advertisement = advertise(engine.instance.name, config.host, self.query.port, self.server.port)

    def _feedback_outlet(self, address: str, args: list[Any]) -> None:
        if self.feedback is not None:
            self.feedback.send(address, *args)

    def host_info(self) -> dict[str, Any]:
        assert self.server is not None
        info: dict[str, Any] = {
            "NAME": self.surface.engine.instance.name,  # --name: side-by-side instances tell apart
            "OSC_PORT": self.server.port,
            "OSC_TRANSPORT": "UDP",
            "EXTENSIONS": EXTENSIONS,
        }
        if not ipaddress.ip_address(self.server.host).is_unspecified:  # 0.0.0.0: the address the client used
            info["OSC_IP"] = self.server.host
        return info

    def close(self) -> None:
        """Stop receiving first, then send what is queued; safe to call twice."""
        sources = self.surface.engine.status_sources
        if self.server is not None:
            if self.server.counters in sources:
                sources.remove(self.server.counters)
            self.server.close()
            self.server = None
        if self.query is not None:
            self.query.close()
            self.query = None
        if self.advertisement is not None:
            self.advertisement.close()
            self.advertisement = None
        if self.feedback is not None:
            self.surface.remove_outlet(self._feedback_outlet)
            if self.feedback.counters in sources:
                sources.remove(self.feedback.counters)
            self.feedback.close()
            self.feedback = None
        if self._owns_surface:
            self.surface.close()
