"""`dreamwire bench --reference-python`: the reference StreamDiffusion (run_reference.py) and ours
(engine/bench/clip_run.py, the same command line) over the same clip, model and settings, side by side.

Both are checked before anything is measured (`check_reference`): a wrong path must cost a second, not the
minutes of a bench run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bridges.pattern import pattern_image
from engine.config.schema import Preset
from engine.core.errors import DreamwireError

SCRIPT = Path("shared") / "tools" / "reference" / "run_reference.py"
CHECKOUT = Path(__file__).resolve().parents[2]


def reference_script(explicit: str | None) -> Path:
    """run_reference.py: --reference-script, else $DREAMWIRE_REFERENCE_SCRIPT, else shared/tools/reference/ in the
    checkout or the nearest folder above it (a clone has ../shared beside it; a worktree may sit deeper)."""
    if explicit or os.environ.get("DREAMWIRE_REFERENCE_SCRIPT"):
        path = Path(explicit or os.environ["DREAMWIRE_REFERENCE_SCRIPT"]).expanduser()
        if not path.is_file():
            source = "--reference-script" if explicit else "DREAMWIRE_REFERENCE_SCRIPT"
            raise DreamwireError(f"{source} {str(path)!r}: no such file")
        return path
    tried = [folder / SCRIPT for folder in (CHECKOUT, *CHECKOUT.parents)]
    for path in tried:
        if path.is_file():
            return path
    raise DreamwireError(
        f"run_reference.py not found in shared/tools/reference/ of {CHECKOUT} or any folder above it; "
        "pass --reference-script"
    )


def check_reference(python: str, script: str | None) -> Path:
    """The reference script's path, once it is found and `python` runs; a one-line DreamwireError otherwise."""
    path = reference_script(script)
    try:
        done = subprocess.run([python, "-c", "import sys"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DreamwireError(f"--reference-python {python!r} does not run: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DreamwireError(f"--reference-python {python!r} does not run: exit {done.returncode}, {last}")
    return path


def reference_side_by_side(
    preset: Preset, python: str, script: Path, frames: int, repeats: int = 5, clip_frames: int = 97
) -> dict[str, Any]:
    """Ours and the reference, each in a fresh process, taking turns `repeats` times so that a shared machine's slow
    spells hit both; the median fps of each (over the clip after its first frame, as the reference script times
    itself) and the largest output difference. The clip has max(frames + 1, clip_frames) frames."""
    from engine.pipeline.tiny import TINY_MODEL_ID, TINY_VAE_ID, save_tiny_pipeline, save_tiny_taesd

    stream, prompt = preset.stream, preset.prompt
    if stream.frame_buffer_size != 1 or stream.mode != "img2img":
        raise DreamwireError("the reference comparison needs frame_buffer_size 1 and img2img")
    with tempfile.TemporaryDirectory(prefix="dreamwire-ref-") as folder:
        work = Path(folder)
        model_dir = save_tiny_pipeline(work / "model") if preset.model.id == TINY_MODEL_ID else Path(preset.model.id)
        settings: dict[str, Any] = {
            "t_index_list": stream.t_index_list,
            "cfg_type": stream.cfg_type,
            "prompt": prompt.text,
            "negative_prompt": prompt.negative,
            "guidance_scale": prompt.guidance,
            "delta": prompt.delta,
            "seed": prompt.seed,
            "num_inference_steps": stream.num_inference_steps,
            "do_add_noise": stream.do_add_noise,
            "use_denoising_batch": stream.use_denoising_batch,
        }
        if preset.model.vae is not None:
            vae = save_tiny_taesd(work / "vae") if preset.model.vae == TINY_VAE_ID else Path(preset.model.vae)
            settings["vae_dir"] = str(vae)
        count = max(frames + 1, clip_frames)
        clip = np.stack([pattern_image(i, stream.width, stream.height) for i in range(count)])
        np.save(work / "clip.npy", clip)
        arguments = [str(model_dir), str(work / "clip.npy")]
        command = [python, str(script), *arguments, str(work / "ref.npy"), json.dumps(settings)]
        ours = [sys.executable, "-m", "engine.bench.clip_run", *arguments, str(work / "ours.npy"), json.dumps(settings)]
        reference_runs, our_runs = [], []
        for _ in range(repeats):  # both in fresh processes, taking turns
            reference_runs.append(_clip_fps(command, "the reference run"))
            our_runs.append(_clip_fps(ours, "our run"))
        difference = float(np.abs(np.load(work / "ours.npy") - np.load(work / "ref.npy")).max())
    reference_fps, ours_fps = statistics.median(reference_runs), statistics.median(our_runs)
    return {
        "reference_fps": reference_fps,
        "ours_fps": ours_fps,
        "ratio": ours_fps / reference_fps,
        "reference_runs_fps": reference_runs,
        "our_runs_fps": our_runs,
        "max_abs_diff": difference,
        "frames": count,
    }


def _clip_fps(command: list[str], what: str) -> float:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DreamwireError(f"{what} failed (exit {done.returncode}): {last}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["fps"])
