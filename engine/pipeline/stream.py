"""The StreamDiffusion pipeline (arXiv 2312.12491): Stream Batch, residual CFG, similarity filter.

One call of step() takes f = frame_buffer_size new frames and returns the f frames that leave the
pipeline: with n = len(t_index_list) slots, a frame comes out n − 1 calls after it went in. Every
buffer is allocated in prepare() at a fixed shape and updated in place; step() reads no value back to
the host (except the similarity filter's decision, while it is enabled).

Shapes: image [f, 3, H, W] in [−1, 1]; latents [rows, C, h, w] with h = H/s, w = W/s (s = VAE factor);
rows = n·f in Stream Batch.

The backends (UNet, VAE) come from stream.acceleration and the step runner from stream.cuda_graph, chosen
once here (engine/backends/select.py). Every buffer the model part of a step touches keeps its address for
the pipeline's life, and live changes (prompt, guidance, seed, schedule) write into it, so a captured CUDA
graph stays valid; only a change of CFG strategy (guidance crossing 1) invalidates it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import torch

from engine.backends.onnx_export import StyleInputs
from engine.backends.select import make_step_runner, select_backends
from engine.backends.unet import ControlNetBackend
from engine.config.feature_bank import FeatureBankConfig
from engine.config.processors import ProcessorsConfig
from engine.config.schema import (
    ControlNetConfig,
    FilterConfig,
    IpAdapterConfig,
    LoraConfig,
    Preset,
    PromptConfig,
    StreamConfig,
    check_t_index_list,
)
from engine.core.errors import DreamwireError
from engine.pipeline.cfg import CfgStrategy, GuidanceScalars, guided_unet_rows, select_cfg
from engine.pipeline.codec import KLCodec, make_codec
from engine.pipeline.controlnet import ControlledUNet, ControlNets, check_stream, load_controlnets
from engine.pipeline.feature_bank import BankedUNet, FeatureBank
from engine.pipeline.image import FrameLoader, HostFrames
from engine.pipeline.ip_adapter import (
    ImagePromptUNet,
    IpAdapter,
    attach_ip_adapter,
    image_tokens_buffer,
    ip_adapter_fits,
    is_source_uri,
    read_image_file,
)
from engine.pipeline.lora import Loras, attach_loras, loras_fit
from engine.pipeline.models import Models
from engine.pipeline.schedule import SlotTables, build_slot_tables, slot_rows
from engine.pipeline.sdxl import AddedConditioning, pooled_dim
from engine.pipeline.similarity_filter import NoFilter, SimilarityFilter
from engine.pipeline.stages import StageContext, Stages

log = logging.getLogger(__name__)


class StreamPipeline:
    def __init__(
        self,
        models: Models,
        stream: StreamConfig,
        controlnets: Sequence[ControlNetConfig] = (),
        processors: ProcessorsConfig | None = None,
        feature_bank: FeatureBankConfig | None = None,
        loras: Sequence[LoraConfig] = (),
        ip_adapter: IpAdapterConfig | None = None,
    ) -> None:
        self.models = models
        self.config = stream.model_copy(deep=True)  # its own copy: later preset edits don't reach it
        self.device, self.dtype = models.device, models.dtype
        self.generator = torch.Generator()  # CPU, seeded in prepare: initial noise, then VAE samples
        codec = make_codec(models.vae, self.generator)
        s = codec.scale_factor
        for name, size in (("width", stream.width), ("height", stream.height)):
            if size % s:
                raise DreamwireError(f"stream.{name} {size} is not a multiple of the VAE factor {s}")
        check_stream(stream, controlnets)
        configs = list(controlnets)
        nets, depth = self._load_controlnets(configs)
        self.frames = stream.frame_buffer_size  # f
        self.slots = len(stream.t_index_list)  # n
        self.latent_shape = (codec.latent_channels, stream.height // s, stream.width // s)  # (C, h, w)
        # Latent rows per UNet call (before CFG): all slots at once, or one slot at a time.
        self.unet_rows = self.slots * self.frames if stream.use_denoising_batch else self.frames
        processors = processors or ProcessorsConfig()
        # img2img encodes its input; txt2img too when image_pre has processors: they get a black frame instead of
        # an input, so that feedback feeds the output back through the encoder (a self-feeding tunnel).
        encodes = stream.mode == "img2img" or bool(processors.image_pre)
        if stream.cuda_graph and encodes and isinstance(codec, KLCodec):
            raise DreamwireError(
                "stream.cuda_graph needs a deterministic VAE encoder (TAESD, e.g. model.vae=madebyollin/taesd): "
                "AutoencoderKL samples its latent with a CPU generator, which a CUDA graph cannot replay"
            )
        # LoRAs and the IP-Adapter (engine/pipeline/lora.py, ip_adapter.py): on the UNet, before any backend
        # traces or compiles it.
        self.loras = attach_loras(models, loras)
        self.ip_adapter = attach_ip_adapter(models, ip_adapter or IpAdapterConfig())
        # How a step's model part runs (one CUDA graph replay, or call by call), chosen once.
        self._run = make_step_runner(stream, self._model_step, self._state_kept, self.device)
        # The feature bank (engine/pipeline/feature_bank.py): its rings hold the n·f latent rows' past features;
        # under TensorRT they are the engine's extra inputs and outputs, so the bank is configured first.
        bank_config = feature_bank or FeatureBankConfig()
        check_feature_bank(stream, bank_config)
        self.feature_bank = FeatureBank(
            models.unet, self.slots * self.frames, self.latent_shape[1:], self.device, self.dtype
        )
        self.feature_bank.configure(bank_config)
        tensorrt_bank = self.feature_bank.active and stream.acceleration == "tensorrt"
        max_rows = guided_unet_rows(stream.cfg_type, self.unet_rows, self.frames)
        tokens = image_tokens_buffer(self.ip_adapter, max_rows) if self.ip_adapter is not None else None
        styles, style_key = style_inputs(self.loras, self.ip_adapter, tokens)
        backends = select_backends(
            stream,
            models.config,
            models.unet,
            models.vae,
            codec,
            max_rows,
            self.device,
            self.dtype,
            self.feature_bank.engine_extras() if tensorrt_bank else None,
            styles,
            style_key,
            controlnets=[(config.model, net) for config, net in zip(configs, nets, strict=True)],
        )
        self.unet, self.codec, self.acceleration = backends.unet, backends.vae, backends.name
        # The IP-Adapter's image tokens join the text embeddings in every UNet call (a fixed-address buffer; a
        # TensorRT engine is bound to it and reads it itself).
        self.image_prompt: ImagePromptUNet | None = None
        if self.ip_adapter is not None and tokens is not None:
            self.unet = self.image_prompt = ImagePromptUNet(self.unet, tokens, joined=self.acceleration != "tensorrt")
            image = self.ip_adapter.config.image
            if image is not None and not is_source_uri(image):  # a file: embedded now; a source: by the engine
                self.set_image_tokens(self.ip_adapter.embed(read_image_file(image.removeprefix("file:"))))
        self.unet = self._banked = BankedUNet(self.unet, self.feature_bank)
        # ControlNets (engine/pipeline/controlnet.py): the UNet backend with their residuals added, and step 2a.
        self.controlnets = self._build_controlnets(stream, configs, backends.controlnets, depth)
        self._prepare_control: Callable[[torch.Tensor | None], None] = _nothing
        self._layout_control: Callable[[CfgStrategy], None] = _nothing
        if self.controlnets is not None:
            self.unet = ControlledUNet(self.unet, self.controlnets)
            self._prepare_control, self._layout_control = self.controlnets.prepare, self.controlnets.layout
        self._denoise: Callable[[], torch.Tensor] = (
            self._denoise_batch if stream.use_denoising_batch else self._denoise_sequential
        )
        self._shift_stock_noise: Callable[[], None] = self._shift if self.slots > 1 else _nothing
        self._encode_input: Callable[[torch.Tensor | None], None] = self._encode_image if encodes else _nothing
        self._draw_input: Callable[[], None] = _nothing if encodes else self._draw_noise  # outside any graph
        # Buffers, allocated once at fixed shapes (their addresses never change: see the module docstring).
        rows = (self.slots * self.frames, *self.latent_shape)
        buffer = lambda: torch.zeros(rows, device=self.device, dtype=self.dtype)  # noqa: E731
        self.noise = buffer()  # z: the fixed noise, one row per latent row
        self.x_t = buffer()  # [x_new ; B]: this frame's input rows, then the buffer
        self.stock_noise = buffer()  # s: the residual noise of RCFG
        self._stock_scratch = buffer()
        self._noise_next = buffer()  # z_{(i+1) mod n}, for the residual
        self._first_noise = torch.zeros_like(self.noise[: self.frames])  # b_0·z_0
        self._buffer_noise = torch.zeros_like(self.noise[self.frames :])  # b_{j+1}·z_{j+1}
        self.scalars = GuidanceScalars(self.device, self.dtype)  # g and δ as device tensors
        # Processor stages (engine/pipeline/stages.py): their hooks in _model_step, their buffers allocated here.
        size = (self.frames, 3, stream.height, stream.width)
        self._black = torch.full(size, -1.0, device=self.device, dtype=self.dtype)  # txt2img's image_pre input
        self._frame_in: Callable[[torch.Tensor | None], torch.Tensor | None] = (
            self._black_frame if encodes and stream.mode != "img2img" else _same
        )
        context = StageContext(
            self.frames, stream.height, stream.width, self.latent_shape, self.device, self.dtype, self._noised_to_first
        )
        self.stages = Stages(processors, context)
        self.txt2img_generator = torch.Generator(self.device)
        self.tables: SlotTables | None = None
        self.cfg: CfgStrategy | None = None
        self.embeddings: torch.Tensor | None = None
        # SDXL (engine/pipeline/sdxl.py): the added conditioning per UNet row, with every UNet call (fixed buffers).
        self.added = (
            AddedConditioning(pooled_dim(models.unet), stream.height, stream.width, self.device, self.dtype)
            if models.sdxl
            else None
        )
        self.unet_kwargs = {} if self.added is None else {"added": self.added.kwargs}
        self.filter: SimilarityFilter | NoFilter = NoFilter()
        self.last_output: torch.Tensor | None = None
        self.skipped = False  # whether the last step() was skipped by the similarity filter

    def _load_controlnets(self, configs: list[ControlNetConfig]) -> tuple[list[torch.nn.Module], dict[str, Any]]:
        if not configs:
            return [], {}
        models = self.models
        model_id = models.config.id if models.config is not None else "tiny"
        return load_controlnets(configs, models.unet, model_id, models.loaded, self.device, self.dtype)

    def _build_controlnets(
        self,
        stream: StreamConfig,
        configs: list[ControlNetConfig],
        nets: Sequence[ControlNetBackend],
        depth: dict[str, Any],
    ) -> ControlNets | None:
        if not configs:
            return None
        return ControlNets(
            configs,
            nets,
            depth,
            slots=self.slots,
            frames=self.frames,
            sequential=not stream.use_denoising_batch,
            height=stream.height,
            width=stream.width,
            device=self.device,
            dtype=self.dtype,
        )

    @classmethod
    def prepared(
        cls,
        models: Models,
        stream: StreamConfig,
        prompt: PromptConfig,
        filter_config: FilterConfig,
        embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        controlnets: Sequence[ControlNetConfig] = (),
        processors: ProcessorsConfig | None = None,
        feature_bank: FeatureBankConfig | None = None,
        loras: Sequence[LoraConfig] = (),
        ip_adapter: IpAdapterConfig | None = None,
    ) -> StreamPipeline:
        """A pipeline for these settings, prepared and ready for step() (embeddings: see prepare())."""
        pipeline = cls(models, stream, controlnets, processors, feature_bank, loras, ip_adapter)
        pipeline.prepare(prompt, filter_config, embeddings)
        pipeline.warm_up()
        return pipeline

    def warm_up(self) -> None:
        """Compile or capture the step now (torch.compile, stream.cuda_graph), on a blank frame, leaving the
        stream's state as it was: so that the first live frame does not wait for it."""
        blank = None
        if self.config.mode == "img2img":
            height, width = self.config.height, self.config.width
            blank = torch.zeros((self.frames, height, width, 3), device=self.device, dtype=self.dtype)
            blank = blank.permute(0, 3, 1, 2)  # the FrameLoader's layout: [f, 3, H, W] over an NHWC buffer
        with torch.no_grad():
            self._run.warm_up(blank)

    def frame_loader(self) -> FrameLoader:
        """A loader of host frames at this pipeline's size, batch and device (its buffers allocated once)."""
        return FrameLoader(self.frames, self.config.height, self.config.width, self.device, self.dtype)

    def host_frames(self) -> HostFrames:
        """The step's output → host uint8 frames at this pipeline's size and batch (its buffer allocated once)."""
        return HostFrames(self.frames, self.config.height, self.config.width, self.device)

    # ---- set-up (not per frame) -------------------------------------------------------------------

    @torch.no_grad()
    def prepare(
        self,
        prompt: PromptConfig,
        filter_config: FilterConfig | None = None,
        embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Seed the noise, zero the buffers, compute the tables and encode the prompt: a full reset.
        embeddings: (cond, uncond) [1, L, D] already encoded (a blend, or the live engine's), instead of encoding
        prompt.text and prompt.negative."""
        self.generator.manual_seed(prompt.seed)
        self.noise.copy_(self._draw_noise_from(self.generator))
        self.x_t.zero_()
        self.stock_noise.zero_()
        self.feature_bank.reset()
        self.txt2img_generator.manual_seed(prompt.seed)
        self.set_schedule(self.config.t_index_list, self.config.num_inference_steps)
        if embeddings is None:
            embeddings = (self.models.encode_prompt(prompt.text), self.models.encode_prompt(prompt.negative))
        self.cond, self.uncond = embeddings
        self.set_guidance(prompt.guidance, prompt.delta)
        self.set_embeddings(self.cond, self.uncond)
        self.set_filter(filter_config or FilterConfig(), seed=prompt.seed)
        self.stages.reset()
        self.last_output = None
        log.debug(
            "prepared: %d slots x %d frames, latent %s, cfg %s", self.slots, self.frames, self.latent_shape, self.cfg
        )

    def set_schedule(self, t_index_list: list[int], num_inference_steps: int) -> None:
        """New timesteps for the same number of slots: tables recomputed, buffers and noise kept."""
        try:
            check_t_index_list(t_index_list, num_inference_steps)
        except ValueError as error:
            raise DreamwireError(str(error)) from None
        if len(t_index_list) != self.slots:
            raise DreamwireError(
                f"t_index_list {t_index_list} has {len(t_index_list)} steps; this pipeline was built for "
                f"{self.slots} (changing the number of steps rebuilds the pipeline)"
            )
        tables = build_slot_tables(
            self.models.scheduler_config,
            t_index_list,
            num_inference_steps,
            self.frames,
            consistency_boundary=self.config.mode != "txt2img-turbo",
            device=self.device,
            dtype=self.dtype,
        )
        if self.tables is None:
            self.tables = tables
            self._slot_tables = [
                slot_rows(self.tables, slice(i * self.frames, (i + 1) * self.frames)) for i in range(self.slots)
            ]
        else:  # in place: the step (and its CUDA graph) keeps reading the same tensors
            for field in fields(SlotTables):
                getattr(self.tables, field.name).copy_(getattr(tables, field.name))
        # The schedule in effect, so that a later prepare() (a reset) keeps it. Checked above, as a pair.
        self.config = self.config.model_copy(
            update={"t_index_list": list(t_index_list), "num_inference_steps": num_inference_steps}
        )
        self._update_noise_terms()

    def noise_shape(self) -> tuple[int, ...]:
        return (self.slots * self.frames, *self.latent_shape)

    def _draw_noise_from(self, generator: torch.Generator) -> torch.Tensor:
        # z: the fixed noise, one row per latent row, drawn on the CPU exactly as the reference does.
        return torch.randn(self.noise_shape(), generator=generator).to(device=self.device, dtype=self.dtype)

    def noise_for_seed(self, seed: int) -> torch.Tensor:
        """The fixed noise that prepare() would draw for this seed [n·f, C, h, w] (for seed blending)."""
        return self._draw_noise_from(torch.Generator().manual_seed(seed))

    def set_seed(self, seed: int) -> None:
        """A live seed change: reseed the generators (noise, then VAE sampling; txt2img) as prepare() does;
        buffers kept."""
        self.generator.manual_seed(seed)
        self.txt2img_generator.manual_seed(seed)
        self.set_noise(self._draw_noise_from(self.generator))

    def set_noise(self, noise: torch.Tensor) -> None:
        """Replace the fixed noise z [n·f, C, h, w] (seed change or seed blending); buffers kept."""
        self.noise.copy_(noise)
        self._update_noise_terms()

    def _update_noise_terms(self) -> None:
        f, tables = self.frames, self.tables
        # Products of constants, computed once instead of every frame (in place: fixed addresses).
        torch.mul(tables.beta[:f], self.noise[:f], out=self._first_noise)  # b_0·z_0: noises the new frames to τ_0
        torch.mul(tables.beta[f:], self.noise[f:], out=self._buffer_noise)  # b_{j+1}·z_{j+1}: re-noises the buffer
        if not self.config.do_add_noise:
            self._buffer_noise.zero_()
        torch.cat([self.noise[f:], self.noise[:f]], out=self._noise_next)

    def set_guidance(self, guidance: float, delta: float) -> None:
        """Live: g and δ are written into their device tensors; only crossing guidance 1 switches strategy
        (under full or initialize the uncond rows come or go, and the embeddings are re-laid), which makes a
        CUDA graph capture again. Buffers are kept."""
        self.guidance, self.delta = guidance, delta
        self.scalars.set(guidance, delta)
        cfg = select_cfg(self.config.cfg_type, guidance, self.scalars, self.frames)
        if type(cfg) is type(self.cfg):
            return
        self.cfg = cfg
        self._update_residual: Callable[..., None] = self._residual_update if cfg.residual else _nothing
        self._layout_control(cfg)  # the ControlNets' per-row scales follow the strategy's UNet rows
        self._run.invalidate()
        self.set_embeddings(self.cond, self.uncond)

    def set_embeddings(self, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """Swap the prompt (cond, uncond: [1, L, D]; SDXL's packed [1, 77 + 1, D]) without touching buffers or
        noise: no flash."""
        self.cond, self.uncond = cond, uncond
        relaid = False
        if self.added is not None:  # SDXL: the pooled rows into the added conditioning; the token rows go on
            cond, uncond, relaid = self.added.lay_out(self.cfg, cond, uncond, self.unet_rows)  # type: ignore[arg-type]
        embeddings = self.cfg.embeddings(cond, uncond, self.unet_rows)  # type: ignore[union-attr]
        if not relaid and self.embeddings is not None and self.embeddings.shape == embeddings.shape:
            self.embeddings.copy_(embeddings)
        else:  # a new layout (new strategy): the step is captured again
            self.embeddings = embeddings
            self._run.invalidate()

    def set_controlnet(self, index: int, config: ControlNetConfig) -> None:
        """Live: ControlNet `index`'s scale, enabled, start, end and preprocessor parameters, written in place;
        only a change of which nets run (a scale to or from 0, enabled, no slot selected) re-captures."""
        if self.controlnets is None or not 0 <= index < len(self.controlnets.units):
            raise DreamwireError(f"controlnets.{index}: this pipeline has no such ControlNet")
        if self.controlnets.set(index, config):
            self._run.invalidate()

    def set_controlnet_scale(self, index: int, scale: float) -> None:
        """Live: only ControlNet `index`'s scale (a cut, or a transition's step)."""
        if self.controlnets is None or not 0 <= index < len(self.controlnets.units):
            raise DreamwireError(f"controlnets.{index}: this pipeline has no such ControlNet")
        self.set_controlnet(index, self.controlnets.units[index].config.model_copy(update={"scale": scale}))

    def set_lora_weight(self, index: int, weight: float) -> None:
        """Live: LoRA `index`'s weight, written into its device scalar (no recompile, no re-capture)."""
        if self.loras is None:
            raise DreamwireError(f"loras.{index}: this pipeline has no LoRAs")
        self.loras.set_weight(index, weight)

    def ip_adapter_scale(self) -> float:
        return self.ip_adapter.config.scale if self.ip_adapter is not None else 0.0

    def set_ip_adapter_scale(self, scale: float) -> None:
        """Live: the IP-Adapter's scale, written into its device scalar (no recompile, no re-capture). Without an
        adapter there is nothing to scale: the preset keeps the value for when one is loaded."""
        if self.ip_adapter is not None:
            self.ip_adapter.set_scale(scale)

    def set_image_tokens(self, tokens: torch.Tensor) -> None:
        """New IP-Adapter image tokens [1, T, D] (IpAdapter.embed of a new image), swapped in between two steps."""
        if self.image_prompt is None:
            raise DreamwireError("ip_adapter.image: this pipeline has no IP-Adapter (set ip_adapter.model)")
        self.image_prompt.set_tokens(tokens)

    def set_control_frame(self, index: int, image: torch.Tensor) -> None:
        """The newest frame of ControlNet `index`'s external source [f, 3, H, W] in [−1, 1], before a step."""
        self.controlnets.set_external(index, image)  # type: ignore[union-attr]

    def set_processor(self, stage: str, index: int, name: str, value: object) -> None:
        """Live: processor `index` of `stage`: its `enabled` or a param, written into its device tensors in place;
        only switching a processor on or off re-captures."""
        if self.stages.set(stage, index, name, value):
            self._run.invalidate()

    def set_feature_bank(self, config: FeatureBankConfig) -> None:
        """Live: interval and fusion are written in place; enabled or max_frames make the rings anew (empty) and
        capture the step again. The model is never reloaded."""
        check_feature_bank(self.config, config)
        if self.feature_bank_needs_rebuild(config):
            raise DreamwireError(
                "feature_bank.enabled and max_frames pick another TensorRT engine under stream.acceleration tensorrt: "
                "a rebuild"
            )
        if self.feature_bank.configure(config):
            self._banked.choose()
            self._run.invalidate()

    def feature_bank_needs_rebuild(self, config: FeatureBankConfig) -> bool:
        """Under TensorRT the bank's ring size is part of the engine: changing it is a rebuild, not a re-capture."""
        frames = config.max_frames if config.enabled else 0
        return self.acceleration == "tensorrt" and frames != self.feature_bank.frames

    def set_filter(self, config: FilterConfig, seed: int = 0) -> None:
        self.filter = SimilarityFilter(config.threshold, config.max_skip_frames, seed) if config.enabled else NoFilter()

    # ---- per frame -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, image: torch.Tensor | None = None) -> torch.Tensor:
        """image: [f, 3, H, W] in [−1, 1] (None for txt2img) → the f frames leaving the pipeline [f, 3, H, W]
        (valid until the next step: with stream.cuda_graph it is the graph's output buffer).

        The numbered comments, read top to bottom through _model_step and _denoise_batch, are the per-frame steps
        of DESIGN.md "The method", in the order they run. One difference: the re-noise into the buffer (7 here,
        the paper's 8) runs before the decode (8 here, the paper's 7); it reads only x0, so the order is free."""
        # 1. Similarity filter: a frame like the last one repeats the last output, with no model work.
        self.skipped = image is not None and self.filter.should_skip(image)
        if self.skipped:
            return self.last_output
        self._draw_input()  # txt2img: fresh noise for the new rows (outside the graph: its generator advances)
        # Steps 2 to 8 (encode, denoise, decode) are _model_step: called directly, or replayed as one CUDA graph.
        self.last_output = self._run(image)
        return self.last_output

    def _model_step(self, image: torch.Tensor | None) -> torch.Tensor:
        # 1b. image_pre stages on the new frames (feedback FX); txt2img with image_pre: on a black frame.
        frames_in = self.stages.image_pre(self._frame_in(image))
        # 2. Encode the new frames into x_t[:f], noised to the first timestep; (2a) the ControlNets' control
        # images from the input frames, one per UNet row (their residuals join every UNet call in 4).
        self._encode_input(frames_in)
        self._prepare_control(image)
        # 2b. latent_pre stages on the new frames' latent x_t[:f], in place (latent feedback).
        self.stages.latent_pre(self.x_t[: self.frames])
        # 3 to 7. Denoise every slot: noise shift, UNet + CFG, LCM step, residual, re-noise into the buffer.
        x0_out = self._denoise()
        # 7b. latent_post stages on x0 of the finishing slot, in place.
        self.stages.latent_post(x0_out)
        # 8. Decode the output latent: the frames that finished their last step (n − 1 frames of latency);
        # (8b) image_post stages on them, and every processor remembers this step's output.
        frames_out = self.stages.image_post(self.codec.decode(x0_out))
        self.stages.remember(x0_out, frames_out)
        return frames_out

    @contextmanager
    def _state_kept(self) -> Iterator[None]:
        """Runs of the step inside (warm-up, capture) leave the stream's state as it was."""
        state = (self.x_t, self.stock_noise, *self.stages.state)
        kept = [tensor.clone() for tensor in state]
        bank = self.feature_bank.snapshot()
        generators = [self.generator.get_state(), self.txt2img_generator.get_state()]
        try:
            yield
        finally:
            for tensor, saved in zip(state, kept, strict=True):
                tensor.copy_(saved)
            self.feature_bank.restore(bank)
            self.generator.set_state(generators[0])
            self.txt2img_generator.set_state(generators[1])

    def _encode_image(self, image: torch.Tensor | None) -> None:
        # x_new = a_0·ℓ + b_0·z_0   [f, C, h, w]
        latent = self.codec.encode(image)
        torch.add(self.tables.alpha[: self.frames] * latent, self._first_noise, out=self.x_t[: self.frames])

    def _black_frame(self, _: torch.Tensor | None) -> torch.Tensor:
        return self._black

    def _noised_to_first(self, x0: torch.Tensor, out: torch.Tensor) -> None:
        # a_0·x0 + b_0·z_0   [f, C, h, w]: a latent noised as the new frames are (latent feedback)
        torch.addcmul(self._first_noise, self.tables.alpha[: self.frames], x0, out=out)

    def _draw_noise(self) -> None:
        # txt2img: the new rows start from fresh, seeded Gaussian noise.
        self.x_t[: self.frames].normal_(generator=self.txt2img_generator)

    def _denoise_batch(self) -> torch.Tensor:
        """Stream Batch: one UNet call covers all n slots. Returns x0 of the last slot [f, C, h, w]."""
        f, tables, x_t = self.frames, self.tables, self.x_t
        # 3. The residual noise moves down one slot with its latent; the new frames start from z_0.
        self._shift_stock_noise()
        # 4. UNet on [x_new ; B] (rows laid out by the CFG strategy) → guided ε̂.
        x_in, t_in = self.cfg.unet_batch(x_t, tables.timesteps)
        eps = self.cfg.combine(self.unet(x_in, t_in, self.embeddings, **self.unet_kwargs), self.stock_noise)
        # 5. LCM step: x0_i = c_out·(X_i − b_i·ε̂_i)/a_i + c_skip·X_i.
        x0 = lcm_step(x_t, eps, tables)
        # 6. Residual CFG: carry this frame's residual noise to the next slot.
        self._update_residual(self.stock_noise, self._noise_next, eps, tables)
        # 7. Re-noise every slot but the last into the buffer: B_j = a_{j+1}·x0_j + b_{j+1}·z_{j+1}.
        torch.addcmul(self._buffer_noise, tables.alpha[f:], x0[:-f], out=x_t[f:])
        return x0[-f:]

    def _denoise_sequential(self) -> torch.Tensor:
        """The same n steps one after another on the new frames, with the same fixed noise."""
        f = self.frames
        x = self.x_t[:f]
        x0 = x
        for i, slot in enumerate(self._slot_tables):
            rows = slice(i * f, (i + 1) * f)
            x_in, t_in = self.cfg.unet_batch(x, slot.timesteps)
            eps = self.cfg.combine(self.unet(x_in, t_in, self.embeddings, **self.unet_kwargs), self.stock_noise[rows])
            x0 = lcm_step(x, eps, slot)
            self._update_residual(self.stock_noise[rows], self._noise_next[rows], eps, slot)
            if i + 1 < self.slots:
                x = torch.addcmul(self._buffer_noise[rows], slot.alpha_next, x0)
        return x0

    def _shift(self) -> None:
        # s ← [z_0 ; s_0 … s_{n−2}], in place (a CUDA graph needs s at a fixed address): via the scratch rows,
        # since the source and destination rows overlap.
        f = self.frames
        self._stock_scratch[f:].copy_(self.stock_noise[:-f])
        self.stock_noise[f:].copy_(self._stock_scratch[f:])
        self.stock_noise[:f].copy_(self.noise[:f])

    @staticmethod
    def _residual_update(stock: torch.Tensor, noise_next: torch.Tensor, eps: torch.Tensor, tables: SlotTables) -> None:
        # Δ_i = c_out·(b_i·s_i − b_i·ε̂_i)/a_i + c_skip·b_i·s_i;  s_i ← z_{i+1} + Δ_i·a_{i+1}/b_{i+1}
        delta = lcm_step(tables.beta * stock, eps, tables)
        stock.copy_(noise_next + tables.alpha_next * delta / tables.beta_next)


def style_inputs(
    loras: Loras | None, adapter: IpAdapter | None, tokens: torch.Tensor | None
) -> tuple[StyleInputs, tuple[tuple[str, float | None], ...]]:
    """The LoRA and IP-Adapter inputs of a TensorRT engine (the pipeline's buffers) and their part of its key:
    each LoRA (id, fused weight, or None when live), the IP-Adapter ("ip_adapter:<model>", None)."""
    key: list[tuple[str, float | None]] = []
    styles = StyleInputs()
    if loras is not None:
        key += [(c.id, c.weight if c.fuse else None) for c in loras.configs]
        styles = StyleInputs(loras.scales if loras.live else (), loras.weights)
    if adapter is not None:
        key.append((f"ip_adapter:{adapter.config.model}", None))
        styles = dataclasses.replace(
            styles, ip_scale=adapter.scale, ip_scale_buffer=adapter.scale_buffer, image_tokens=tokens
        )
    return styles, tuple(key)


def styles_fit(models: Models, preset: Preset) -> bool:
    """Whether `models` already carries the preset's LoRAs and IP-Adapter (else a rebuild loads the model afresh)."""
    return loras_fit(models, preset.loras) and ip_adapter_fits(models, preset.ip_adapter)


def lcm_step(x: torch.Tensor, eps: torch.Tensor, tables: SlotTables) -> torch.Tensor:
    """The LCM boundary-condition step; the operation order follows the reference's, for exact seeds."""
    return tables.c_out * ((x - tables.beta * eps) / tables.alpha) + tables.c_skip * x


def check_feature_bank(stream: StreamConfig, config: FeatureBankConfig) -> None:
    """A bank this stream can run, or a one-line DreamwireError naming why not."""
    if not (config.enabled and config.max_frames):
        return
    if not stream.use_denoising_batch:
        raise DreamwireError(
            "feature_bank needs stream.use_denoising_batch: true (its rings follow Stream Batch's rows, one UNet "
            "call per frame)"
        )


def _nothing(*_: object) -> None:
    return None


def _same(image: torch.Tensor | None) -> torch.Tensor | None:
    return image
