"""The preset schema: YAML → typed, validated config. Unknown keys are rejected.

Every field's Field() carries its range or choices, its default, its doc and whether it changes live
(`live=True`) or needs a rebuild; engine/params.py reads the registry of parameters from here, so a
parameter is added in exactly one place.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CfgType = Literal["none", "full", "self", "initialize"]


def live(default: Any, doc: str, **constraints: Any) -> Any:
    """A parameter that changes between two frames, without a rebuild."""
    return Field(default, description=doc, json_schema_extra={"live": True}, **constraints)


def rebuild(default: Any, doc: str, **constraints: Any) -> Any:
    """A parameter whose change rebuilds the pipeline (the last frame is held meanwhile)."""
    return Field(default, description=doc, json_schema_extra={"live": False}, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    id: str = rebuild(
        "stabilityai/sd-turbo",
        "Hugging Face id or local diffusers folder; `tiny` is a built-in random model for tests and demos.",
        min_length=1,
    )
    vae: str | None = rebuild(
        "madebyollin/taesd",
        "VAE to swap in (AutoencoderTiny or AutoencoderKL id or folder; `tiny-taesd` is built in); "
        "null keeps the model's own.",
    )
    dtype: Literal["auto", "float16", "float32", "bfloat16"] = rebuild(
        "auto", "Weights and activations dtype; auto is float16 on CUDA, float32 on CPU."
    )
    device: str = rebuild("auto", "auto, cpu, cuda or cuda:N.", pattern=r"^(auto|cpu|cuda(:\d+)?)$")


class StreamConfig(Section):
    mode: Literal["img2img", "txt2img", "txt2img-turbo"] = rebuild(
        "img2img", "img2img transforms input frames; txt2img draws from noise; txt2img-turbo is the one-step x0 path."
    )
    width: int = rebuild(512, "Output width in pixels (a multiple of the VAE factor, 8 for SD).", ge=64, le=2048)
    height: int = rebuild(512, "Output height in pixels (a multiple of the VAE factor).", ge=64, le=2048)
    t_index_list: list[int] = live(
        [35], "Indices into the LCM schedule, one per denoising step, strictly ascending (0 = most noise)."
    )
    num_inference_steps: int = live(50, "Length of the LCM schedule that t_index_list indexes.", ge=1, le=1000)
    frame_buffer_size: int = rebuild(1, "Frames processed together per step.", ge=1, le=16)
    cfg_type: CfgType = rebuild(
        "self", "Guidance: none, full (2x UNet rows), self (residual CFG) or initialize (alias onetime)."
    )
    use_denoising_batch: bool = rebuild(True, "Stream Batch (one UNet call for all steps) or sequential steps.")
    do_add_noise: bool = rebuild(True, "Re-noise each step's x0 with the fixed noise before the next step.")
    acceleration: Literal["none", "tensorrt"] = rebuild("none", "UNet backend: eager PyTorch or TensorRT.")

    @field_validator("cfg_type", mode="before")
    @classmethod
    def _onetime_alias(cls, value: Any) -> Any:
        return "initialize" if value == "onetime" else value

    @model_validator(mode="after")
    def _check_t_index_list(self) -> StreamConfig:
        check_t_index_list(self.t_index_list, self.num_inference_steps)
        if self.mode == "txt2img-turbo" and len(self.t_index_list) != 1:
            raise ValueError(f"t_index_list {self.t_index_list}: txt2img-turbo is one step, give exactly one index")
        return self


def check_t_index_list(t_index_list: list[int], num_inference_steps: int) -> None:
    if not t_index_list:
        raise ValueError("t_index_list is empty: give at least one index, e.g. [35]")
    if any(b <= a for a, b in pairwise(t_index_list)):
        raise ValueError(f"t_index_list {t_index_list} must be strictly ascending")
    if t_index_list[0] < 0 or t_index_list[-1] >= num_inference_steps:
        raise ValueError(
            f"t_index_list {t_index_list} is out of range: each index must be in 0..{num_inference_steps - 1}"
            f" (num_inference_steps {num_inference_steps})"
        )


class PromptConfig(Section):
    text: str = live("a painting in the style of van gogh, vivid colours", "The prompt.")
    negative: str = live("", "Negative prompt (used by cfg full and initialize).")
    guidance: float = live(1.2, "Guidance scale; 1 or less turns guidance off.", ge=0.0, le=20.0)
    delta: float = live(1.0, "Residual CFG strength (virtual negative = delta x residual noise).", ge=0.0, le=5.0)
    seed: int = live(2, "Seed of the fixed noise and the VAE sampling.", ge=0, le=2**63 - 1)


class FilterConfig(Section):
    enabled: bool = live(False, "Stochastic similarity filter: skip frames that barely changed.")
    threshold: float = live(0.98, "Cosine similarity above which frames start being skipped.", ge=0.0, le=1.0)
    max_skip_frames: int = live(10, "At most this many frames skipped in a row.", ge=0, le=10000)


class IOConfig(Section):
    input: str = rebuild(
        "pattern:", "Source URI (pattern:, file:PATH, camera:, spout:NAME, syphon:NAME, ndi:NAME, shm:NAME)."
    )
    outputs: list[str] = rebuild(
        ["preview:"], "Sink URIs (preview:, file:PATH, spout:NAME, syphon:NAME, ndi:NAME, shm:NAME)."
    )


class Preset(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    io: IOConfig = Field(default_factory=IOConfig)
