"""LoRA adapters on the UNet, with live weights.

Loading is diffusers' and peft's own: StableDiffusionLoraLoaderMixin.lora_state_dict reads the file (diffusers,
kohya and A1111 layouts), UNet2DConditionModel.load_lora_adapter injects peft LoRA layers under the adapter name
`lora<i>`, and set_adapter / disable_lora choose which adapters run.

Weights: peft multiplies each adapter's delta by a Python float per layer (lora_alpha / r · weight), which
set_adapters would rewrite, and a new float recompiles under torch.compile and re-captures under a CUDA graph. Here
peft's float stays at lora_alpha / r for good, and the weight is a LiveScale (engine/pipeline/live_scale.py): one
0-dim device tensor per adapter that multiplies its up projection's output (lora_B) in every layer, written in place
with fill_(). So delta = B·A·(alpha / r)·weight exactly, and a weight change is neither a recompile nor a re-capture.

fuse: true adds the delta at the preset's weight into the base weights (peft's get_delta_weight, as its merge does)
and takes the adapter out of the forward pass; a weight change of a fused LoRA is then a rebuild. remove() subtracts
it again (unfusing restores the base) and unloads every adapter.

The adapters change the shared UNet, so the pipeline's Models carry them (Models.loaded): a rebuild with other
LoRAs (another id, fuse, or a fused weight) loads the model afresh (engine/live/rebuild.py) instead of changing a
UNet that the running pipeline still uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.config.schema import LoraConfig
from engine.core.errors import DreamwireError
from engine.pipeline.live_scale import LiveScale
from engine.pipeline.models import Models, from_pretrained

log = logging.getLogger(__name__)

PEFT_EXTRA = "pip install 'dreamwire[lora]'"
_LOADED_KEY = ("loras", "")  # where a Models keeps its Loras

LoraKey = tuple[tuple[str, bool, float | None], ...]


def lora_key(configs: Sequence[LoraConfig]) -> LoraKey:
    """What a UNet's adapters are made of: ids and fuse flags, and the weights of the fused ones (the others are
    live). Equal keys can share one loaded set."""
    return tuple((c.id, c.fuse, c.weight if c.fuse else None) for c in configs)


def adapter_name(index: int) -> str:
    return f"lora{index}"


class _LoraWeights:
    """from_pretrained() for models.from_pretrained's rules (folder, then cache, then hub): a LoRA's state dict."""

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

        return StableDiffusionLoraLoaderMixin.lora_state_dict(source, **kwargs)


def read_lora(lora_id: str) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """(state dict with `unet.` keys, network alphas) of a .safetensors file, a folder or a hub id."""
    path = Path(lora_id).expanduser()
    if lora_id.endswith(".safetensors") or path.is_file():
        if not path.is_file():
            raise DreamwireError(f"LoRA file not found: {lora_id!r}")
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
        from safetensors.torch import load_file

        try:
            return StableDiffusionLoraLoaderMixin.lora_state_dict(load_file(str(path)))
        except (OSError, ValueError, KeyError) as error:
            raise DreamwireError(f"LoRA file {lora_id!r} could not be read: {error}") from error
    return from_pretrained(_LoraWeights, lora_id, "LoRA")


def _import_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as error:
        raise DreamwireError(f"LoRAs need peft ({error}): {PEFT_EXTRA}") from error


def _lora_layers(unet: torch.nn.Module, name: str) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer) and name in m.lora_B]


class Loras:
    """The LoRAs of one UNet: adapters `lora<i>`, a LiveScale each, the fused ones baked in."""

    def __init__(
        self,
        unet: torch.nn.Module,
        configs: Sequence[LoraConfig],
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        _import_peft()
        self.unet, self.configs, self.key = unet, list(configs), lora_key(configs)
        self.names = [adapter_name(i) for i in range(len(configs))]
        # Unfused: the live weight. Fused: out of the forward pass, its scale unused. One buffer [k] holds them
        # all (each scale a 0-dim view of it): a TensorRT engine takes it as its lora_scales input.
        self.weights = torch.zeros(len(configs), device=device, dtype=dtype)
        self.scales = [
            LiveScale(1.0 if c.fuse else c.weight, device, dtype, storage=self.weights[i])
            for i, c in enumerate(configs)
        ]
        self._fused: dict[str, float] = {}  # adapter name -> the weight baked into the base weights
        try:
            for config, name, scale in zip(configs, self.names, self.scales, strict=True):
                state, alphas = read_lora(config.id)
                try:
                    unet.load_lora_adapter(state, network_alphas=alphas, adapter_name=name, prefix="unet")
                except (RuntimeError, ValueError, KeyError) as error:  # shapes or names of another base
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise DreamwireError(
                        f"LoRA {config.id!r} does not fit the model {model_id!r}: {first} (a LoRA for another base "
                        "model; see README, LoRA)"
                    ) from error
                layers = _lora_layers(unet, name)
                if not layers:
                    raise DreamwireError(f"LoRA {config.id!r} has no UNet weights the model {model_id!r} knows")
                scale.hook(layer.lora_B[name] for layer in layers)
                if config.fuse:
                    self._fuse(name, config.weight)
            self._activate()
        except BaseException:
            self.remove()
            raise
        log.info("loaded %d LoRA(s): %s", len(configs), ", ".join(c.id for c in configs))

    def _fuse(self, name: str, weight: float) -> None:
        """Base weights += weight · B·A·alpha/r (peft's delta), in each layer the adapter has."""
        for layer in _lora_layers(self.unet, name):
            base = layer.get_base_layer().weight
            base.data += (layer.get_delta_weight(name) * weight).to(base.dtype)
        self._fused[name] = weight

    def _unfuse(self, name: str) -> None:
        weight = self._fused.pop(name)
        for layer in _lora_layers(self.unet, name):
            base = layer.get_base_layer().weight
            base.data -= (layer.get_delta_weight(name) * weight).to(base.dtype)

    def _activate(self) -> None:
        """Only the unfused adapters run (a fused one is already in the base weights)."""
        live = [name for name in self.names if name not in self._fused]
        if live:
            self.unet.enable_lora()
            self.unet.set_adapter(live)
        elif self.names:
            self.unet.disable_lora()

    def set_weight(self, index: int, weight: float) -> None:
        """Live: an unfused LoRA's weight, written in place (no recompile, no re-capture)."""
        if not 0 <= index < len(self.configs):
            raise DreamwireError(f"loras.{index}: there is no such LoRA (the pipeline has {len(self.configs)})")
        if self.configs[index].fuse:
            raise DreamwireError(f"loras.{index} is fused: a weight change rebuilds the pipeline")
        self.scales[index].set(weight)
        self.configs[index] = self.configs[index].model_copy(update={"weight": weight})

    def set_weights(self, configs: Sequence[LoraConfig]) -> None:
        for index, config in enumerate(configs):
            if not config.fuse:
                self.set_weight(index, config.weight)

    @property
    def live(self) -> bool:
        """Some LoRA runs unfused (its weight is an input of the step)."""
        return any(not c.fuse for c in self.configs)

    def remove(self) -> None:
        """Unfuse, unhook and unload every adapter: the UNet is the base model again."""
        for name in list(self._fused):
            self._unfuse(name)
        for scale in self.scales:
            scale.unhook()
        if getattr(self.unet, "peft_config", None):
            self.unet.unload_lora()


def attach_loras(models: Models, configs: Sequence[LoraConfig]) -> Loras | None:
    """The LoRAs `configs` on models.unet: the ones already there when their key matches (weights updated),
    else the old ones removed and these loaded."""
    current: Loras | None = models.loaded.get(_LOADED_KEY)
    if current is not None and current.key == lora_key(configs):
        current.set_weights(configs)
        return current
    if current is not None:
        current.remove()
        del models.loaded[_LOADED_KEY]
    if not configs:
        return None
    model_id = models.config.id if models.config is not None else "tiny"
    loras = Loras(models.unet, configs, model_id, models.device, models.dtype)
    models.loaded[_LOADED_KEY] = loras
    return loras


def loras_fit(models: Models, configs: Sequence[LoraConfig]) -> bool:
    """Whether `models` can take `configs` without changing its UNet's adapters (a rebuild keeps the models)."""
    current: Loras | None = models.loaded.get(_LOADED_KEY)
    return (current.key if current is not None else ()) == lora_key(configs)
