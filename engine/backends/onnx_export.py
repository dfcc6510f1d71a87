"""ONNX export of the UNet and the VAE, the graphs TensorRT builds its engines from (opset 17).

Graphs keep the module's dtype and device (a float16 CUDA UNet gives a float16 graph, which a strongly
typed TensorRT build keeps). Height and width are dynamic, and so is the batch (up to the stream's UNet
rows: guidance ≤ 1 under cfg full or initialize drops the uncond rows).

We use torch's TorchScript exporter (dynamo=False): it needs no onnxscript and traces the diffusers UNet
as is; torch ≥ 2.9 marks it deprecated but it is still there in 2.13.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.backends.engine_cache import ONNX_OPSET
from engine.backends.unet import added_input_widths
from engine.core.errors import DreamwireError

TEXT_TOKENS = 77  # CLIP's context length: the embeddings are [B, 77, D] for every SD 1.x/2.x model
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_OUTPUT = "latent"


class _UNetGraph(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class _AddedUNetGraph(torch.nn.Module):
    """An SDXL UNet: the added conditioning as two more inputs."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _ControlledUNetGraph(torch.nn.Module):
    """The UNet with the ControlNets' summed residuals as inputs: down_0 … down_{k−1}, mid."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *residuals: torch.Tensor,
    ) -> torch.Tensor:
        *down, mid = residuals
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


class _ControlNetGraph(torch.nn.Module):
    """A ControlNet whose residuals are scaled per row: conditioning_scale [B] is an input (live, no rebuild)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        down, mid = self.net(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            return_dict=False,
        )
        scale = conditioning_scale.view(-1, 1, 1, 1).to(mid.dtype)
        return (*(block * scale for block in down), mid * scale)


class _TinyEncoder(torch.nn.Module):
    """TAESD: image [B, 3, H, W] in [−1, 1] → latent [B, C, H/8, W/8], unscaled."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latents


class _KLEncoder(torch.nn.Module):
    """AutoencoderKL: image → moments [B, 2C, H/8, W/8] (mean ; logvar). The sample is drawn outside the graph,
    with the stream's seeded generator, as the pipeline does."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.parameters


class _Decoder(torch.nn.Module):
    """latent [B, C, h, w], unscaled → image [B, 3, 8h, 8w] in about [−1, 1]."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def _parameter(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def unet_size_factor(unet: torch.nn.Module) -> int:
    """Latent height and width must be multiples of this: the UNet halves them once per down block but the last.
    The traced graph (like TensorRT's) has no branch for other sizes."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


@torch.no_grad()
def export_unet(unet: torch.nn.Module, path: Path, rows: int, latent_size: tuple[int, int]) -> Path:
    """sample [B, C, h, w], timestep [B] int64, encoder_hidden_states [B, 77, D] (SDXL: and text_embeds [B, P],
    time_ids [B, 6]) → latent [B, C, h, w]."""
    weight = _parameter(unet)
    channels, dim = int(unet.config.in_channels), int(unet.config.cross_attention_dim)
    added = added_input_widths(unet)
    example = (
        torch.randn(rows, channels, *latent_size, dtype=weight.dtype, device=weight.device),
        torch.full((rows,), 500, dtype=torch.int64, device=weight.device),
        torch.randn(rows, TEXT_TOKENS, dim, dtype=weight.dtype, device=weight.device),
        *(torch.randn(rows, width, dtype=weight.dtype, device=weight.device) for width in added.values()),
    )
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        **{name: {0: "batch"} for name in added},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
    }
    graph = _AddedUNetGraph(unet) if added else _UNetGraph(unet)
    return _export(graph, example, path, [*UNET_INPUTS, *added], UNET_OUTPUT, dynamic)


def residual_names(net: torch.nn.Module) -> list[str]:
    """The residual inputs of a controlled UNet graph (and outputs of a ControlNet graph): down_0 …, mid."""
    return [f"down_{i}" for i in range(len(net.controlnet_down_blocks))] + ["mid"]


@torch.no_grad()
def export_controlnet(
    net: torch.nn.Module, path: Path, rows: int, latent_size: tuple[int, int]
) -> tuple[Path, list[str]]:
    """sample [B, C, h, w], timestep [B] int64, encoder_hidden_states [B, 77, D], controlnet_cond [B, 3, 8h, 8w] in
    [0, 1], conditioning_scale [B] → the residuals scaled per row (residual_names). Same dynamic range as the
    UNet's graph, so the two engines' profiles are equal."""
    weight = _parameter(net)
    channels, dim = int(net.config.in_channels), int(net.config.cross_attention_dim)
    h, w = latent_size
    example = (
        torch.randn(rows, channels, h, w, dtype=weight.dtype, device=weight.device),
        torch.full((rows,), 500, dtype=torch.int64, device=weight.device),
        torch.randn(rows, TEXT_TOKENS, dim, dtype=weight.dtype, device=weight.device),
        torch.rand(rows, 3, 8 * h, 8 * w, dtype=weight.dtype, device=weight.device),
        torch.ones(rows, dtype=weight.dtype, device=weight.device),
    )
    names = residual_names(net)
    inputs = [*UNET_INPUTS, "controlnet_cond", "conditioning_scale"]
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        "controlnet_cond": {0: "batch", 2: "image_height", 3: "image_width"},
        "conditioning_scale": {0: "batch"},
        **{name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names},
    }
    return _export(_ControlNetGraph(net), example, path, inputs, names, dynamic), names


@torch.no_grad()
def export_controlled_unet(
    unet: torch.nn.Module, net: torch.nn.Module, path: Path, rows: int, latent_size: tuple[int, int]
) -> Path:
    """export_unet's graph with the residuals (residual_names(net), shapes as the ControlNet gives them) as inputs."""
    weight = _parameter(unet)
    channels, dim = int(unet.config.in_channels), int(unet.config.cross_attention_dim)
    h, w = latent_size
    sample = torch.randn(rows, channels, h, w, dtype=weight.dtype, device=weight.device)
    timestep = torch.full((rows,), 500, dtype=torch.int64, device=weight.device)
    text = torch.randn(rows, TEXT_TOKENS, dim, dtype=weight.dtype, device=weight.device)
    cond = torch.rand(rows, 3, 8 * h, 8 * w, dtype=weight.dtype, device=weight.device)
    down, mid = net(sample, timestep, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
    names = residual_names(net)
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
        **{name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names},
    }
    example = (sample, timestep, text, *down, mid)
    return _export(_ControlledUNetGraph(unet), example, path, [*UNET_INPUTS, *names], UNET_OUTPUT, dynamic)


@torch.no_grad()
def export_vae(vae: torch.nn.Module, folder: Path, image_size: tuple[int, int]) -> list[Path]:
    """vae_encoder.onnx (image → latent for TAESD, → moments for AutoencoderKL) and vae_decoder.onnx."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if isinstance(vae, AutoencoderTiny):
        encoder, encoded = _TinyEncoder(vae), "latent"
    elif isinstance(vae, AutoencoderKL):
        encoder, encoded = _KLEncoder(vae), "moments"
    else:
        raise TypeError(f"unsupported VAE class {type(vae).__name__} (expected AutoencoderKL or AutoencoderTiny)")
    weight = _parameter(vae)
    height, width = image_size
    image = torch.rand(1, 3, height, width, dtype=weight.dtype, device=weight.device) * 2 - 1
    latent = torch.randn(
        1, int(vae.config.latent_channels), height // 8, width // 8, dtype=weight.dtype, device=weight.device
    )
    spatial = {0: "batch", 2: "height", 3: "width"}
    return [
        _export(
            encoder, (image,), folder / "vae_encoder.onnx", ["image"], encoded, {"image": spatial, encoded: spatial}
        ),
        _export(
            _Decoder(vae),
            (latent,),
            folder / "vae_decoder.onnx",
            ["latent"],
            "image",
            {"latent": spatial, "image": spatial},
        ),
    ]


def export_module(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
) -> Path:
    """A graph that another layer builds (the feature bank's UNet, engine/pipeline/feature_bank.py) through the same
    exporter and file layout as the UNet's."""
    return _export(module, example, path, inputs, outputs, dynamic)


def _export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    output: str | list[str],
    dynamic: dict[str, dict[int, str]],
) -> Path:
    """Export into a staging folder, then move into place as one .onnx file (plus one .onnx.data file when the
    exporter had to put weights over protobuf's 2 GB limit beside the graph, one file per tensor)."""
    try:
        import onnx  # noqa: F401  (torch's exporter writes the graph with it)
    except ImportError:
        raise DreamwireError("ONNX export needs the onnx package: pip install 'dreamwire[tensorrt]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}-", dir=path.parent) as staging:
        staged = Path(staging) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's to act on
            torch.onnx.export(
                module.eval(),
                example,
                str(staged),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=inputs,
                output_names=[output] if isinstance(output, str) else output,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        if len(list(Path(staging).iterdir())) > 1:
            gather_external_data(staged, path)
        else:
            shutil.move(staged, path)
    return path


def gather_external_data(source: Path, target: Path) -> None:
    """Re-save a graph whose weights lie in many files beside it as target + target.data (one file)."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
        size_threshold=0,
    )


# ---- styles: LoRA weights and the IP-Adapter as engine inputs (engine/pipeline/lora.py, ip_adapter.py) --------
STYLE_INPUTS = ("lora_scales", "image_tokens", "ip_adapter_scale")


class LiveNumber(Protocol):
    """A live multiplier whose tensor the UNet's hooks read (engine/pipeline/live_scale.py's LiveScale)."""

    value: torch.Tensor


class _StyledUNetGraph(torch.nn.Module):
    """The UNet with its live style numbers as graph inputs: lora_scales [k] (one weight per unfused LoRA), and
    with an IP-Adapter image_tokens [B, T, D] and ip_adapter_scale [1]. The hooks read LiveNumber.value, so during
    the trace each value is bound to its input: the engine then takes the weights at every call, as the eager
    pipeline reads its device scalars, and a weight change is never a rebuild."""

    def __init__(self, unet: torch.nn.Module, loras: Sequence[LiveNumber], ip_scale: LiveNumber | None) -> None:
        super().__init__()
        self.unet, self.loras, self.ip_scale = unet, list(loras), ip_scale

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *styles: torch.Tensor) -> Any:
        numbers: list[tuple[LiveNumber, torch.Tensor]] = []
        rest = list(styles)
        if self.loras:
            scales = rest.pop(0)
            numbers += [(lora, scales[i]) for i, lora in enumerate(self.loras)]
        hidden: Any = text
        if self.ip_scale is not None:
            tokens, scale = rest
            numbers.append((self.ip_scale, scale[0]))
            hidden = (text, [tokens])
        kept = [number.value for number, _ in numbers]
        try:
            for number, value in numbers:
                number.value = value
            return self.unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
        finally:
            for (number, _), value in zip(numbers, kept, strict=True):
                number.value = value


@torch.no_grad()
def export_styled_unet(
    unet: torch.nn.Module,
    path: Path,
    rows: int,
    latent_size: tuple[int, int],
    loras: Sequence[LiveNumber],
    ip_scale: LiveNumber | None = None,
    image_tokens: int = 0,
) -> tuple[Path, list[str]]:
    """export_unet's graph plus the style inputs (their names returned in order): lora_scales [k] when there are
    unfused LoRAs; image_tokens [B, T, D] (T = image_tokens) and ip_adapter_scale [1] with an IP-Adapter."""
    weight = _parameter(unet)
    channels, dim = int(unet.config.in_channels), int(unet.config.cross_attention_dim)
    kind = {"dtype": weight.dtype, "device": weight.device}
    example = [
        torch.randn(rows, channels, *latent_size, **kind),
        torch.full((rows,), 500, dtype=torch.int64, device=weight.device),
        torch.randn(rows, TEXT_TOKENS, dim, **kind),
    ]
    names: list[str] = []
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
    }
    if loras:
        example.append(torch.ones(len(loras), **kind))
        names.append("lora_scales")
    if ip_scale is not None:
        example += [torch.randn(rows, image_tokens, dim, **kind), torch.ones(1, **kind)]
        names += ["image_tokens", "ip_adapter_scale"]
        dynamic["image_tokens"] = {0: "batch"}
    graph = _StyledUNetGraph(unet, loras, ip_scale)
    return _export(graph, tuple(example), path, [*UNET_INPUTS, *names], UNET_OUTPUT, dynamic), names


@dataclass(frozen=True)
class StyleInputs:
    """What a styled UNet engine takes beyond the UNet's own inputs, and the fixed-address buffers it reads them
    from (the pipeline writes them in place: a weight, a scale or an image change is never a rebuild)."""

    loras: Sequence[LiveNumber] = ()  # every LoRA's number (a view of lora_weights); () when none runs unfused
    lora_weights: torch.Tensor | None = None  # [k]
    ip_scale: LiveNumber | None = None  # a view of ip_scale_buffer
    ip_scale_buffer: torch.Tensor | None = None  # [1]
    image_tokens: torch.Tensor | None = None  # [max_rows, T, D]: a call of B rows reads the first B

    def buffers(self) -> dict[str, tuple[torch.Tensor, bool]]:
        """input name → (its buffer, whether a call binds only its first rows), in STYLE_INPUTS order."""
        found: dict[str, tuple[torch.Tensor, bool]] = {}
        if self.loras and self.lora_weights is not None:
            found["lora_scales"] = (self.lora_weights, False)
        if self.ip_scale is not None and self.image_tokens is not None and self.ip_scale_buffer is not None:
            found["image_tokens"] = (self.image_tokens, True)
            found["ip_adapter_scale"] = (self.ip_scale_buffer, False)
        return found

    def export(self, unet: torch.nn.Module, path: Path, rows: int, latent_size: tuple[int, int]) -> Path:
        tokens = int(self.image_tokens.shape[1]) if self.image_tokens is not None else 0
        ip_scale = self.ip_scale if "image_tokens" in self.buffers() else None
        return export_styled_unet(unet, path, rows, latent_size, self.loras, ip_scale, tokens)[0]
