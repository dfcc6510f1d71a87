"""The `processors` section: an ordered list of effects per processor stage (engine/pipeline/stages.py).

Each entry is `{type, enabled, params}`. Its type and the list itself are a rebuild (the stage is laid out again);
`enabled` and every param are live, with registry paths `processors.<stage>.<i>.enabled` and
`processors.<stage>.<i>.<param>` (engine/config/registry.py asks an entry's `item_fields()` for them).

A type's params are a model of their own (below), so each param carries its range, default and doc like any
other parameter. The image stages take image processors, the latent stages latent processors.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from engine.config.fields import Section, live, rebuild

STAGES = ("image_pre", "latent_pre", "latent_post", "image_post")
MAX_PROCESSORS = 4  # per stage: the registry has paths for each index


class FeedbackParams(Section):
    """feedback (image stages): the previous output frame, zoomed, panned and rotated, mixed into the frame."""

    strength: float = live(
        0.5, "feedback: share of the transformed previous output (0: none).", "processor", ge=0, le=1
    )
    zoom: float = live(1.0, "feedback: scale per frame (above 1 zooms in, e.g. 1.02).", "processor", ge=0.5, le=2)
    pan_x: float = live(0.0, "feedback: shift per frame, a fraction of the width.", "processor", ge=-0.5, le=0.5)
    pan_y: float = live(0.0, "feedback: shift per frame, a fraction of the height.", "processor", ge=-0.5, le=0.5)
    rotation: float = live(0.0, "feedback: degrees per frame, counter-clockwise.", "processor", ge=-180, le=180)
    border: Literal["zeros", "border", "reflection"] = live(
        "zeros", "feedback: what fills the edges: zeros (black), border (edge pixels) or reflection.", "processor"
    )


class LatentFeedbackParams(Section):
    """latent_feedback (latent stages): this frame's latent blended with the previous output latent."""

    strength: float = live(
        0.3,
        "latent_feedback: share of the previous output latent (0: none, 1: a frozen picture).",
        "processor",
        ge=0,
        le=1,
    )


ParamsModel = type[Section]  # a type's params (a name of its own: `type` is also a field name below)
IMAGE_TYPES: dict[str, ParamsModel] = {"feedback": FeedbackParams}
LATENT_TYPES: dict[str, ParamsModel] = {"latent_feedback": LatentFeedbackParams}


class ProcessorConfig(Section):
    """One processor of a stage; the stage's kind (image or latent) says which types it takes."""

    TYPES: ClassVar[dict[str, ParamsModel]]
    KIND: ClassVar[str]

    type: str = rebuild(..., "The processor (feedback in image stages, latent_feedback in latent stages).")
    enabled: bool = live(
        True, "false takes the processor out of its stage (no cost); its params are kept.", "processor"
    )
    params: dict[str, Any] = rebuild({}, "The type's params (each one live: processors.<stage>.<i>.<param>).")

    @model_validator(mode="before")
    @classmethod
    def _params_at_top(cls, data: Any) -> Any:
        """`{type: feedback, zoom: 1.02}` is `{type: feedback, params: {zoom: 1.02}}`: the registry path has no
        `params` in it, so `--set processors.image_pre.0.zoom=1.02` writes the same place."""
        if not isinstance(data, dict):
            return data
        loose = {k: v for k, v in data.items() if k not in cls.model_fields}
        if not loose:
            return data
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        return {**{k: v for k, v in data.items() if k in cls.model_fields}, "params": {**params, **loose}}

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in cls.TYPES:
            raise ValueError(f"unknown processor type {value!r} in {cls.KIND} stages (allowed: {', '.join(cls.TYPES)})")
        return value

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        kind = info.data.get("type")
        if kind not in cls.TYPES:
            return value  # the type was refused already
        model = cls.TYPES[kind]
        try:
            return model.model_validate(value).model_dump()  # every param, defaults filled in
        except ValidationError as error:
            raise ValueError(_params_error(kind, model, error)) from None

    @classmethod
    def item_fields(cls) -> dict[str, FieldInfo]:
        """The registry's fields of an entry: enabled and the params of every type this kind takes."""
        fields: dict[str, FieldInfo] = {"enabled": cls.model_fields["enabled"]}
        for model in cls.TYPES.values():
            for name, field in model.model_fields.items():
                if name in fields and fields[name] is not field and fields[name].description != field.description:
                    raise AssertionError(f"param {name!r} means two things in {cls.KIND} processors")
                fields.setdefault(name, field)
        return fields

    def item_value(self, name: str) -> Any:
        """The value of a registry item field (engine/config/paths.py)."""
        if name == "enabled":
            return self.enabled
        if name not in self.params:
            raise KeyError(self._no_param(name))
        return self.params[name]

    def with_item(self, name: str, value: Any) -> tuple[ProcessorConfig, Any]:
        """(a copy with `name` set, validated; the value as coerced): pydantic's ValidationError when refused."""
        copy = self.model_copy()
        if name == "enabled":
            copy.enabled = value
            return copy, copy.enabled
        if name not in self.params:
            raise KeyError(self._no_param(name))
        copy.params = {**self.params, name: value}
        return copy, copy.params[name]

    def _no_param(self, name: str) -> str:
        return f"a {self.type} processor has no param {name!r} (its params: {', '.join(self.params)})"


class ImageProcessorConfig(ProcessorConfig):
    TYPES: ClassVar[dict[str, ParamsModel]] = IMAGE_TYPES
    KIND: ClassVar[str] = "image"


class LatentProcessorConfig(ProcessorConfig):
    TYPES: ClassVar[dict[str, ParamsModel]] = LATENT_TYPES
    KIND: ClassVar[str] = "latent"


def _stage(kind: type[ProcessorConfig], where: str) -> Any:
    return rebuild(
        [],
        f"{where}: an ordered list of {kind.KIND} processors ({', '.join(kind.TYPES)}), at most {MAX_PROCESSORS}; "
        "changing the list or a type rebuilds the pipeline.",
        max_length=MAX_PROCESSORS,
    )


class ProcessorsConfig(Section):
    """The four processor stages of step() (engine/pipeline/stages.py), each an ordered list."""

    image_pre: list[ImageProcessorConfig] = _stage(ImageProcessorConfig, "Before encode (on the input frames)")
    latent_pre: list[LatentProcessorConfig] = _stage(LatentProcessorConfig, "Before the UNet (the new frames' latent)")
    latent_post: list[LatentProcessorConfig] = _stage(LatentProcessorConfig, "After the LCM step (the output latent)")
    image_post: list[ImageProcessorConfig] = _stage(ImageProcessorConfig, "After decode (the output frames)")

    def any(self) -> bool:
        return any(getattr(self, stage) for stage in STAGES)


# The processor settings the flicker bench compares (engine/bench/flicker.py), by label. Each is a `processors`
# section: StreamPipeline.prepared(models, stream, prompt, filter, processors=ProcessorsConfig.model_validate(
# settings)), or a preset with preset.model_copy(update={"processors": ProcessorsConfig.model_validate(settings)}).
BENCH_SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "latent_feedback 0.3": {"latent_pre": [{"type": "latent_feedback", "strength": 0.3}]},
    "latent_feedback 0.6": {"latent_pre": [{"type": "latent_feedback", "strength": 0.6}]},
    "feedback 0.3": {"image_pre": [{"type": "feedback", "strength": 0.3}]},
}


def bench_settings() -> dict[str, ProcessorsConfig]:
    """BENCH_SETTINGS, validated: label → the `processors` section to build a pipeline or an engine with."""
    return {label: ProcessorsConfig.model_validate(settings) for label, settings in BENCH_SETTINGS.items()}


def numeric_params() -> list[tuple[str, int, str]]:
    """(stage, index, param) of every number a processor has: what a timed transition can move."""
    found = []
    for stage in STAGES:
        kind = LatentProcessorConfig if stage.startswith("latent") else ImageProcessorConfig
        numbers = [name for name, field in kind.item_fields().items() if field.annotation in (float, "float")]
        found += [(stage, index, name) for index in range(MAX_PROCESSORS) for name in numbers]
    return found


def item_path(path: str) -> tuple[str, int, str]:
    """'processors.image_pre.0.zoom' → ('image_pre', 0, 'zoom')."""
    _, stage, index, name = path.split(".")
    return stage, int(index), name


def _params_error(kind: str, model: type[BaseModel], error: ValidationError) -> str:
    """A params ValidationError → one line naming each bad param, its value and what is allowed."""
    messages = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            messages.append(f"{kind} has no param {name!r} (its params: {', '.join(model.model_fields)})")
        else:
            messages.append(f"{kind} param {name} {item.get('input')!r} is not accepted: {item['msg']}")
    return "; ".join(messages)


__all__ = [
    "MAX_PROCESSORS",
    "STAGES",
    "FeedbackParams",
    "ImageProcessorConfig",
    "LatentFeedbackParams",
    "LatentProcessorConfig",
    "ProcessorConfig",
    "ProcessorsConfig",
]
