"""The style sections of a preset (engine/pipeline/lora.py, engine/pipeline/ip_adapter.py): LoRA adapters with live
weights, and an IP-Adapter image prompt with a live scale."""

from __future__ import annotations

from pydantic import model_validator

from engine.config.schema import Section, live, rebuild

MAX_LORAS = 8


class LoraConfig(Section):
    """One LoRA: its file is a rebuild; its weight is live unless it is fused."""

    id: str = rebuild(
        ...,
        "Hugging Face id or local folder (diffusers LoRA weights), or a .safetensors file, of a LoRA for the "
        "model's base.",
        min_length=1,
    )
    weight: float = live(
        1.0,
        "Adapter weight (0: the base model); live without a re-capture, a rebuild when fused.",
        apply="lora",
        ge=-2.0,
        le=2.0,
    )
    fuse: bool = rebuild(False, "Bake the weight into the UNet (the last bit of speed); a weight change rebuilds.")


class IpAdapterConfig(Section):
    """The IP-Adapter: an image as a prompt. Its model, encoder and image are a rebuild; its scale is live."""

    model: str | None = rebuild(
        None,
        "IP-Adapter weights: a .safetensors/.bin file, or `id/weight_name` of a Hugging Face repository (e.g. "
        "h94/IP-Adapter/models/ip-adapter_sd15.safetensors); null: none.",
    )
    image_encoder: str | None = rebuild(
        None, "CLIPVisionModelWithProjection id or folder (e.g. h94/IP-Adapter/models/image_encoder)."
    )
    image: str | None = rebuild(
        None,
        "The image prompt: an image file, or a source URI (its frames re-embedded at most image_hz times a second).",
    )
    image_hz: float = rebuild(2.0, "A source image: embeddings per second at most.", gt=0.0, le=60.0)
    scale: float = live(1.0, "Image prompt strength (0: no effect, no re-capture).", apply="ip_adapter", ge=0.0, le=2.0)
    plus: bool = rebuild(False, "The 16-token Plus variant (its encoder's penultimate hidden states).")

    @model_validator(mode="after")
    def _check(self) -> IpAdapterConfig:
        if self.model is not None and (self.image_encoder is None or self.image is None):
            raise ValueError(f"ip_adapter.model {self.model!r} needs an image_encoder and an image")
        return self
