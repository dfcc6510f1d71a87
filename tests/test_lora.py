"""LoRA adapters with live weights (engine/pipeline/lora.py) on a fresh tiny UNet, with synthetic LoRA weights
saved as .safetensors the way diffusers saves them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.backends.cuda_graph import CudaGraphStep
from engine.backends.fallback import Fallback
from engine.bench.styles import write_random_lora
from engine.config.schema import FilterConfig, LoraConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.lora import attach_loras, loras_fit
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline
from engine.pipeline.tiny import build_unet
from tests.conftest import SIZE, clip, to_input

pytest.importorskip("peft", reason="LoRAs need peft (pip install 'dreamwire[lora]')")

_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # what the LoRAs adapt (engine/bench/styles.py)


def write_lora(path: Path, seed: int, rank: int = 4) -> str:
    """A random LoRA for the tiny UNet, saved as diffusers saves one (the bench's builder)."""
    return write_random_lora(build_unet(), path, seed, rank)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("loras")
    return [write_lora(folder / f"style{i}.safetensors", seed=i) for i in range(2)]


@pytest.fixture
def models(tiny_taesd_models: Models) -> Models:
    """The tiny model with a UNet of its own (LoRAs change the UNet they are loaded into)."""
    return Models(**{**tiny_taesd_models.__dict__, "unet": build_unet(), "loaded": {}})


def _run(models: Models, loras: list[LoraConfig], frames: int = 2, **stream: object) -> list[torch.Tensor]:
    pipeline = _pipeline(models, loras, **stream)
    return [pipeline.step(to_input(frame[None])).clone() for frame in clip(frames)]


def _pipeline(models: Models, loras: list[LoraConfig], **stream: object) -> StreamPipeline:
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32], **stream)
    pipeline = StreamPipeline(models, config, loras=loras)
    pipeline.prepare(PromptConfig(text="a photo", seed=1), FilterConfig())
    return pipeline


def _close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


def test_weight_zero_equals_the_base_and_a_weight_moves_it(models: Models, lora_files: list[str]) -> None:
    base = _run(models, [])
    assert _close(_run(models, [LoraConfig(id=lora_files[0], weight=0.0)]), base, atol=1e-6)
    styled = _run(models, [LoraConfig(id=lora_files[0], weight=1.0)])
    assert not _close(styled, base, atol=1e-2)


def test_live_weight_change_moves_the_output_without_a_rebuild(models: Models, lora_files: list[str]) -> None:
    pipeline = _pipeline(models, [LoraConfig(id=lora_files[0], weight=0.0)])
    unet, scale = models.unet, pipeline.loras.scales[0].value  # type: ignore[union-attr]
    address = scale.data_ptr()
    frame = to_input(clip(1)[0][None])
    pipeline.step(frame)
    state = (pipeline.x_t.clone(), pipeline.stock_noise.clone())
    at_zero = pipeline.step(frame).clone()
    pipeline.x_t.copy_(state[0])
    pipeline.stock_noise.copy_(state[1])
    pipeline.set_lora_weight(0, 1.5)
    moved = pipeline.step(frame)
    assert not torch.allclose(moved, at_zero, atol=1e-2)
    assert models.unet is unet and scale.data_ptr() == address and float(scale) == 1.5


def test_fused_equals_unfused_and_unfusing_restores_the_base(models: Models, lora_files: list[str]) -> None:
    before = {name: p.clone() for name, p in models.unet.named_parameters()}
    configs = [LoraConfig(id=lora_files[0], weight=0.7), LoraConfig(id=lora_files[1], weight=-0.4)]
    unfused = _run(models, configs)
    fused = _run(models, [c.model_copy(update={"fuse": True}) for c in configs])
    assert _close(fused, unfused, atol=1e-4)
    mixed = _run(models, [configs[0].model_copy(update={"fuse": True}), configs[1]])  # one fused, one live
    assert _close(mixed, unfused, atol=1e-4)
    attach_loras(models, [])
    after = dict(models.unet.named_parameters())
    assert before.keys() == after.keys()  # the peft layers are gone
    assert all(torch.allclose(before[name], after[name], atol=1e-6) for name in before)


def test_a_fused_weight_change_is_refused_live(models: Models, lora_files: list[str]) -> None:
    pipeline = _pipeline(models, [LoraConfig(id=lora_files[0], weight=0.5, fuse=True)])
    with pytest.raises(DreamwireError, match=r"loras\.0 is fused"):
        pipeline.set_lora_weight(0, 1.0)
    assert not loras_fit(models, [LoraConfig(id=lora_files[0], weight=1.0, fuse=True)])
    assert loras_fit(models, [LoraConfig(id=lora_files[0], weight=0.5, fuse=True)])


def test_safetensors_round_trip_equals_the_adapter_in_memory(models: Models, tmp_path: Path) -> None:
    """A LoRA saved and read back through our loader gives what peft's own adapter gives in memory."""
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    path = write_lora(tmp_path / "round.safetensors", seed=7)
    loaded = _run(models, [LoraConfig(id=path, weight=1.0)])
    attach_loras(models, [])
    reference = write_lora(tmp_path / "again.safetensors", seed=7)  # the same random numbers, in memory below
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(reference).items()}
    models.unet.add_adapter(PeftLoraConfig(r=4, lora_alpha=4, target_modules=_TARGETS), adapter_name="memory")
    set_peft_model_state_dict(models.unet, convert_unet_state_dict_to_peft(state), adapter_name="memory")
    assert get_peft_model_state_dict(models.unet, adapter_name="memory")
    assert _close(_run(models, []), loaded, atol=1e-5)  # the in-memory adapter is active on the UNet
    models.unet.unload_lora()


def test_a_lora_for_another_base_is_refused_naming_both(models: Models, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora"
    save_file({f"{key}.down.weight": torch.zeros(4, 320), f"{key}.up.weight": torch.zeros(64, 4)}, str(path))
    with pytest.raises(DreamwireError, match=r"does not fit the model 'tiny'"):
        attach_loras(models, [LoraConfig(id=str(path))])
    assert not getattr(models.unet, "peft_config", None)
    with pytest.raises(DreamwireError, match="LoRA file not found"):
        attach_loras(models, [LoraConfig(id=str(tmp_path / "missing.safetensors"))])


def test_compiled_weight_change_does_not_recompile(models: Models, lora_files: list[str]) -> None:
    """torch.compile on CPU: weight changes run the same compiled graph (error_on_recompile)."""
    import torch._dynamo

    from engine.backends.compiled import CompiledUNet

    attach_loras(models, [LoraConfig(id=lora_files[0], weight=0.0)])
    loras = models.loaded[("loras", "")]
    compiled = CompiledUNet(models.unet, Fallback(False))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, embeddings = torch.tensor([500]), torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    outputs = [compiled(x, t, embeddings).clone()]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for weight in (1.0, -2.0):
            loras.set_weight(0, weight)
            outputs.append(compiled(x, t, embeddings).clone())
    eager = models.unet(x, t, encoder_hidden_states=embeddings, return_dict=False)[0]
    assert torch.allclose(outputs[-1], eager, atol=1e-3)  # weight -2 doubles the delta: float noise of ~1e-4
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)
    assert not torch.allclose(outputs[1], outputs[2], atol=1e-3)
    torch._dynamo.reset()


class _Recorder:
    """The CUDA-graph stand-in on CPU: capture records the body, replay re-runs it; addresses are checked."""

    def __init__(self, device: torch.device) -> None:
        self.body: Callable[[], torch.Tensor] | None = None
        self.output: torch.Tensor | None = None

    def capture(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.body = body
        self.output = body().clone()
        return self.output

    def replay(self) -> None:
        self.output.copy_(self.body())  # type: ignore[union-attr, misc]


def test_graph_stand_in_replays_equal_eager_through_weight_changes(models: Models, lora_files: list[str]) -> None:
    configs = [LoraConfig(id=lora_files[0], weight=0.2), LoraConfig(id=lora_files[1], weight=0.0)]
    eager, graphed = _pipeline(models, configs), _pipeline(models, configs)
    step = CudaGraphStep(graphed._model_step, graphed._state_kept, torch.device("cpu"), Fallback(False), _Recorder)
    graphed._run = step
    scales = [s.value for s in graphed.loras.scales]  # type: ignore[union-attr]
    addresses = [s.data_ptr() for s in scales]
    for i, frame in enumerate(clip(4)):
        weights = [(0.2, 0.0), (1.0, -0.5), (-1.5, 2.0), (0.0, 0.0)][i]
        for index, weight in enumerate(weights):
            eager.set_lora_weight(index, weight)
            graphed.set_lora_weight(index, weight)
        image = to_input(frame[None])
        expected = eager.step(image).clone()
        assert torch.allclose(graphed.step(image), expected, atol=1e-5)
    assert step.captures == 1 and [s.data_ptr() for s in scales] == addresses
