"""The instance name (`dreamwire run --name NAME`) and everything derived from it, in one pure function.

Several engines can run side by side (one per GPU, or several on a render box fed over NDI). Each needs its own
sender names and ports; deriving them all from one name keeps them apart without a page of flags:

    name               dreamwire (default)    any other NAME
    output sender      dreamwire              NAME          spout:, syphon:, ndi:, shm: outputs without a NAME
    input sender       dreamwire-in           NAME-in       spout:, syphon:, ndi:, shm: inputs without a NAME
    preview port       8765                   P             preview: without ?port=; the page title is NAME
    OSC port           9000                   P + 1         UDP (the OSCQuery HTTP server shares the number)
    OSC feedback port  9001                   P + 2         where errors and status go

P = 20000 + 3·(crc32(NAME) mod 1000), so ports stay below the ephemeral range (32768+ on Linux, 49152+ on
Windows and macOS). Two names share a port block only when their crc32 agree mod 1000 (about 1 pair in 1000):
the second engine then says the port is in use, and another name (or an explicit port) fixes it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from engine.core.errors import DreamwireError

DEFAULT_NAME = "dreamwire"
DEFAULT_PREVIEW_PORT = 8765
DEFAULT_OSC_PORT = 9000
DEFAULT_OSC_FEEDBACK_PORT = 9001
NAMED_PORT_BASE = 20000
NAMED_PORT_BLOCKS = 1000
PORTS_PER_INSTANCE = 3
# Letters, digits, - and _; 24 characters at most, so "/NAME-in" fits macOS's 31-character shared-memory names.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,23}")


@dataclass(frozen=True)
class Instance:
    name: str
    preview_port: int
    osc_port: int
    osc_feedback_port: int

    @property
    def output_name(self) -> str:
        """Sender name of spout:/syphon:/ndi:/shm: outputs given without one."""
        return self.name

    @property
    def input_name(self) -> str:
        """Sender name that spout:/syphon:/ndi:/shm: inputs given without one look for (never our own output)."""
        return f"{self.name}-in"


def instance(name: str = DEFAULT_NAME) -> Instance:
    """Names and ports for the instance called `name`; raises DreamwireError for a name that cannot be used."""
    if not _NAME.fullmatch(name):
        raise DreamwireError(
            f"instance name {name!r} is invalid: use 1 to 24 letters, digits, - or _, starting with a letter or digit"
        )
    if name == DEFAULT_NAME:
        return Instance(name, DEFAULT_PREVIEW_PORT, DEFAULT_OSC_PORT, DEFAULT_OSC_FEEDBACK_PORT)
    base = NAMED_PORT_BASE + PORTS_PER_INSTANCE * (zlib.crc32(name.encode()) % NAMED_PORT_BLOCKS)
    return Instance(name, base, base + 1, base + 2)


DEFAULT_INSTANCE = instance()
