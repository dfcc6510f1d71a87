"""A stand-in `tensorrt` module (TensorRT 10 API subset) that records every call, for contract tests on CPU.

It parses the real ONNX file it is given (onnx), "builds" an engine that is the JSON of the network's I/O and
the optimisation profile, and its execution context really reads the input buffers at the addresses it was
given and writes ε = 2·sample + timestep into the output buffer (CPU memory through ctypes); with the knob
`run_onnx`, it runs the engine's ONNX graph in onnxruntime on its input buffers instead and writes every output
(for the ControlNet engines and the UNet engine with residual inputs: numbers to compare with torch). Any attribute
it does not define (get_binding_index, execute_v2, BuilderFlag.FP16, …) is recorded and raises.
"""

from __future__ import annotations

import base64
import ctypes
import json
import types
from typing import Any

import numpy as np


class Recorder:
    """Calls in order, as (object kind, method, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple]] = []
        self.missing: list[str] = []

    def add(self, kind: str, method: str, *args: Any) -> None:
        self.calls.append((kind, method, args))

    def names(self, kind: str | None = None) -> list[str]:
        return [method for k, method, _ in self.calls if kind is None or k == kind]

    def count(self, method: str) -> int:
        return self.names().count(method)


class _Strict:
    """Unknown attributes are recorded (so a test can assert none was asked for) and raise."""

    recorder: Recorder

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.recorder.missing.append(f"{type(self).__name__}.{name}")
        raise AttributeError(f"stand-in tensorrt: {type(self).__name__}.{name} is not part of the TensorRT 10 API used")


class DataType:
    def __init__(self, name: str) -> None:
        self.name = name


_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "BOOL": np.bool_}


def make_module(version: str = "10.99.0") -> tuple[types.ModuleType, Recorder]:
    """A fresh stand-in module and its recorder. Knobs: module.fail_build, module.fail_execute, module.fail_load,
    module.run_onnx."""
    recorder = Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.fail_build = False
    trt.fail_execute = False
    trt.fail_load = False
    trt.run_onnx = False
    trt.builds = 0

    class Logger(_Strict):
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.recorder = recorder

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Network(_Strict):
        def __init__(self) -> None:
            self.recorder = recorder
            self.inputs: dict[str, tuple[str, list]] = {}
            self.outputs: dict[str, tuple[str, list]] = {}
            self.onnx = ""  # the graph, base64 (run_onnx)

    class OnnxParser(_Strict):
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.recorder, self.network = recorder, network

        def parse_from_file(self, path: str) -> bool:
            import onnx

            recorder.add("parser", "parse_from_file", path)
            graph = onnx.load(path).graph
            kinds = {1: "FLOAT", 10: "HALF", 7: "INT64", 9: "BOOL"}
            for values, into in ((graph.input, self.network.inputs), (graph.output, self.network.outputs)):
                for value in values:
                    shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
                    into[value.name] = (kinds[value.type.tensor_type.elem_type], shape)
            if trt.run_onnx:
                with open(path, "rb") as file:
                    self.network.onnx = base64.b64encode(file.read()).decode()
            return True

    class Profile(_Strict):
        def __init__(self) -> None:
            self.recorder = recorder
            self.shapes: dict[str, list] = {}

        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            recorder.add("profile", "set_shape", name, low, opt, high)
            self.shapes[name] = [list(low), list(opt), list(high)]

    class BuilderConfig(_Strict):
        def __init__(self) -> None:
            self.recorder = recorder
            self.profiles: list[Profile] = []
            self.progress_monitor: Any = None

        def add_optimization_profile(self, profile: Profile) -> int:
            recorder.add("config", "add_optimization_profile")
            self.profiles.append(profile)
            return 0

    class Builder(_Strict):
        def __init__(self, logger: Logger) -> None:
            self.recorder = recorder
            recorder.add("builder", "Builder")

        def create_network(self, flags: int) -> Network:
            recorder.add("builder", "create_network", flags)
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            recorder.add("builder", "build_serialized_network")
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for step in range(2):
                    assert monitor.step_complete("Building engine", step) is True
                monitor.phase_finish("Building engine")
            if trt.fail_build:
                return None
            trt.builds += 1
            engine = {
                "inputs": network.inputs,
                "outputs": network.outputs,
                "profiles": [p.shapes for p in config.profiles],
                "onnx": network.onnx,
            }
            return json.dumps(engine).encode()

    class Runtime(_Strict):
        def __init__(self, logger: Logger) -> None:
            self.recorder = recorder

        def deserialize_cuda_engine(self, serialized: bytes) -> Engine | None:
            recorder.add("runtime", "deserialize_cuda_engine")
            return None if trt.fail_load else Engine(json.loads(serialized))

    class Engine(_Strict):
        def __init__(self, spec: dict) -> None:
            self.recorder, self.spec = recorder, spec
            self.io = {**spec["inputs"], **spec["outputs"]}
            self.names = list(self.io)
            self.num_io_tensors = len(self.names)
            self.session: Any = None  # onnxruntime's, made on the first run_onnx execution

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType(self.io[name][0])

        def create_execution_context(self) -> Context:
            recorder.add("engine", "create_execution_context")
            return Context(self)

    class Context(_Strict):
        def __init__(self, engine: Engine) -> None:
            self.recorder, self.engine = recorder, engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, dims: tuple) -> bool:
            recorder.add("context", "set_input_shape", name, tuple(dims))
            if name not in self.engine.spec["profiles"][0]:  # a static input: only its own shape
                static = self.engine.io[name][1]
                if list(dims) != static:
                    return False
                self.shapes[name] = tuple(dims)
                return True
            low, _, high = self.engine.spec["profiles"][0][name]
            if not all(lo <= d <= hi for lo, d, hi in zip(low, dims, high, strict=True)):
                return False
            self.shapes[name] = tuple(dims)
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            recorder.add("context", "set_tensor_address", name, address)
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            recorder.add("context", "execute_async_v3", stream_handle)
            if trt.fail_execute:
                return False
            if trt.run_onnx:
                return self._run_onnx()
            sample = self._view("sample", self.shapes["sample"])
            timestep = self._view("timestep", self.shapes["timestep"])
            out = self._view("latent", self.shapes["sample"])
            out[...] = 2 * sample + timestep.reshape(-1, 1, 1, 1)
            return True

        def _run_onnx(self) -> bool:
            """The graph on the input buffers; each output written at its address, at the graph's result shape."""
            import onnxruntime

            if self.engine.session is None:
                graph = base64.b64decode(self.engine.spec["onnx"])
                self.engine.session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
            feed = {name: self._view(name, self.shapes[name]).copy() for name in self.engine.spec["inputs"]}
            results = self.engine.session.run(list(self.engine.spec["outputs"]), feed)
            for name, result in zip(self.engine.spec["outputs"], results, strict=True):
                self._view(name, result.shape)[...] = result
            return True

        def _view(self, name: str, shape: tuple) -> np.ndarray:
            dtype = np.dtype(_NUMPY[self.engine.io[name][0]])
            count = int(np.prod(shape))
            buffer = (ctypes.c_char * (count * dtype.itemsize)).from_address(self.addresses[name])
            return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)

    for cls in (Logger, NetworkDefinitionCreationFlag, IProgressMonitor, OnnxParser, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt, recorder
