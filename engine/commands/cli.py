"""The `dreamwire` command: render, bench, run, engines. User errors are one message and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from engine.core.errors import DreamwireError

log = logging.getLogger("dreamwire")


def _preset_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--preset", default=default, help=f"preset name in presets/ or a YAML path (default {default})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key by dotted path, value parsed as YAML, e.g. stream.t_index_list=[10,25]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamwire", description="Headless real-time diffusion for live visuals.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="process a clip offline, one output per input frame")
    _preset_arguments(render, "default")
    render.add_argument("--input", help="a .npy (N,H,W,3), a folder of PNGs or a video file")
    render.add_argument("--output", required=True, help="a .npy (float32 in [0,1]), a folder or a video file")
    render.add_argument("--frames", type=int, help="txt2img: number of frames when there is no --input")

    run = commands.add_parser("run", help="run the live engine: frames in, frames out, until Ctrl-C")
    _preset_arguments(run, "default")
    run.add_argument("--input", help="source URI (overrides io.input), e.g. pattern:, file:clip.mp4")
    run.add_argument("--output", action="append", help="sink URI (repeatable; overrides io.outputs), e.g. preview:")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--midi-map", help="MIDI mapping file (YAML; overrides midi.map); MIDI learn saves to it")
    run.add_argument(
        "--name",
        default="dreamwire",
        help="instance name (default dreamwire): the default Spout/Syphon/NDI/shm sender names, the preview port "
        "and page title derive from it, so instances with different names run side by side",
    )

    bench = commands.add_parser("bench", help="measure fps, UNet rows and per-frame overhead")
    _preset_arguments(bench, "offline-demo")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--frames", type=int, default=24, help="timed frames per measurement (default 24)")
    bench.add_argument(
        "--only",
        action="append",
        choices=["pipeline", "prompt-changes", "loop", "bridges", "osc", "tempo", "controlnets", "flicker", "styles"],
        help="run only this part (repeatable; default: all but controlnets, flicker and styles, one after another)",
    )
    bench.add_argument("--soak", type=int, metavar="FRAMES", help="also run FRAMES frames and report memory growth")
    bench.add_argument("--reference-python", help="python of a venv with the reference streamdiffusion 0.1.1")
    bench.add_argument(
        "--reference-script",
        help="run_reference.py (default: shared/tools/reference/ in the checkout or the nearest folder above it)",
    )

    from engine.commands.engines import add_engines_parser

    add_engines_parser(commands, _preset_arguments)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # model libraries are chatty about things users cannot act on
        for name in ("diffusers", "transformers", "httpx", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(huggingface_hub|diffusers|transformers)")
        warnings.filterwarnings("ignore", category=FutureWarning)
        from diffusers.utils import logging as diffusers_logging
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, hub_logging, transformers_logging):
            library.set_verbosity_error()


def entry() -> None:
    """The console script. It leaves without the interpreter's teardown, which takes ~2 s once torch and diffusers
    are loaded: by then every command has closed its files and `run` has stopped its threads and flushed its
    sinks, so a Ctrl-C or SIGTERM stop stays well inside 2 s."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if sys.platform == "darwin":  # read once, when torch loads: an op Metal lacks then runs on the CPU (logged once)
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    _configure_logging(args.verbose)
    restore_threads = None
    if args.command in ("run", "bench"):  # live frame times: one core left to the rest (engine/live/threads.py)
        from engine.live.threads import use_live_thread_count

        restore_threads = use_live_thread_count()
    try:
        if args.command == "engines":  # its verbs load a preset only where they need one
            from engine.commands.engines import run_engines

            run_engines(args)
            return 0
        from engine.config.presets import load_preset

        overrides = list(args.overrides)
        if args.command == "run" and args.input:
            overrides.append(f"io.input={json.dumps(args.input)}")
        if args.command == "run" and args.output:
            overrides.append(f"io.outputs={json.dumps(args.output)}")
        if args.command == "run" and args.midi_map:
            overrides.append(f"midi.map={json.dumps(args.midi_map)}")
        preset = load_preset(args.preset, overrides)
        if args.command == "render":
            from engine.commands.render import render

            render(preset, args.input, args.output, frames=args.frames)
        elif args.command == "run":
            from engine.commands.run import run_live
            from engine.core.instance import instance

            run_live(preset, args.duration, instance(args.name))
        elif args.command == "bench":
            from engine.commands.bench import run_bench

            run_bench(preset, args)
        return 0
    except DreamwireError as error:
        log.error("%s", error)
        return 2
    except OSError as error:  # an I/O failure that no command put in its own words: still one line, exit 2
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if restore_threads is not None:  # main() called in a process that goes on (the tests)
            restore_threads()


if __name__ == "__main__":
    entry()
