"""The preset schema: YAML → typed, validated config. Unknown keys are rejected.

Every field's Field() carries its range or choices, its default, its doc, whether it changes live
(`live=True`) or needs a rebuild, and `apply`: what the live engine does with a change (the name of its apply
handler, engine/live/loop.py). engine/config/registry.py reads the parameters from here, so a parameter is added
in exactly one place.
"""

from __future__ import annotations

import ipaddress
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.config.feature_bank import FeatureBankConfig

# Section and the field helpers live in fields.py, so that a section kept in a module of its own (processors.py)
# uses them without importing this module, which imports that one.
from engine.config.fields import Apply, Section, at_start, live, rebuild  # noqa: F401  (Apply: imported from here too)
from engine.config.processors import ProcessorsConfig

CfgType = Literal["none", "full", "self", "initialize"]
# diffusers' LCMScheduler.set_timesteps refuses more steps than its config's original_inference_steps (default 50,
# the value in every LCM and turbo config we load); engine/pipeline/schedule.py checks the real config too.
MAX_INFERENCE_STEPS = 50


class ModelConfig(Section):
    id: str = rebuild(
        "stabilityai/sd-turbo",
        "Hugging Face id or local diffusers folder (SD 1.x, 2.x or SDXL); `tiny` and `tiny-sdxl` are built-in random "
        "models for tests and demos.",
        min_length=1,
    )
    vae: str | None = rebuild(
        "madebyollin/taesd",
        "VAE to swap in (AutoencoderTiny or AutoencoderKL id or folder; `tiny-taesd` is built in); "
        "null keeps the model's own.",
    )
    dtype: Literal["auto", "float16", "float32", "bfloat16"] = rebuild(
        "auto", "Weights and activations dtype; auto is float16 on CUDA and mps, float32 on CPU."
    )
    device: str = rebuild(
        "auto",
        "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (Apple Metal).",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
    )


class StreamConfig(Section):
    mode: Literal["img2img", "txt2img", "txt2img-turbo"] = rebuild(
        "img2img", "img2img transforms input frames; txt2img draws from noise; txt2img-turbo is the one-step x0 path."
    )
    width: int = rebuild(
        512, "Output width in pixels (a multiple of the VAE factor, 8 for SD).", ge=64, le=2048, multiple_of=8
    )
    height: int = rebuild(512, "Output height in pixels (a multiple of the VAE factor).", ge=64, le=2048, multiple_of=8)
    t_index_list: list[int] = live(
        [35],
        "Indices into the LCM schedule, one per denoising step, strictly ascending (0 = most noise).",
        apply="schedule",
    )
    num_inference_steps: int = live(
        50,
        "Length of the LCM schedule that t_index_list indexes (at most LCMScheduler's original_inference_steps).",
        apply="schedule",
        ge=1,
        le=MAX_INFERENCE_STEPS,
    )
    frame_buffer_size: int = rebuild(1, "Frames processed together per step.", ge=1, le=16)
    cfg_type: CfgType = rebuild(
        "self", "Guidance: none, full (2x UNet rows), self (residual CFG) or initialize (alias onetime)."
    )
    use_denoising_batch: bool = rebuild(True, "Stream Batch (one UNet call for all steps) or sequential steps.")
    do_add_noise: bool = rebuild(True, "Re-noise each step's x0 with the fixed noise before the next step.")
    # ---- acceleration (engine/backends/) ----
    acceleration: Literal["none", "compile", "tensorrt"] = rebuild(
        "none", "Backend: none (eager PyTorch), compile (torch.compile) or tensorrt (TensorRT engine for the UNet)."
    )
    cuda_graph: bool = rebuild(
        False, "Capture the whole step (encode, UNet, CFG, LCM step, decode) as one CUDA graph replay (CUDA only)."
    )
    acceleration_fallback: Literal["error", "none"] = rebuild(
        "error", "If the acceleration or the CUDA graph fails: error stops the run; none runs eager with a warning."
    )
    # TensorRT's optimisation profile (pixels per side): any width and height inside it run on one engine.
    trt_min_size: int = rebuild(256, "TensorRT profile: smallest width/height the engine accepts.", ge=64, le=2048)
    trt_opt_size: int = rebuild(512, "TensorRT profile: the width/height the engine is tuned for.", ge=64, le=2048)
    trt_max_size: int = rebuild(1024, "TensorRT profile: largest width/height the engine accepts.", ge=64, le=2048)

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

    @model_validator(mode="after")
    def _check_trt_profile(self) -> StreamConfig:
        if not self.trt_min_size <= self.trt_opt_size <= self.trt_max_size:
            raise ValueError(
                f"TensorRT profile: need trt_min_size <= trt_opt_size <= trt_max_size, got "
                f"{self.trt_min_size}, {self.trt_opt_size}, {self.trt_max_size}"
            )
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
    text: str = live("a painting in the style of van gogh, vivid colours", "The prompt.", apply="cond")
    negative: str = live("", "Negative prompt (used by cfg full and initialize).", apply="uncond")
    guidance: float = live(1.2, "Guidance scale; 1 or less turns guidance off.", apply="guidance", ge=0.0, le=20.0)
    delta: float = live(
        1.0, "Residual CFG strength (virtual negative = delta x residual noise).", apply="delta", ge=0.0, le=5.0
    )
    seed: int = live(2, "Seed of the fixed noise and the VAE sampling.", apply="noise", ge=0, le=2**63 - 1)


class FilterConfig(Section):
    enabled: bool = live(False, "Stochastic similarity filter: skip frames that barely changed.", apply="filter")
    threshold: float = live(
        0.98, "Cosine similarity above which frames start being skipped.", apply="filter", ge=0.0, le=1.0
    )
    max_skip_frames: int = live(10, "At most this many frames skipped in a row.", apply="filter", ge=0, le=10000)


class IOConfig(Section):
    input: str = rebuild(
        "pattern:",
        "Source URI (pattern:, file:PATH, camera:, spout:NAME, syphon:NAME, ndi:NAME, shm:NAME).",
        apply="source",
    )
    outputs: list[str] = rebuild(
        ["preview:"], "Sink URIs (preview:, file:PATH, spout:NAME, syphon:NAME, ndi:NAME, shm:NAME).", apply="sinks"
    )


class OscConfig(Section):
    """The control surface (engine/control/surface.py) and its OSC transport with OSCQuery (engine/control/osc.py)."""

    enabled: bool = at_start(True, "Start the OSC server (UDP) and its OSCQuery server (HTTP) with `dreamwire run`.")
    host: str = at_start(
        "127.0.0.1", "Interface to bind; anything but loopback is logged as a warning naming the port.", min_length=1
    )
    port: int = at_start(9000, "UDP port for OSC (0: any free port).", ge=0, le=65535)
    feedback: str = at_start(
        "127.0.0.1:9001",
        "host:port that errors, echoes and status go to (not the sender's port); empty: none.",
        pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):\d{1,5}$",
    )
    namespace: str = at_start(
        "/dreamwire",
        "Prefix of every address; optional on what arrives, always on what is sent back; empty for none.",
        pattern=r"^(/[A-Za-z0-9_.-]+)*$",
    )
    status_hz: float = at_start(
        4.0, "Numeric status messages per second to the feedback address (0: only on /status).", ge=0.0, le=60.0
    )
    allow: list[str] = at_start([], "Sender IPs allowed; empty: any sender that reaches the bound interface.")
    allow_rebuild_keys: bool = at_start(
        False, "Let OSC change model.*, io.* and the other rebuild keys (file: URIs are refused all the same)."
    )
    query_port: int | None = at_start(
        None, "TCP port of the OSCQuery HTTP server; null: the OSC port's number, 0: any free port.", ge=0, le=65535
    )

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"osc.allow entry {item!r} is not an IP address, e.g. 192.168.1.20") from None
        return value

    @field_validator("feedback")
    @classmethod
    def _check_feedback_port(cls, value: str) -> str:
        if value and not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
            raise ValueError(f"osc.feedback {value!r}: the port must be in 1..65535")
        return value


Preprocessor = Literal["none", "canny", "soft_edge", "depth", "external"]
MAX_CONTROLNETS = 4


class ControlNetConfig(Section):
    """One ControlNet (engine/pipeline/controlnet.py): its model and preprocessor are a rebuild, the rest is live."""

    model: str = rebuild(
        ...,
        "Hugging Face id or local diffusers folder of a ControlNet for the model's base; `random`: one built from "
        "the model's own UNet with random weights (tests, demos, bench).",
    )
    preprocessor: Preprocessor = rebuild(
        "canny",
        "What makes the control image from the input frame: none (the frame itself), canny, soft_edge, depth, or "
        "external (the newest frame of the `input` source).",
    )
    scale: float = live(1.0, "Conditioning scale; 0 skips the net (no cost).", apply="controlnet", ge=0.0, le=2.0)
    enabled: bool = live(True, "false skips the net (no cost); the scale is kept.", apply="controlnet")
    start: float = live(
        0.0,
        "Part of the denoising it acts on, from (0 = first slot of t_index_list).",
        apply="controlnet",
        ge=0.0,
        le=1.0,
    )
    end: float = live(
        1.0, "Part of the denoising it acts on, to (1 = last slot of t_index_list).", apply="controlnet", ge=0.0, le=1.0
    )
    input: str | None = rebuild(None, "Source URI of the control image, only with preprocessor external.")
    depth_model: str = rebuild(
        "depth-anything/Depth-Anything-V2-Small-hf",
        "depth: a transformers depth-estimation model (Hugging Face id or local folder).",
        min_length=1,
    )
    preprocess_on: Literal["gpu", "source"] = rebuild(
        "gpu",
        "canny, soft_edge: where the control image is made: gpu (torch ops inside the step, on the engine's device) "
        "or source (OpenCV on the input's source thread, so the engine thread does none; the camera extra).",
    )
    reuse_frames: int = rebuild(
        1,
        "Residuals computed once every this many frames and reused in between (a peer's cn_cache_interval): "
        "cheaper, the structure lags; 1: every frame. Not with stream.cuda_graph.",
        ge=1,
        le=8,
    )
    canny_low: float = live(
        100.0,
        "canny: weak-edge threshold on the gradient magnitude (0-255 scale, as OpenCV).",
        apply="controlnet",
        ge=0.0,
        le=2000.0,
    )
    canny_high: float = live(
        200.0,
        "canny: strong-edge threshold on the gradient magnitude (0-255 scale).",
        apply="controlnet",
        ge=0.0,
        le=2000.0,
    )

    @model_validator(mode="after")
    def _check(self) -> ControlNetConfig:
        if (self.preprocessor == "external") != (self.input is not None):
            raise ValueError(
                f"input {self.input!r} with preprocessor {self.preprocessor!r}: give an input URI exactly when the "
                "preprocessor is external"
            )
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end} (need start <= end)")
        if self.preprocess_on == "source" and self.preprocessor not in ("canny", "soft_edge"):
            raise ValueError(f"preprocess_on source with preprocessor {self.preprocessor!r}: only canny and soft_edge")
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low {self.canny_low} is above canny_high {self.canny_high}")
        return self


Quantize = Literal["none", "beat", "bar", "2bars", "4bars"]


class TempoConfig(Section):
    """The beat clock (engine/live/tempo.py): where the tempo comes from, and how changes and LFOs follow it."""

    source: Literal["internal", "link", "midi_clock", "osc"] = at_start(
        "internal",
        "internal (tempo.bpm, tap tempo on /tempo/tap), link (Ableton Link), midi_clock (24 ppqn from midi.input) "
        "or osc (/tempo/bpm and /tempo/beat, e.g. TouchDesigner's Beat CHOP).",
    )
    bpm: float = live(120.0, "Beats per minute (with link: becomes the session's tempo).", apply="tempo", ge=20, le=999)
    quantum: int = live(4, "Beats per bar (Link's quantum).", apply="tempo", ge=1, le=16)
    latency_ms: float = live(
        0.0,
        "Lookahead: quantised changes apply this much before their beat (the pipeline's latency).",
        apply="tempo",
        ge=0.0,
        le=1000.0,
    )
    quantize: Quantize = live(
        "none", "Default for every change that does not say: none, beat, bar, 2bars or 4bars.", apply="tempo"
    )


class MidiConfig(Section):
    """MIDI controllers (engine/control/midi.py) and MIDI clock (engine/control/midi_clock.py)."""

    input: str = at_start("", "MIDI input port, by name or a part of it (empty: no MIDI).")
    output: str = at_start("", "MIDI output port for LED feedback (empty: the input's name).")
    map: str = at_start("", "Mapping file (YAML), also `--midi-map`; MIDI learn saves to it.")


# ---- styles: LoRA adapters with live weights, an IP-Adapter image prompt with a live scale (engine/pipeline/lora.py,
# engine/pipeline/ip_adapter.py) ----
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


class Preset(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    io: IOConfig = Field(default_factory=IOConfig)
    osc: OscConfig = Field(default_factory=OscConfig)
    controlnets: list[ControlNetConfig] = rebuild(
        [],
        f"ControlNets, at most {MAX_CONTROLNETS}; adding or removing one, or changing its model or preprocessor, "
        "rebuilds the pipeline.",
        max_length=MAX_CONTROLNETS,
    )
    tempo: TempoConfig = Field(default_factory=TempoConfig)
    midi: MidiConfig = Field(default_factory=MidiConfig)
    # ---- processor stages (engine/config/processors.py, engine/pipeline/stages.py) ----
    processors: ProcessorsConfig = Field(default_factory=ProcessorsConfig)
    # ---- the feature bank, cached attention across frames (engine/config/feature_bank.py) ----
    feature_bank: FeatureBankConfig = Field(default_factory=FeatureBankConfig)
    # ---- styles (LoRAs, the IP-Adapter) ----
    loras: list[LoraConfig] = rebuild(
        [],
        f"LoRA adapters, at most {MAX_LORAS}; adding or removing one, or changing its id or fuse, rebuilds the "
        "pipeline (and reloads the model).",
        max_length=MAX_LORAS,
    )
    ip_adapter: IpAdapterConfig = Field(default_factory=IpAdapterConfig)
