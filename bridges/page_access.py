"""The control page and the OSCQuery server that it talks to: where a page finds its controls, which browser pages
may use them, and the token.

The page is served by the preview (`preview:`, port 8765 by default) and talks to the OSCQuery server (the OSC
port's number): its tree over HTTP, its values and changes over the WebSocket there. Both live in this process;
each registers here under the instance name (`--name`), so the preview answers `/control.json` with the OSCQuery
port, and the OSCQuery server knows the preview ports whose pages may use it.

The rules (checked by the OSCQuery server on every request):
- A browser request carries an `Origin`. It is allowed when it comes from a page of this instance (the
  preview's port, or the OSCQuery port itself) on the host the request was sent to. On a loopback bind that host
  must also be a loopback address or `localhost`: a web page elsewhere cannot reach the engine through a
  hostname that it points at 127.0.0.1 (DNS rebinding). Requests without an `Origin` are not from a browser page
  (Chataigne, ossia score, curl, the `websockets` package) and are allowed.
- Bound to loopback (the default), changes need nothing more: only this machine reaches the port.
- Bound elsewhere (`osc.host: 0.0.0.0`, a LAN address), changes need the token made at start: the engine logs it
  in the page's URL (`?token=…`), and the page passes it on in its WebSocket URL. A WebSocket without it may
  LISTEN (reading, like GET) but every change it sends is refused. There is no POST route.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; 0.0.0.0, a LAN address or another name is not."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_token(bind_host: str) -> bool:
    """Whether changes over a server bound to `bind_host` need the token."""
    return not is_loopback(bind_host)


def new_token() -> str:
    return secrets.token_urlsafe(16)  # 128 bits, URL-safe: it travels in ?token=


def token_ok(expected: str | None, given: str | None) -> bool:
    """No token expected (a loopback bind), or the one given matches (compared in constant time)."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def origin_allowed(origin: str | None, host_header: str | None, page_ports: set[int], bind_host: str) -> bool:
    """The browser-origin rule of the module docstring. `host_header`: the request's Host; `page_ports`: the ports
    whose pages belong to this instance (the previews' and the server's own)."""
    if origin is None:
        return True  # not a browser page
    try:
        page = urlsplit(origin)
        page_port = page.port or (443 if page.scheme == "https" else 80)
        target = urlsplit(f"//{host_header or ''}")
        target_host = target.hostname
    except ValueError:  # a malformed Origin or Host (a bad port number, say)
        return False
    if page.scheme not in ("http", "https") or page.hostname is None or target_host is None:
        return False
    if page.hostname != target_host or page_port not in page_ports:
        return False
    return not is_loopback(bind_host) or is_loopback(target_host)


@dataclass(frozen=True)
class ControlLink:
    """What a page needs to reach its controls: the OSCQuery server's port and, when bound elsewhere, the token."""

    port: int
    token: str | None


class _Links:
    """Process-wide, per instance name. Several owners may register; the newest OSCQuery server wins, and an
    owner withdraws only its own entry (a closing server never removes a newer one's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._controls: dict[str, tuple[object, ControlLink]] = {}
        self._pages: dict[str, dict[object, int]] = {}

    def offer_controls(self, name: str, owner: object, link: ControlLink) -> None:
        with self._lock:
            self._controls[name] = (owner, link)

    def withdraw_controls(self, name: str, owner: object) -> None:
        with self._lock:
            if name in self._controls and self._controls[name][0] is owner:
                del self._controls[name]

    def controls(self, name: str) -> ControlLink | None:
        with self._lock:
            entry = self._controls.get(name)
            return entry[1] if entry else None

    def add_page(self, name: str, owner: object, port: int) -> None:
        with self._lock:
            self._pages.setdefault(name, {})[owner] = port

    def remove_page(self, name: str, owner: object) -> None:
        with self._lock:
            self._pages.get(name, {}).pop(owner, None)

    def page_ports(self, name: str) -> set[int]:
        with self._lock:
            return set(self._pages.get(name, {}).values())


_links: _Links | None = None
_links_lock = threading.Lock()


def links() -> _Links:
    """The process-wide registry (made on first use: no import-time side effects)."""
    global _links
    with _links_lock:
        if _links is None:
            _links = _Links()
        return _links
