"""`dreamwire engines`: the TensorRT engine cache (key, list, build, clear) and ONNX export."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import DreamwireError

if TYPE_CHECKING:  # the parser is built on every `dreamwire` call: keep this module's imports light
    import torch

    from engine.backends.engine_cache import EngineSpec
    from engine.config.schema import Preset

log = logging.getLogger("dreamwire")


def add_engines_parser(commands: Any, preset_arguments: Callable[[argparse.ArgumentParser, str], None]) -> None:
    engines = commands.add_parser("engines", help="TensorRT engines: cache key, list, build, clear; ONNX export")
    verbs = engines.add_subparsers(dest="engines_command", required=True)
    key = verbs.add_parser("key", help="print the engine cache key of a preset")
    preset_arguments(key, "default")
    build = verbs.add_parser("build", help="build (or find) the UNet engine of a preset")
    preset_arguments(build, "default")
    export = verbs.add_parser("export-onnx", help="write the UNet and VAE ONNX graphs of a preset")
    preset_arguments(export, "default")
    export.add_argument("--out", required=True, type=Path, help="output folder")
    listing = verbs.add_parser("list", help="list the cached engines")
    clear = verbs.add_parser("clear", help="delete every cached engine")
    for parser in (build, listing, clear):
        parser.add_argument("--cache-dir", type=Path, help="engine folder (default: the user cache dir)")


def run_engines(args: argparse.Namespace) -> None:
    from engine.backends import engine_cache

    verb = args.engines_command
    if verb == "list":
        _list(engine_cache.list_engines(args.cache_dir), args.cache_dir or engine_cache.default_cache_dir())
        return
    if verb == "clear":
        folder = args.cache_dir or engine_cache.default_cache_dir()
        print(f"removed {engine_cache.clear_engines(folder)} engine(s) from {folder}")
        return
    from engine.config.presets import load_preset

    preset = load_preset(args.preset, args.overrides)
    if verb == "key":
        spec = engine_spec_for(preset)
        log.info("engine spec: %s", spec.describe())
        if spec.compute_capability == (0, 0):
            log.warning("model.device resolves to %s here: TensorRT engines are built on a CUDA GPU", spec.gpu_name)
        print(spec.compute_hash())
    elif verb == "build":
        print(build_engine(preset, args.cache_dir))
    elif verb == "export-onnx":
        for path in export_onnx(preset, args.out):
            print(path)


def engine_spec_for(preset: Preset, dtype: torch.dtype | None = None, device: torch.device | None = None) -> EngineSpec:
    """The preset's EngineSpec (UNet rows from its CFG layout); without a loaded model, device and dtype are
    resolved as loading would."""
    from engine.backends.engine_cache import engine_spec
    from engine.pipeline.cfg import max_unet_rows
    from engine.pipeline.models import resolve_device

    if dtype is None or device is None:
        device, dtype = resolve_device(preset.model.device, preset.model.dtype)
    return engine_spec(preset.model, preset.stream, max_unet_rows(preset.stream), dtype, device)


def build_engine(preset: Preset, cache_dir: Path | None) -> Path:
    from engine.backends.engine_cache import engine_path
    from engine.backends.tensorrt import build_unet_backend, import_tensorrt
    from engine.pipeline.models import load_models

    import_tensorrt()  # before minutes of model loading
    models = load_models(preset.model)
    spec = engine_spec_for(preset, models.dtype, models.device)
    build_unet_backend(models.unet, spec, cache_dir=cache_dir)
    return engine_path(spec, cache_dir)


def export_onnx(preset: Preset, folder: Path) -> list[Path]:
    """unet.onnx (the stream's UNet rows, dynamic batch and size), vae_encoder.onnx and vae_decoder.onnx."""
    from engine.backends.onnx_export import export_unet, export_vae, unet_size_factor
    from engine.pipeline.cfg import max_unet_rows
    from engine.pipeline.models import load_models

    models = load_models(preset.model)
    width, height = preset.stream.width, preset.stream.height
    step = 8 * unet_size_factor(models.unet)
    if width % step or height % step:
        raise DreamwireError(f"stream size {width}x{height}: export at a multiple of {step} pixels for this UNet")
    rows = max_unet_rows(preset.stream)
    log.info("exporting ONNX (opset 17) to %s: UNet with %d rows, at %dx%d", folder, rows, width, height)
    unet = export_unet(models.unet, folder / "unet.onnx", rows, (height // 8, width // 8))
    return [unet, *export_vae(models.vae, folder, (height, width))]


def _list(engines: list[Any], folder: Path) -> None:
    if not engines:
        print(f"no engines in {folder}")
        return
    for engine in engines:
        spec, key = engine.spec, engine.path.stem.removeprefix("unet-")
        profile = f"{spec.get('min_size')}..{spec.get('max_size')}" if spec else "?"
        print(
            f"{key}  {engine.size_bytes / 2**20:8.1f} MiB  {spec.get('model_id', '?')}  "
            f"rows {spec.get('unet_rows', '?')}  sizes {profile}  {spec.get('dtype', '?')}  "
            f"TensorRT {spec.get('tensorrt_version', '?')}  {spec.get('gpu_name', '?')}  {engine.path}"
        )
