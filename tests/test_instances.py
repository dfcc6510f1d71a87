"""Instance names (`dreamwire run --name`): names and ports derive from one pure function, two instances with
different names run side by side without colliding, and platform modules load only when a bridge needs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from bridges import shm
from bridges.uri import open_sink, open_source
from engine.core.errors import DreamwireError
from engine.core.instance import DEFAULT_INSTANCE, NAMED_PORT_BASE, instance

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PLATFORM_MODULES = ("SpoutGL", "syphon", "cyndilib", "cv2", "Metal")


def test_the_default_instance_keeps_todays_ports():
    default = instance()
    assert default == DEFAULT_INSTANCE
    assert (default.name, default.preview_port, default.osc_port, default.osc_feedback_port) == (
        "dreamwire",
        8765,
        9000,
        9001,
    )
    assert (default.output_name, default.input_name) == ("dreamwire", "dreamwire-in")


def test_named_instances_get_their_own_port_block_below_the_ephemeral_range():
    names = [f"stage-{k}" for k in range(40)]
    blocks = {instance(name).preview_port for name in names}
    for name in names:
        one = instance(name)
        assert NAMED_PORT_BASE <= one.preview_port < 32768
        assert (one.osc_port, one.osc_feedback_port) == (one.preview_port + 1, one.preview_port + 2)
        assert instance(name) == one  # a pure function of the name
    assert len(blocks) >= 38  # crc32 spreads names over 1000 blocks: collisions are rare


@pytest.mark.parametrize("name", ["", "-x", "has space", "a/b", "x" * 25, "ünïcode"])
def test_a_bad_instance_name_is_one_line(name):
    with pytest.raises(DreamwireError, match=r"instance name .* is invalid"):
        instance(name)


def test_uris_without_a_name_or_port_take_the_instances():
    left = instance("left")
    preview = open_sink("preview:", left)
    assert preview.port == left.preview_port and b"<title>left preview</title>" in preview.page
    assert open_sink("preview:?port=0", left).port == 0
    assert open_sink("shm:", left).name == "shm:left"
    assert open_source("shm:", left).name == "shm:left-in"  # never the instance's own output


def test_a_bad_name_on_the_command_line_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "engine.commands.cli", "run", "--preset", "offline-demo", "--name", "a b"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "instance name 'a b' is invalid" in done.stderr


def test_importing_engine_and_bridges_loads_no_platform_module():
    code = (
        "import sys, engine, bridges, bridges.uri, bridges.pixels, bridges.shm, bridges.ndi, bridges.camera, "
        "bridges.spout, bridges.syphon, engine.live.loop, engine.commands.cli, engine.commands.run\n"
        f"print(sorted(m for m in {PLATFORM_MODULES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _two_free_names() -> tuple[str, str]:
    """Two fresh instance names whose derived preview ports differ and are free right now."""
    names: list[str] = []
    while len(names) < 2:
        name = f"t{uuid.uuid4().hex[:8]}"
        port = instance(name).preview_port
        if _free(port) and all(instance(n).preview_port != port for n in names):
            names.append(name)
    return names[0], names[1]


def test_two_instances_run_side_by_side_and_collide_on_nothing():
    names = _two_free_names()
    command = [sys.executable, "-m", "engine.commands.cli", "run", "--preset", "offline-demo"]
    command += ["--set", "stream.width=64", "--set", "stream.height=64", "--input", "pattern:?width=64&height=64"]
    command += ["--output", "preview:", "--output", "shm:"]
    processes = [
        subprocess.Popen([*command, "--name", name], env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for name in names
    ]
    try:
        for name in names:  # each instance serves its own page on its own port, and writes its own segment
            port, deadline = instance(name).preview_port, time.perf_counter() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                        assert f"<title>{name} preview</title>" in reply.read().decode()
                    reader = shm.ShmReader(name)
                    break
                except (OSError, DreamwireError):
                    assert time.perf_counter() < deadline, f"instance {name} did not come up"
                    assert all(p.poll() is None for p in processes), "an instance exited"
                    time.sleep(0.2)
            try:
                deadline = time.perf_counter() + 60
                while reader.read_new(0) is None:
                    assert time.perf_counter() < deadline, f"no frame in segment {name}"
                    time.sleep(0.05)
            finally:
                reader.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        logs = [process.communicate(timeout=60)[1] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    for name in names:  # a clean exit removes each instance's segment
        with pytest.raises(DreamwireError, match="no segment named"):
            shm.attach(name)


def test_a_bridge_that_cannot_run_here_ends_run_at_start_up_with_exit_2(monkeypatch, caplog):
    from engine.commands import cli

    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr("engine.live.loop.LiveEngine.__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main(["run", "--preset", "offline-demo", "--output", "preview:", "--output", "spout:"]) == 2
    assert "spout: needs Windows (this is Linux) and the 'spout' extra: pip install 'dreamwire[spout]'" in caplog.text


def test_osc_ports_follow_the_instance_name_unless_the_preset_names_them():
    from engine.commands.run import with_instance_osc_ports
    from engine.config.presets import load_preset
    from engine.core.instance import instance

    deck = instance("deck-a")
    preset = with_instance_osc_ports(load_preset("offline-demo", []), deck)
    assert (preset.osc.port, preset.osc.feedback) == (deck.osc_port, f"127.0.0.1:{deck.osc_feedback_port}")
    named = with_instance_osc_ports(load_preset("offline-demo", ["osc.port=9100"]), deck)
    assert (named.osc.port, named.osc.feedback) == (9100, f"127.0.0.1:{deck.osc_feedback_port}")
    default = with_instance_osc_ports(load_preset("offline-demo", []), instance())
    assert (default.osc.port, default.osc.feedback) == (9000, "127.0.0.1:9001")
