"""The StreamDiffusion pipeline (arXiv 2312.12491): Stream Batch, residual CFG, similarity filter.

One call of step() takes f = frame_buffer_size new frames and returns the f frames that leave the
pipeline: with n = len(t_index_list) slots, a frame comes out n − 1 calls after it went in. Every
buffer is allocated in prepare() at a fixed shape and updated in place; step() reads no value back to
the host (except the similarity filter's decision, while it is enabled).

Shapes: image [f, 3, H, W] in [−1, 1]; latents [rows, C, h, w] with h = H/s, w = W/s (s = VAE factor);
rows = n·f in Stream Batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from engine.backends.unet import make_unet_backend
from engine.config.schema import FilterConfig, PromptConfig, StreamConfig, check_t_index_list
from engine.core.errors import DreamwireError
from engine.pipeline.cfg import CfgStrategy, select_cfg
from engine.pipeline.codec import make_codec
from engine.pipeline.image import FrameLoader
from engine.pipeline.models import Models
from engine.pipeline.schedule import SlotTables, build_slot_tables, slot_rows
from engine.pipeline.similarity_filter import NoFilter, SimilarityFilter

log = logging.getLogger(__name__)


class StreamPipeline:
    def __init__(self, models: Models, stream: StreamConfig) -> None:
        self.models = models
        self.config = stream.model_copy(deep=True)  # its own copy: later preset edits don't reach it
        self.device, self.dtype = models.device, models.dtype
        self.generator = torch.Generator()  # CPU, seeded in prepare: initial noise, then VAE samples
        self.codec = make_codec(models.vae, self.generator)
        self.unet = make_unet_backend(stream.acceleration, models.unet)
        s = self.codec.scale_factor
        for name, size in (("width", stream.width), ("height", stream.height)):
            if size % s:
                raise DreamwireError(f"stream.{name} {size} is not a multiple of the VAE factor {s}")
        self.frames = stream.frame_buffer_size  # f
        self.slots = len(stream.t_index_list)  # n
        self.latent_shape = (self.codec.latent_channels, stream.height // s, stream.width // s)  # (C, h, w)
        # Latent rows per UNet call (before CFG): all slots at once, or one slot at a time.
        self.unet_rows = self.slots * self.frames if stream.use_denoising_batch else self.frames
        self._denoise: Callable[[], torch.Tensor] = (
            self._denoise_batch if stream.use_denoising_batch else self._denoise_sequential
        )
        self._shift_stock_noise: Callable[[], None] = self._shift if self.slots > 1 else _nothing
        self._encode_input: Callable[[torch.Tensor | None], None] = (
            self._encode_image if stream.mode == "img2img" else self._draw_noise
        )
        self.filter: SimilarityFilter | NoFilter = NoFilter()
        self.last_output: torch.Tensor | None = None
        self.skipped = False  # whether the last step() was skipped by the similarity filter

    @classmethod
    def prepared(
        cls,
        models: Models,
        stream: StreamConfig,
        prompt: PromptConfig,
        filter_config: FilterConfig,
        embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> StreamPipeline:
        """A pipeline for these settings, prepared and ready for step() (embeddings: see prepare())."""
        pipeline = cls(models, stream)
        pipeline.prepare(prompt, filter_config, embeddings)
        return pipeline

    def frame_loader(self) -> FrameLoader:
        """A loader of host frames at this pipeline's size, batch and device (its buffers allocated once)."""
        return FrameLoader(self.frames, self.config.height, self.config.width, self.device, self.dtype)

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
        f = self.frames
        self.generator.manual_seed(prompt.seed)
        self.noise = self._draw_noise_from(self.generator)
        self.x_t = torch.zeros_like(self.noise)  # [x_new ; B]: this frame's input rows, then the buffer
        self.stock_noise = torch.zeros_like(self.noise)  # s: the residual noise of RCFG
        self._stock_scratch = torch.zeros_like(self.noise)
        self.txt2img_generator = torch.Generator(self.device).manual_seed(prompt.seed)
        self.set_schedule(self.config.t_index_list, self.config.num_inference_steps)
        if embeddings is None:
            embeddings = (self.models.encode_prompt(prompt.text), self.models.encode_prompt(prompt.negative))
        self.cond, self.uncond = embeddings
        self.cfg = None  # type: ignore[assignment]  # a new prepare picks the strategy afresh
        self.embeddings = None  # type: ignore[assignment]
        self.set_guidance(prompt.guidance, prompt.delta)
        self.set_filter(filter_config or FilterConfig(), seed=prompt.seed)
        self.last_output = None
        log.debug("prepared: %d slots x %d frames, latent %s, cfg %s", self.slots, f, self.latent_shape, self.cfg)

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
        self.tables = build_slot_tables(
            self.models.scheduler_config,
            t_index_list,
            num_inference_steps,
            self.frames,
            consistency_boundary=self.config.mode != "txt2img-turbo",
            device=self.device,
            dtype=self.dtype,
        )
        self._slot_tables = [
            slot_rows(self.tables, slice(i * self.frames, (i + 1) * self.frames)) for i in range(self.slots)
        ]
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
        # Products of constants, computed once instead of every frame.
        self._first_noise = tables.beta[:f] * self.noise[:f]  # b_0·z_0: noises the new frames to τ_0
        self._buffer_noise = tables.beta[f:] * self.noise[f:]  # b_{j+1}·z_{j+1}: re-noises the buffer
        if not self.config.do_add_noise:
            self._buffer_noise.zero_()
        self._noise_next = torch.cat([self.noise[f:], self.noise[:f]])  # z_{(i+1) mod n}, for the residual

    def set_guidance(self, guidance: float, delta: float) -> None:
        """Live: the same strategy takes the new values in place; crossing guidance 1 under full or initialize
        switches strategy (the uncond rows come or go) and re-lays the embeddings. Buffers are kept."""
        self.guidance, self.delta = guidance, delta
        cfg = select_cfg(self.config.cfg_type, guidance, delta, self.frames)
        new_layout = type(cfg) is not type(getattr(self, "cfg", None))
        self.cfg: CfgStrategy = cfg
        self._update_residual: Callable[..., None] = self._residual_update if cfg.residual else _nothing
        if new_layout:
            self.set_embeddings(self.cond, self.uncond)

    def set_embeddings(self, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """Swap the prompt (cond, uncond: [1, L, D]) without touching buffers or noise: no flash."""
        self.cond, self.uncond = cond, uncond
        embeddings = self.cfg.embeddings(cond, uncond, self.unet_rows)
        if getattr(self, "embeddings", None) is not None and self.embeddings.shape == embeddings.shape:
            self.embeddings.copy_(embeddings)
        else:
            self.embeddings = embeddings

    def set_filter(self, config: FilterConfig, seed: int = 0) -> None:
        self.filter = SimilarityFilter(config.threshold, config.max_skip_frames, seed) if config.enabled else NoFilter()

    # ---- per frame -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, image: torch.Tensor | None = None) -> torch.Tensor:
        """image: [f, 3, H, W] in [−1, 1] (None for txt2img) → the f frames leaving the pipeline."""
        # 1. Similarity filter: a frame like the last one repeats the last output, with no model work.
        self.skipped = image is not None and self.filter.should_skip(image)
        if self.skipped:
            return self.last_output
        # 2. Encode the new frames into x_t[:f], noised to the first timestep.
        self._encode_input(image)
        # 3-6. Denoise every slot (UNet + CFG, LCM step, residual, buffer roll).
        x0_out = self._denoise()
        # 7. Decode the frames that finished their last step.
        self.last_output = self.codec.decode(x0_out)
        return self.last_output

    def _encode_image(self, image: torch.Tensor | None) -> None:
        # x_new = a_0·ℓ + b_0·z_0   [f, C, h, w]
        latent = self.codec.encode(image)
        torch.add(self.tables.alpha[: self.frames] * latent, self._first_noise, out=self.x_t[: self.frames])

    def _draw_noise(self, image: torch.Tensor | None) -> None:
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
        # 8. Re-noise every slot but the last into the buffer: B_j = a_{j+1}·x0_j + b_{j+1}·z_{j+1}.
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
        f = self.frames
        self._stock_scratch[:f].copy_(self.noise[:f])
        self._stock_scratch[f:].copy_(self.stock_noise[:-f])
        self.stock_noise, self._stock_scratch = self._stock_scratch, self.stock_noise

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
