"""IP-Adapter: an image as a prompt, with a live scale (arXiv 2308.06721, decoupled cross-attention).

Loading is diffusers' own: UNet2DConditionModel._load_ip_adapter_weights installs IPAdapterAttnProcessor(2_0) on
every cross-attention layer (to_k_ip, to_v_ip per layer) and builds the image projection (ImageProjection: 4 tokens
from CLIP's image_embeds; IPAdapterPlusImageProjection, `plus`: 16 tokens from its penultimate hidden states).

What differs from a diffusers pipeline, for the stream:
- The image tokens are computed once per image, not per UNet call: CLIP vision tower + projection → tokens
  [1, T, D] (embed(), off the engine thread: at build for a file, on the image worker for a source). The projection
  is taken off the UNet (its encoder_hid_proj), and the UNet gets encoder_hidden_states = (text [B, L, D],
  [tokens [B, T, D]]), the tuple the processors read.
- The tokens live in a buffer per pipeline [max rows, T, D] at a fixed address (set_tokens() copies into it), so a
  new image swaps in between two frames like a prompt (no flash) and a CUDA graph replays it.
- The scale is a LiveScale (engine/pipeline/live_scale.py) on every to_v_ip: the processors' own scale stays the
  float 1.0 (their `scale == 0` test would read a tensor back to the host), and since to_v_ip has no bias,
  scaling its output scales the image attention exactly. 0 adds nothing; a change needs no re-capture.
- Every UNet row gets the image tokens, the CFG's uncond rows too (cfg full: the image acts on both sides).
FaceID variants are not supported (their face model, insightface, is not available here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends.unet import Residuals, UNetBackend
from engine.config.schema import IpAdapterConfig
from engine.core.errors import DreamwireError
from engine.pipeline.live_scale import LiveScale
from engine.pipeline.models import Models, from_pretrained

log = logging.getLogger(__name__)

_LOADED_KEY = ("ip_adapter", "")  # where a Models keeps its IpAdapter
# CLIP's pixel normalisation (transformers' OPENAI_CLIP_MEAN / STD), as CLIPImageProcessor applies it.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IpKey = tuple[str | None, ...]


def ip_key(config: IpAdapterConfig) -> IpKey:
    """What the UNet's adapter is made of; () for none."""
    return () if config.model is None else (config.model, config.image_encoder, str(config.plus))


def _hub_split(model_id: str) -> tuple[str, str]:
    """'owner/repo/sub/path' → ('owner/repo', 'sub/path')."""
    parts = model_id.split("/")
    if len(parts) < 3:
        raise DreamwireError(f"{model_id!r}: give a file, or owner/repo/path/to/file of a Hugging Face repository")
    return "/".join(parts[:2]), "/".join(parts[2:])


def read_ip_adapter(model_id: str) -> dict[str, dict[str, torch.Tensor]]:
    """{'image_proj': …, 'ip_adapter': …} from a .safetensors or .bin file, or owner/repo/path on the hub."""
    path = Path(model_id).expanduser()
    if not path.is_file():
        if model_id.startswith(("/", "./", "../", "~")):
            raise DreamwireError(f"IP-Adapter file not found: {model_id!r}")
        from huggingface_hub import hf_hub_download

        repo, filename = _hub_split(model_id)
        try:
            path = Path(hf_hub_download(repo, filename))
        except Exception as error:  # hub and network errors come in many types: all mean "not available"
            raise DreamwireError(f"IP-Adapter {model_id!r} could not be loaded ({type(error).__name__})") from error
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in load_file(str(path)).items():
            part, _, name = key.partition(".")
            if part in state:
                state[part][name] = value
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not state.get("image_proj") or not state.get("ip_adapter"):
        raise DreamwireError(f"IP-Adapter {model_id!r} has no image_proj and ip_adapter weights")
    return state


def load_image_encoder(encoder_id: str, dtype: torch.dtype) -> torch.nn.Module:
    """CLIPVisionModelWithProjection by folder or hub id (owner/repo/subfolder allowed)."""
    from transformers import CLIPVisionModelWithProjection

    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if not Path(encoder_id).expanduser().exists() and encoder_id.count("/") >= 2:
        encoder_id, kwargs["subfolder"] = _hub_split(encoder_id)
    return from_pretrained(CLIPVisionModelWithProjection, encoder_id, "IP-Adapter image encoder", **kwargs)


class IpAdapter:
    """The adapter on one UNet: its processors, image projection, CLIP vision tower and live scale."""

    def __init__(
        self,
        unet: torch.nn.Module,
        config: IpAdapterConfig,
        state: dict[str, dict[str, torch.Tensor]],
        encoder: torch.nn.Module,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        from diffusers.models.embeddings import IPAdapterPlusImageProjection

        self.unet, self.config, self.key = unet, config, ip_key(config)
        self.device, self.dtype = device, dtype
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._processors = dict(unet.attn_processors)  # restored by remove()
        # diffusers re-creates each self-attention processor by its class's no-argument constructor: it gets plain
        # ones, and ours (the feature bank's, which wrap a processor) go back after the load.
        self_attention = {name: p for name, p in self._processors.items() if name.endswith("attn1.processor")}
        unet.set_attn_processor(
            {n: AttnProcessor2_0() if n in self_attention else p for n, p in self._processors.items()}
        )
        try:
            unet._load_ip_adapter_weights([state])
            unet.set_attn_processor({**unet.attn_processors, **self_attention})
        except (RuntimeError, ValueError, KeyError) as error:  # shapes of another base
            unet.set_attn_processor(self._processors)
            unet.encoder_hid_proj = None
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DreamwireError(
                f"IP-Adapter {config.model!r} does not fit the model {model_id!r}: {first} (an IP-Adapter for "
                "another base model; see README, IP-Adapter)"
            ) from error
        self.projection = unet.encoder_hid_proj.image_projection_layers[0].eval()
        unet.encoder_hid_proj = None  # the tokens are projected once per image (embed()), not per UNet call
        unet.register_to_config(encoder_hid_dim_type=None)
        plus = isinstance(self.projection, IPAdapterPlusImageProjection)
        if plus != config.plus:
            self.remove()
            raise DreamwireError(
                f"ip_adapter.plus is {config.plus} but {config.model!r} is {'a Plus' if plus else 'not a Plus'} "
                f"IP-Adapter: set ip_adapter.plus: {str(plus).lower()}"
            )
        self.encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        processors = [p for p in unet.attn_processors.values() if hasattr(p, "to_v_ip")]
        self.scale_buffer = torch.zeros(1, device=device, dtype=dtype)  # [1]: a TensorRT engine's ip_adapter_scale
        self.scale = LiveScale(config.scale, device, dtype, storage=self.scale_buffer[0])
        self.scale.hook(processor.to_v_ip[0] for processor in processors)
        self.tokens_shape = (int(processors[0].num_tokens[0]), int(unet.config.cross_attention_dim))  # (T, D)
        self.image_size = int(encoder.config.image_size)
        log.info("loaded IP-Adapter %s (%d image tokens)", config.model, self.tokens_shape[0])

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """image [1, 3, H, W] in [−1, 1] → image tokens [1, T, D] (CLIP vision tower, then the projection)."""
        pixels = (image.to(self.device, torch.float32) + 1) / 2
        pixels = torch.nn.functional.interpolate(
            pixels, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
        mean = torch.tensor(_CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD, device=self.device).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(self.dtype)
        if self.config.plus:
            features = self.encoder(pixels, output_hidden_states=True).hidden_states[-2]  # [1, N, hidden]
        else:
            features = self.encoder(pixels).image_embeds  # [1, projection_dim]
        return self.projection(features).to(self.dtype)  # [1, T, D]

    def set_scale(self, scale: float) -> None:
        self.scale.set(scale)
        self.config = self.config.model_copy(update={"scale": scale})

    def remove(self) -> None:
        """The UNet as it was: its own attention processors, no image projection."""
        if hasattr(self, "scale"):
            self.scale.unhook()
        self.unet.set_attn_processor(self._processors)
        self.unet.encoder_hid_proj = None
        self.unet.register_to_config(encoder_hid_dim_type=None)


def read_image_file(path: str) -> torch.Tensor:
    """An image file → [1, 3, H, W] in [−1, 1]."""
    from PIL import Image

    try:
        with Image.open(Path(path).expanduser()) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise DreamwireError(f"ip_adapter.image {path!r} could not be read: {error}") from error
    return pixels_to_image(pixels)


def pixels_to_image(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → [1, 3, H, W] in [−1, 1] on the CPU (embed() moves it): a file's or a source frame's."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def image_tokens_buffer(adapter: IpAdapter, max_rows: int) -> torch.Tensor:
    """The image tokens of every UNet row [max_rows, T, D], zero until an image is embedded (adds nothing)."""
    return torch.zeros((max_rows, *adapter.tokens_shape), device=adapter.device, dtype=adapter.dtype)


class ImagePromptUNet:
    """A UNet backend with the image tokens joined to the text embeddings (engine/backends/unet.py's protocol).
    tokens: [max_rows, T, D] at a fixed address; each call reads its first rows. joined=False: the backend reads
    the buffer itself (a TensorRT engine bound to it), so only the text embeddings are passed on."""

    def __init__(self, inner: UNetBackend, tokens: torch.Tensor, joined: bool = True) -> None:
        self.inner, self.tokens = inner, tokens
        self._call: Callable[..., torch.Tensor] = self._joined if joined else inner  # chosen once

    def set_tokens(self, tokens: torch.Tensor) -> None:
        """New image tokens [1, T, D] for every row, in place (between two steps: no flash, no re-capture)."""
        self.tokens.copy_(tokens.expand_as(self.tokens))

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        **added: Any,
    ) -> torch.Tensor:
        # added: SDXL's added conditioning (added=...), passed on
        return self._call(x, t, embeddings, residuals, **added)

    def _joined(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        **added: Any,
    ) -> torch.Tensor:
        joined = (embeddings, [self.tokens[: x.shape[0]]])
        return self.inner(x, t, joined, residuals, **added)  # type: ignore[arg-type]


def attach_ip_adapter(models: Models, config: IpAdapterConfig) -> IpAdapter | None:
    """The IP-Adapter of `config` on models.unet: the one already there when it matches (scale updated), else the
    old one removed and this one loaded."""
    current: IpAdapter | None = models.loaded.get(_LOADED_KEY)
    if current is not None and current.key == ip_key(config):
        current.config = config  # its image and scale (the rest is the key)
        current.set_scale(config.scale)
        return current
    if current is not None:
        current.remove()
        del models.loaded[_LOADED_KEY]
    if config.model is None or config.image_encoder is None:
        return None
    model_id = models.config.id if models.config is not None else "tiny"
    state = read_ip_adapter(config.model)
    encoder = load_image_encoder(config.image_encoder, models.dtype)
    adapter = IpAdapter(models.unet, config, state, encoder, model_id, models.device, models.dtype)
    models.loaded[_LOADED_KEY] = adapter
    return adapter


def ip_adapter_fits(models: Models, config: IpAdapterConfig) -> bool:
    """Whether `models` can take `config` without changing its UNet's processors (a rebuild keeps the models)."""
    current: IpAdapter | None = models.loaded.get(_LOADED_KEY)
    return (current.key if current is not None else ()) == ip_key(config)


def is_source_uri(image: str) -> bool:
    """A source URI (`ndi:NAME`, `pattern:`, …: a scheme of two letters or more) rather than an image file."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", image) is not None and not image.lower().startswith("file:")
