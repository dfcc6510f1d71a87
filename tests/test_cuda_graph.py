"""stream.cuda_graph's logic on a CPU: the step captured once and replayed, live changes reaching the replay
through fixed buffers, a re-capture only on a change of CFG strategy.

A CUDA graph replays recorded kernels on the tensors they read at capture, with Python numbers baked in.
FxGraph stands in for it here: torch's make_fx records the step's ops the same way (every tensor it reads by
reference, every Python number as a constant), and replay re-runs that recording. A buffer reallocated after
capture, or a scalar read as a Python number, leaves the replay computing with stale values: the outputs below
would then differ from eager.
"""

from __future__ import annotations

import pytest
import torch
from conftest import clip, make_pipeline, to_input
from torch.fx.experimental.proxy_tensor import make_fx

from engine.backends.cuda_graph import CudaGraphStep
from engine.backends.fallback import Fallback
from engine.config.schema import PromptConfig
from engine.core.errors import DreamwireError
from engine.pipeline.schedule import SlotTables


class FxGraph:
    def __init__(self, device: torch.device) -> None:
        self.recording = None
        self.output: torch.Tensor | None = None

    def capture(self, body):
        self.recording = make_fx(body, tracing_mode="real")()
        self.output = self.recording()
        return self.output

    def replay(self) -> None:
        self.output.copy_(self.recording())


def graphed(pipeline):
    """The pipeline's step runner swapped for a CudaGraphStep over FxGraph (what cuda_graph: true builds on CUDA)."""
    runner = CudaGraphStep(pipeline._model_step, pipeline._state_kept, pipeline.device, Fallback(False), FxGraph)
    pipeline._run = runner
    pipeline.warm_up()
    return runner


def test_fx_graph_bakes_python_numbers_as_a_cuda_graph_does():
    """The stand-in is faithful: a Python number read at capture stays in the recording."""
    buffer, state = torch.ones(3), {"scale": 2.0}
    graph = FxGraph(torch.device("cpu"))
    out = graph.capture(lambda: buffer * state["scale"])
    state["scale"] = 5.0
    buffer.fill_(3.0)
    graph.replay()
    assert torch.equal(out, torch.full((3,), 6.0))  # the new buffer content, the old number


def captured_buffers(pipeline) -> dict[str, int]:
    tensors = {
        name: getattr(pipeline, name)
        for name in ("noise", "x_t", "stock_noise", "embeddings", "_first_noise", "_buffer_noise", "_noise_next")
    }
    tensors |= {f"tables.{f}": getattr(pipeline.tables, f) for f in SlotTables.__dataclass_fields__}
    tensors |= {"guidance": pipeline.scalars.guidance, "delta": pipeline.scalars.delta}
    return {name: tensor.data_ptr() for name, tensor in tensors.items()}


@pytest.mark.parametrize("cfg_type", ["self", "initialize", "full"])
def test_replay_equals_eager_through_live_changes(tiny_taesd_models, cfg_type):
    prompt = {"guidance": 1.6, "delta": 0.8, "negative": "grey"}
    settings = {"cfg_type": cfg_type, "t_index_list": [10, 30]}
    eager = make_pipeline(tiny_taesd_models, prompt, **settings)
    replayed = make_pipeline(tiny_taesd_models, prompt, **settings)
    runner = graphed(replayed)
    addresses = captured_buffers(replayed)
    frames = [to_input(clip(8)[i : i + 1]) for i in range(8)]
    cond, uncond = (tiny_taesd_models.encode_prompt(t) for t in ("a red fox", "blurry"))
    changes = [
        lambda p: None,
        lambda p: p.set_guidance(2.4, 0.5),  # same strategy: written into the device scalars
        lambda p: p.set_embeddings(cond, uncond),  # a new prompt
        lambda p: p.set_seed(11),  # new fixed noise
        lambda p: p.set_schedule([5, 45], 50),  # new tables
        lambda p: p.set_noise(p.noise_for_seed(3) * 0.5 + p.noise_for_seed(4) * 0.5),  # a seed blend
    ]
    for frame, change in zip(frames, changes, strict=False):
        change(eager)
        change(replayed)
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 1, "live changes must not need a re-capture"
    assert captured_buffers(replayed) == addresses
    # guidance crossing 1 changes the strategy (self, initialize, full) and captures again
    for pipeline in (eager, replayed):
        pipeline.set_guidance(1.0, 0.5)
    for frame in frames[len(changes) :]:
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 2
    # a reset (prepare) keeps every buffer where it was
    replayed.prepare(PromptConfig(text="a photo", guidance=1.0, seed=2))
    assert {k: v for k, v in captured_buffers(replayed).items() if k != "embeddings"} == {
        k: v for k, v in addresses.items() if k != "embeddings"
    }


def test_capture_leaves_the_stream_where_it_was(tiny_taesd_models):
    """The warm-up runs before capture must not advance the stream: the first replay is eager's first frame."""
    eager = make_pipeline(tiny_taesd_models, cfg_type="self")
    replayed = make_pipeline(tiny_taesd_models, cfg_type="self")
    graphed(replayed)
    frame = to_input(clip(1))
    assert torch.equal(replayed.step(frame), eager.step(frame))


def test_txt2img_draws_fresh_noise_outside_the_graph(tiny_taesd_models):
    eager = make_pipeline(tiny_taesd_models, {"seed": 4}, mode="txt2img", cfg_type="none")
    replayed = make_pipeline(tiny_taesd_models, {"seed": 4}, mode="txt2img", cfg_type="none")
    graphed(replayed)
    outputs = []
    for _ in range(3):
        outputs.append(replayed.step().clone())
        torch.testing.assert_close(outputs[-1], eager.step(), atol=1e-6, rtol=0)
    assert (outputs[1] - outputs[2]).abs().max() > 1e-4  # each frame its own noise


def test_a_failing_capture_stops_unless_fallback_is_set(tiny_taesd_models, caplog):
    class Broken(FxGraph):
        def capture(self, body):
            raise RuntimeError("operation not permitted when stream is capturing")

    for to_eager in (False, True):
        pipeline = make_pipeline(tiny_taesd_models)
        pipeline._run = CudaGraphStep(
            pipeline._model_step, pipeline._state_kept, pipeline.device, Fallback(to_eager), Broken
        )
        if not to_eager:
            with pytest.raises(DreamwireError, match=r"stream.cuda_graph: capturing the step failed: RuntimeError"):
                pipeline.step(to_input(clip(1)))
        else:
            reference = make_pipeline(tiny_taesd_models)
            assert torch.equal(pipeline.step(to_input(clip(1))), reference.step(to_input(clip(1))))
            assert "running eager PyTorch instead" in caplog.text


def test_cuda_graph_on_a_cpu_is_one_clear_error(tiny_taesd_models, tiny_models):
    with pytest.raises(DreamwireError, match=r"^stream.cuda_graph needs a CUDA device \(model.device is cpu\)"):
        make_pipeline(tiny_taesd_models, cuda_graph=True)
    with pytest.raises(DreamwireError, match=r"stream.cuda_graph needs a deterministic VAE encoder"):
        make_pipeline(tiny_models, cuda_graph=True)  # AutoencoderKL samples on the CPU
