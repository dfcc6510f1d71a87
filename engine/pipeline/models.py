"""Model loading: a Hugging Face id, a local diffusers folder, or the built-in `tiny` / `tiny-sdxl` model.

Components load one by one (unet, vae, text_encoder, tokenizer, scheduler config) so no safety checker
or unused part is ever built; an SDXL UNet (engine/pipeline/sdxl.py) brings text_encoder_2 and tokenizer_2.
A missing model is one clear paragraph, never a traceback wall.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from engine.config.schema import ModelConfig
from engine.core.errors import DreamwireError
from engine.pipeline import sdxl
from engine.pipeline.tiny import TINY_MODEL_ID, TINY_SDXL_ID, TINY_VAE_ID

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Models:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    config: ModelConfig | None = None  # what was loaded (the TensorRT engine key reads it)
    # Models loaded along with these (ControlNets, depth models: engine/pipeline/controlnet.py), by (kind, id):
    # a rebuild on the same models reuses them.
    loaded: dict[tuple[str, str], Any] = field(default_factory=dict)
    # The SDXL family's second text encoder (CLIPTextModelWithProjection) and its tokenizer; None for SD 1.x/2.x.
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: Any = None

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """text → CLIP last hidden state [1, L, D] (L = the tokenizer's model_max_length, 77 for SD); for SDXL the
        packed [1, 77 + 1, D] of engine/pipeline/sdxl.py (the tokens, then the pooled embedding)."""
        if self.text_encoder_2 is not None:
            encoders = (self.text_encoder, self.text_encoder_2)
            return sdxl.encode_prompt(text, (self.tokenizer, self.tokenizer_2), encoders, self.dtype)
        tokens = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return hidden.to(self.dtype)


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`auto` is cuda, else mps (Apple Metal), else cpu; dtype `auto` is float16 on cuda and mps, float32 on cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DreamwireError(f"model.device {device!r}: no CUDA device is available here (use cpu or auto)")
    if device == "mps" and not _mps_available():
        raise DreamwireError(
            "model.device 'mps': Apple Metal is not available here (it needs Apple Silicon, macOS 12.3+ and a torch "
            "build with MPS); use cpu or auto"
        )
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    return torch.device(device), _DTYPES[dtype]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def _missing_model(model_id: str, what: str, reason: str) -> DreamwireError:
    """The one paragraph for a model that is neither a local folder nor cached, and could not be downloaded."""
    return DreamwireError(
        f"Could not load the {what} {model_id!r}: it is not a local folder, not in the Hugging Face cache, and "
        f"{reason}. Connect to the network once so it can be cached, or download it elsewhere and point at the "
        f"folder, e.g. `--set model.id=/path/to/sd-turbo` (a diffusers folder with unet/, vae/, text_encoder/, "
        f"tokenizer/, scheduler/) and `--set model.vae=/path/to/taesd`. The built-in `tiny` model runs offline: "
        f"`--preset offline-demo`."
    )


def from_pretrained(cls: Any, model_id: str, what: str, **kwargs: Any) -> Any:
    """Load from a folder, else from the local cache, else from the hub; errors become one paragraph."""
    if _looks_like_path(model_id):
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise DreamwireError(f"{what} folder not found: {model_id!r}")
        try:
            return cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as error:
            raise DreamwireError(f"{what} folder {model_id!r} is not a diffusers model folder: {error}") from error
    try:
        return cls.from_pretrained(model_id, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    hub_reachable(model_id, what)
    try:
        return cls.from_pretrained(model_id, **kwargs)
    except Exception as error:  # hub/network errors come in many types; all mean "not available"
        raise _missing_model(model_id, what, f"downloading it failed ({type(error).__name__})") from error


def hub_reachable(model_id: str, what: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after the hub client's half minute of retries, when the hub cannot be reached."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection(
            (endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout_s
        ).close()
    except OSError as error:
        reason = f"the hub ({endpoint.hostname}) cannot be reached ({error})"
        raise _missing_model(model_id, what, reason) from None


def _load_vae(vae_id: str, dtype: torch.dtype) -> torch.nn.Module:
    """A VAE by id or folder: AutoencoderKL or AutoencoderTiny, as its config's _class_name says."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if vae_id == TINY_VAE_ID:
        from engine.pipeline.tiny import build_taesd

        return _cast(build_taesd(), dtype)
    config = from_pretrained(_ConfigOnly(AutoencoderTiny), vae_id, "VAE")
    cls = AutoencoderKL if config.get("_class_name") == "AutoencoderKL" else AutoencoderTiny
    return from_pretrained(cls, vae_id, "VAE", torch_dtype=dtype)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast only when needed: diffusers warns on every .to(dtype), even a no-op one."""
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def _build_tiny(dtype: torch.dtype, family: str) -> Models:
    from engine.pipeline import tiny

    tokenizer = tiny.build_tokenizer()
    xl = family == TINY_SDXL_ID
    return Models(
        unet=_cast(tiny.build_sdxl_unet() if xl else tiny.build_unet(), dtype),
        vae=_cast(tiny.build_vae(), dtype),
        text_encoder=_cast(tiny.build_text_encoder(tokenizer), dtype),
        tokenizer=tokenizer,
        scheduler_config=tiny.scheduler_config(),
        device=torch.device("cpu"),
        dtype=dtype,
        text_encoder_2=_cast(tiny.build_text_encoder(tokenizer, projection=True, seed=5), dtype) if xl else None,
        tokenizer_2=tokenizer if xl else None,
    )


def _load_text_encoder_2(models: Models, model_id: str) -> None:
    """SDXL: the second text encoder and tokenizer, from the same folder or hub id."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    models.text_encoder_2 = from_pretrained(
        CLIPTextModelWithProjection, model_id, "model", subfolder="text_encoder_2", torch_dtype=models.dtype
    )
    models.tokenizer_2 = from_pretrained(CLIPTokenizer, model_id, "model", subfolder="tokenizer_2")


def load_models(config: ModelConfig) -> Models:
    device, dtype = resolve_device(config.device, config.dtype)
    if config.id in (TINY_MODEL_ID, TINY_SDXL_ID):
        models = _build_tiny(dtype, config.id)
    else:
        from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        models = Models(
            unet=from_pretrained(UNet2DConditionModel, config.id, "model", subfolder="unet", torch_dtype=dtype),
            vae=from_pretrained(AutoencoderKL, config.id, "model", subfolder="vae", torch_dtype=dtype),
            text_encoder=from_pretrained(
                CLIPTextModel, config.id, "model", subfolder="text_encoder", torch_dtype=dtype
            ),
            tokenizer=from_pretrained(CLIPTokenizer, config.id, "model", subfolder="tokenizer"),
            scheduler_config=dict(
                from_pretrained(_ConfigOnly(LCMScheduler), config.id, "model", subfolder="scheduler")
            ),
            device=device,
            dtype=dtype,
        )
        if sdxl.is_sdxl(models.unet):
            _load_text_encoder_2(models, config.id)
    if config.vae is not None:
        models.vae = _load_vae(config.vae, dtype)
    for module in (models.unet, models.vae, models.text_encoder, models.text_encoder_2):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    models.device, models.config = device, config
    family = sdxl.base_name(models.unet.config)
    log.info("loaded model %s (%s, vae %s) on %s as %s", config.id, family, config.vae or "built-in", device, dtype)
    return models


class _ConfigOnly:
    """Reads a component's config alone (ConfigMixin.load_config) through the same loading rules."""

    def __init__(self, config_cls: Any) -> None:
        self.config_cls = config_cls

    def from_pretrained(self, model_id: str, **kwargs: Any) -> dict[str, Any]:
        return dict(self.config_cls.load_config(model_id, **kwargs))
