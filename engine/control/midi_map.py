"""The MIDI mapping file (`--midi-map`, `midi.map`): which control (CC, note, pitch bend; channel, number) drives
which address (any registry parameter or command of the control surface), how (continuous, toggle, trigger,
cycle), over which range and curve, with soft takeover and LED feedback. YAML, loaded and checked whole; MIDI
learn (engine/control/midi.py) adds to it and saves it.

    controls:
      - {control: cc, channel: 1, number: 0, address: /prompt/guidance, range: [0.5, 8], curve: exponential}
      - {control: note, number: 41, address: /reset, type: trigger}
      - {control: note, number: 42, address: /prompt/text, type: cycle, values: [a forest, a city at night]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.core.errors import DreamwireError

EXPONENT = 4.0  # curve exponential: (e^(k·x) − 1) / (e^k − 1), k = 4: fine control at the low end


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control: Literal["cc", "note", "pitchbend"]
    channel: int | None = Field(None, ge=1, le=16, description="1-16; none: any channel")
    number: int | None = Field(None, ge=0, le=127, description="CC or note number (none for pitchbend)")
    address: str = Field(min_length=2, pattern=r"^/")
    type: Literal["continuous", "toggle", "trigger", "cycle"] = "continuous"
    range: tuple[float, float] | None = None  # continuous: the value at 0 and at full; none: the parameter's own
    curve: Literal["linear", "exponential"] = "linear"
    values: list[Any] = []  # cycle: the values in turn (none: the enum's choices); trigger: the value to set
    takeover: bool = True  # continuous: soft takeover (pick-up)
    feedback: bool = False  # send the value back as a CC (or note) for the controller's LEDs

    @model_validator(mode="after")
    def _check(self) -> Mapping:
        if self.control != "pitchbend" and self.number is None:
            raise ValueError(f"{self.control} mapping for {self.address} needs a number (0-127)")
        return self

    def key(self) -> tuple[str, int | None, int | None]:
        return (self.control, self.channel, self.number)

    def matches(self, control: str, channel: int, number: int | None) -> bool:
        return (
            self.control == control
            and (self.channel is None or self.channel == channel)
            and (control == "pitchbend" or self.number == number)
        )


class MidiMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    controls: list[Mapping] = []

    def add(self, mapping: Mapping) -> None:
        """A new mapping replaces one on the same control."""
        self.controls = [m for m in self.controls if m.key() != mapping.key()] + [mapping]


def load_map(path: str | Path) -> MidiMap:
    """The mapping file; a missing file is an empty map (learn will create it); a bad one is one DreamwireError."""
    file = Path(path)
    if not file.exists():
        return MidiMap()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return MidiMap.model_validate(data)
    except yaml.YAMLError as error:
        raise DreamwireError(f"MIDI map {file}: not YAML ({str(error).splitlines()[0]})") from None
    except ValidationError as error:
        raise DreamwireError(f"MIDI map {file}: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """pydantic's report → one line naming each bad key (controls.2.curve) and its value."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"{where}: {item.get('input')!r} is not accepted: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def save_map(midi_map: MidiMap, path: str | Path) -> None:
    """Written whole to a temporary file and renamed over the old one: a crash never leaves half a map."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    rows = [m.model_dump(exclude_defaults=True) for m in midi_map.controls]
    for row, mapping in zip(rows, midi_map.controls, strict=True):
        row["control"], row["address"] = mapping.control, mapping.address  # always written, defaults or not
        if row.get("range") is not None:
            row["range"] = list(row["range"])
    temporary = file.with_name(file.name + ".tmp")
    temporary.write_text(yaml.safe_dump({"controls": rows}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    temporary.replace(file)


def curve(kind: str, x: float) -> float:
    """A control's position x in [0, 1] → [0, 1] along the curve."""
    if kind == "exponential":
        return (math.exp(EXPONENT * x) - 1.0) / (math.exp(EXPONENT) - 1.0)
    return x


def uncurve(kind: str, y: float) -> float:
    """curve's inverse: where the control must be for y."""
    if kind == "exponential":
        return math.log1p(y * (math.exp(EXPONENT) - 1.0)) / EXPONENT
    return y
