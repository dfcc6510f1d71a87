"""The OSC control surface of a running LiveEngine, started and closed as one: the UDP server (bridges/
osc_server.py), the feedback sender (bridges/osc_feedback.py), the OSCQuery HTTP server and its mDNS
advertisement (bridges/oscquery.py), wired to the router (engine/live/osc_control.py) and to the engine's
events (each applied change echoed, each apply-time failure reported on /error). What goes to the feedback
address also goes to the OSCQuery WebSocket's LISTENers (the control page), and what they send goes through
the same router, under the same rules, as a UDP message.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from bridges.osc_feedback import OscFeedback
from bridges.osc_server import OscServer
from bridges.oscquery import EXTENSIONS, Advertisement, OscQueryServer, advertise
from engine.config.schema import OscConfig
from engine.live.loop import LiveEngine
from engine.live.osc_control import OscControl

log = logging.getLogger(__name__)


class OscSurface:
    def __init__(self, engine: LiveEngine, config: OscConfig) -> None:
        self.engine, self.config = engine, config
        self.control = OscControl(engine, config)
        self.feedback: OscFeedback | None = None
        self.server: OscServer | None = None
        self.query: OscQueryServer | None = None
        self.advertisement: Advertisement | None = None

    @classmethod
    def start(cls, engine: LiveEngine, config: OscConfig, discovery: bool = True) -> OscSurface:
        """Bind and start everything; a port that cannot be bound is a DreamwireError (and nothing is left open).
        discovery=False skips the mDNS advertisement (tests)."""
        surface = cls(engine, config)
        try:
            surface._start(discovery)
        except BaseException:
            surface.close()
            raise
        return surface

    def _start(self, discovery: bool) -> None:
        config, control = self.config, self.control
        # Made without a feedback address too: what it sends also goes to the OSCQuery WebSocket's LISTENers.
        self.feedback = OscFeedback(config.feedback, control.status_messages, config.status_hz)
        control.feedback = self.feedback
        self.server = OscServer(config.host, config.port, control.handle, config.allow)
        control.counters = self.server.counters
        query_port = self.server.port if config.query_port is None else config.query_port
        self.query = OscQueryServer(
            config.host,
            query_port,
            self.oscquery_nodes,
            self.host_info,
            on_message=control.handle,  # the page and LISTEN clients change what OSC may change, nothing more
            name=self.engine.instance.name,
            error_address=control.space.out("/error"),
            allow=config.allow,
        )
        self.feedback.outlets.append(self.query.publish)
        self.feedback.start()
        self.engine.add_listener(control.on_event)
        self.engine.status_sources.append(self.server.counters)
        self.engine.status_sources.append(self.query.counters)
        self.server.start()
        self.query.start()
        if discovery:
            self.advertisement = advertise(self.engine.instance.name, config.host, self.query.port, self.server.port)

    def oscquery_nodes(self) -> dict[str, dict[str, Any]]:
        """The router's nodes, and the two text messages it sends out, so that a client can LISTEN to them."""
        out = self.control.space.out
        return {
            **self.control.oscquery_nodes(),
            out("/error"): {"TYPE": "s", "ACCESS": 1, "DESCRIPTION": "<address>: <reason> for every refused message."},
            out("/status/prompt"): {
                "TYPE": "s",
                "ACCESS": 1,
                "VALUE": [self.engine.preset.prompt.text],
                "DESCRIPTION": "The prompt in effect.",
            },
        }

    def host_info(self) -> dict[str, Any]:
        assert self.server is not None
        info: dict[str, Any] = {
            "NAME": self.engine.instance.name,  # --name: side-by-side instances tell apart
            "OSC_PORT": self.server.port,
            "OSC_TRANSPORT": "UDP",
            "EXTENSIONS": EXTENSIONS,
        }
        if not ipaddress.ip_address(self.server.host).is_unspecified:  # 0.0.0.0: the address the client used
            info["OSC_IP"] = self.server.host
        return info

    def close(self) -> None:
        """Stop receiving first, then send what is queued; safe to call twice."""
        self.engine.events.remove(self.control.on_event)
        if self.server is not None:
            if self.server.counters in self.engine.status_sources:
                self.engine.status_sources.remove(self.server.counters)
            self.server.close()
            self.server = None
        if self.query is not None:
            if self.query.counters in self.engine.status_sources:
                self.engine.status_sources.remove(self.query.counters)
            self.query.close()
            self.query = None
        if self.advertisement is not None:
            self.advertisement.close()
            self.advertisement = None
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None
