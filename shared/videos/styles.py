"""The nine e-commerce video styles (``styles.json`` beside this module): presets with a prompt template
and defaults (length, aspect, sound, whether a script is voiced over), and how a template is filled in."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationFailed

STYLES_PATH = Path(__file__).with_name("styles.json")
AudioMode = Literal["none", "native", "voiceover"]
PLACEHOLDERS = ("{product}", "{selling_points}", "{selling_points_list}")


class VideoStyle(BaseModel):
    """One preset, as stored and as ``GET /videos/styles`` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    description: str
    prompt: str  # template: {product}, {selling_points} (a sentence), {selling_points_list} (a list)
    shots: list[str] = Field(min_length=1)  # what each clip of a longer video shows, in turn
    negative_prompt: str | None = None
    duration_seconds: int = Field(ge=4, le=30)
    aspect_ratio: Literal["16:9", "9:16"]
    audio: AudioMode
    uses_script: bool  # voiced over from a script written (and reviewed) before the paid generation
    script_tone: str


@lru_cache(maxsize=1)
def styles() -> dict[str, VideoStyle]:
    raw: dict[str, dict[str, object]] = json.loads(STYLES_PATH.read_text())
    return {key: VideoStyle.model_validate({"id": key, **value}) for key, value in raw.items()}


def get_style(style_id: str, field: str = "style") -> VideoStyle:
    """The style, or a 422 naming the ones there are."""
    found = styles().get(style_id)
    if found is None:
        message = f"Unknown video style {style_id!r}; choose one of {', '.join(sorted(styles()))}"
        raise ValidationFailed(message, errors=[{"field": field, "in": "body", "message": message, "type": "enum"}])
    return found


def selling_points_sentence(points: list[str]) -> str:
    """``["dishwasher safe", "holds 350 ml"]`` -> "Show that it is dishwasher safe and holds 350 ml."."""
    parts = [p if _verb_first(p) else f"is {p}" for p in (p.strip().rstrip(".") for p in points) if p]
    if not parts:
        return ""
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Show that it {joined}."


_VERBS = frozenset({"is", "has", "holds", "keeps", "fits", "comes", "works", "lasts", "makes", "can", "does", "was"})


def _verb_first(point: str) -> bool:
    return point.split(" ", 1)[0].lower() in _VERBS


def render(style: VideoStyle, product: str, selling_points: list[str]) -> str:
    """The style's prompt about ``product`` (already described, e.g. 'the product "Mug" (kitchen)'); the
    selling points go where the template says, or after it."""
    listed = ", ".join(p.strip().rstrip(".") for p in selling_points if p.strip()) or "its quality and design"
    template = style.prompt
    if "{selling_points" not in template:
        template += " {selling_points}"
    text = (
        template.replace("{selling_points_list}", listed)
        .replace("{selling_points}", selling_points_sentence(selling_points))
        .replace("{product}", product)
    )
    return " ".join(text.split())


def shot(style: VideoStyle, index: int, count: int, product: str) -> str:
    """What clip ``index`` of ``count`` shows ("" for a single clip)."""
    if count <= 1:
        return ""
    hint = style.shots[min(index * len(style.shots) // count, len(style.shots) - 1)].replace("{product}", product)
    return f"This is shot {index + 1} of {count} of one continuous video: {hint}."
