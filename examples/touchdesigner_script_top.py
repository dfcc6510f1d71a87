"""TouchDesigner Script TOP callbacks that show dreamwire's output, read from shared memory.

In dreamwire:      dreamwire run --output shm:            (the segment is named after the instance: dreamwire)
In TouchDesigner:  1. add this repository's examples/ folder to Edit > Preferences > Python 64-bit Module Path
                      (examples/shm_reader.py needs only numpy, which TouchDesigner ships);
                   2. create a Script TOP and paste this file into its callbacks DAT;
                   3. on the Script TOP, set the custom parameter Segment (made by Setup Parameters) if the
                      instance has another --name.

Each cook copies the newest frame once; when dreamwire restarts or changes size, the reader attaches again. A cook
never waits: while dreamwire is not running, or is still writing the segment's header, the TOP keeps its last
image and tries again on the next cook; a segment of that name that is not dreamwire's is a warning on the TOP.
TouchDesigner's images start at the bottom row, dreamwire's at the top: the rows are flipped on the way in.
"""

# scriptOp (its par, appendCustomPage, copyNumpyArray) and absTime exist inside TouchDesigner only.
from __future__ import annotations

from typing import Any

import numpy as np
from shm_reader import FrameReader, HeaderNotReady

_reader: FrameReader | None = None


def onSetupParameters(scriptOp: Any) -> None:
    page = scriptOp.appendCustomPage("dreamwire")
    page.appendStr("Segment", label="Segment")[0].default = "dreamwire"


def onCook(scriptOp: Any) -> None:
    global _reader
    _ = globals()["absTime"].frame  # a dependency on TouchDesigner's frame clock: this TOP cooks every frame
    name = str(getattr(scriptOp.par, "Segment", None) or "dreamwire")
    try:
        if _reader is None or _reader.writer_closed:
            if _reader is not None:
                _reader.close()
            _reader = FrameReader(name, wait=0)
    except (FileNotFoundError, HeaderNotReady):  # dreamwire is not running, or still starting: try next cook
        _reader = None
        return
    except ValueError as error:  # a segment of that name that is not dreamwire's (or another layout version)
        _reader = None
        scriptOp.addWarning(str(error))
        return
    image = _reader.latest()
    if image is not None:
        scriptOp.copyNumpyArray(np.ascontiguousarray(image[::-1]))  # bottom row first, as TouchDesigner wants
