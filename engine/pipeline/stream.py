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

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import torch

from engine.backends.select import make_step_runner, select_backends
from engine.backends.unet import ControlNetBackend
from engine.config.schema import ControlNetConfig, FilterConfig, PromptConfig, StreamConfig, check_t_index_list
from engine.core.errors import DreamwireError
from engine.pipeline.cfg import CfgStrategy, GuidanceScalars, guided_unet_rows, select_cfg
from engine.pipeline.codec import KLCodec, make_codec
from engine.pipeline.controlnet import ControlledUNet, ControlNets, check_stream, load_controlnets
from engine.pipeline.image import FrameLoader, HostFrames
from engine.pipeline.models import Models
from engine.pipeline.schedule import SlotTables, build_slot_tables, slot_rows
from engine.pipeline.similarity_filter import NoFilter, SimilarityFilter

log = logging.getLogger(__name__)


class StreamPipeline:
    def __init__(self, models: Models, stream: StreamConfig, controlnets: Sequence[ControlNetConfig] = ()) -> None:
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
        if stream.cuda_graph and stream.mode == "img2img" and isinstance(codec, KLCodec):
            raise DreamwireError(
                "stream.cuda_graph needs a deterministic VAE encoder (TAESD, e.g. model.vae=madebyollin/taesd): "
                "AutoencoderKL samples its latent with a CPU generator, which a CUDA graph cannot replay"
            )
        # How a step's model part runs (one CUDA graph replay, or call by call), chosen once.
        self._run = make_step_runner(stream, self._model_step, self._state_kept, self.device)
        backends = select_backends(
            stream,
            models.config,
            models.unet,
            models.vae,
            codec,
            guided_unet_rows(stream.cfg_type, self.unet_rows, self.frames),
            self.device,
            self.dtype,
            controlnets=[(config.model, net) for config, net in zip(configs, nets, strict=True)],
        )
        self.unet, self.codec, self.acceleration = backends.unet, backends.vae, backends.name
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
        img2img = stream.mode == "img2img"
        self._encode_input: Callable[[torch.Tensor | None], None] = self._encode_image if img2img else _nothing
        self._draw_input: Callable[[], None] = _nothing if img2img else self._draw_noise  # outside any graph
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
        self.txt2img_generator = torch.Generator(self.device)
        self.tables: SlotTables | None = None
        self.cfg: CfgStrategy | None = None
        self.embeddings: torch.Tensor | None = None
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
    ) -> StreamPipeline:
        """A pipeline for these settings, prepared and ready for step() (embeddings: see prepare())."""
        pipeline = cls(models, stream, controlnets)
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
        self.txt2img_generator.manual_seed(prompt.seed)
        self.set_schedule(self.config.t_index_list, self.config.num_inference_steps)
        if embeddings is None:
            embeddings = (self.models.encode_prompt(prompt.text), self.models.encode_prompt(prompt.negative))
        self.cond, self.uncond = embeddings
        self.set_guidance(prompt.guidance, prompt.delta)
        self.set_embeddings(self.cond, self.uncond)
        self.set_filter(filter_config or FilterConfig(), seed=prompt.seed)
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
        """Swap the prompt (cond, uncond: [1, L, D]) without touching buffers or noise: no flash."""
        self.cond, self.uncond = cond, uncond
        embeddings = self.cfg.embeddings(cond, uncond, self.unet_rows)  # type: ignore[union-attr]
        if self.embeddings is not None and self.embeddings.shape == embeddings.shape:
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

    def set_control_frame(self, index: int, image: torch.Tensor) -> None:
        """The newest frame of ControlNet `index`'s external source [f, 3, H, W] in [−1, 1], before a step."""
        self.controlnets.set_external(index, image)  # type: ignore[union-attr]

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
        # 2. Encode the new frames into x_t[:f], noised to the first timestep; (2a) the ControlNets' control
        # images from the same frames, one per UNet row (their residuals join every UNet call in 4).
        self._encode_input(image)
        self._prepare_control(image)
        # 3 to 7. Denoise every slot: noise shift, UNet + CFG, LCM step, residual, re-noise into the buffer.
        x0_out = self._denoise()
        # 8. Decode the output latent: the frames that finished their last step (n − 1 frames of latency).
        return self.codec.decode(x0_out)

    @contextmanager
    def _state_kept(self) -> Iterator[None]:
        """Runs of the step inside (warm-up, capture) leave the stream's state as it was."""
        kept = [self.x_t.clone(), self.stock_noise.clone()]
        generators = [self.generator.get_state(), self.txt2img_generator.get_state()]
        try:
            yield
        finally:
            self.x_t.copy_(kept[0])
            self.stock_noise.copy_(kept[1])
            self.generator.set_state(generators[0])
            self.txt2img_generator.set_state(generators[1])

    def _encode_image(self, image: torch.Tensor | None) -> None:
        # x_new = a_0·ℓ + b_0·z_0   [f, C, h, w]
        latent = self.codec.encode(image)
        torch.add(self.tables.alpha[: self.frames] * latent, self._first_noise, out=self.x_t[: self.frames])

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
        eps = self.cfg.combine(self.unet(x_in, t_in, self.embeddings), self.stock_noise)
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
            eps = self.cfg.combine(self.unet(x_in, t_in, self.embeddings), self.stock_noise[rows])
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


def lcm_step(x: torch.Tensor, eps: torch.Tensor, tables: SlotTables) -> torch.Tensor:
    """The LCM boundary-condition step; the operation order follows the reference's, for exact seeds."""
    return tables.c_out * ((x - tables.beta * eps) / tables.alpha) + tables.c_skip * x


def _nothing(*_: object) -> None:
    return None
