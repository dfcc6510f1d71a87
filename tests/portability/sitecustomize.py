"""Start-up shim for tests/test_portability.py: Python imports it before the program runs, in every interpreter
whose PYTHONPATH starts with this folder.

1. The standard library and the libraries we use load first, as on the real platform: how psutil or torch find
   their way on Windows is theirs to test (psutil's Linux part imports resource; torch, seeing win32, would look
   for its DLLs). diffusers and transformers import their parts on first use, so the parts we use load here.
2. resource, fcntl and termios become unimportable (None in sys.modules makes `import` raise ImportError), as on
   Windows: our code may only need them inside a platform branch.
3. With DREAMWIRE_FAKE_PLATFORM=win32|darwin, what is imported from now on (engine/, bridges/) sees that
   sys.platform. Linux has no SIGBREAK (Ctrl-Break on Windows): SIGUSR1 stands in for it.
"""

import concurrent.futures  # noqa: F401
import http.server  # noqa: F401
import os
import signal
import socketserver  # noqa: F401
import subprocess  # noqa: F401
import sys
import tempfile  # noqa: F401

import av  # noqa: F401
import numpy  # noqa: F401
import PIL.Image  # noqa: F401
import psutil  # noqa: F401
import pydantic  # noqa: F401
import torch  # noqa: F401
import yaml  # noqa: F401
from diffusers import (  # noqa: F401
    AutoencoderKL,
    AutoencoderTiny,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: F401

for _name in ("resource", "fcntl", "termios"):
    sys.modules[_name] = None  # type: ignore[assignment]

_FAKE = os.environ.get("DREAMWIRE_FAKE_PLATFORM")
if _FAKE:
    if _FAKE == "win32" and not hasattr(signal, "SIGBREAK"):
        signal.SIGBREAK = signal.SIGUSR1  # type: ignore[attr-defined]
    sys.platform = _FAKE
