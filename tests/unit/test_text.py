"""The text rule (shared/text.py): what free text may hold, the types every request model uses, and
a check that every free-text field of every public route carries one of them."""

from __future__ import annotations

import importlib
import types
import typing
from typing import Annotated, Any, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from shared.errors import validation_problem
from shared.http.app import Access, HttpApp
from shared.text import MULTI_LINE, SINGLE_LINE, MultiLineText, SingleLineText, forbidden_char, visible

BIDI_CONTROLS = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
CONTROLS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0))]
LINE_BREAKS = ["\t", "\n", "\r", "\u2028", "\u2029"]
OTHERS = [
    "\ud800",  # lone surrogates, high and low
    "\udfff",
    "\ufeff",  # byte order mark
    "\ufdd0",  # noncharacters
    "\ufffe",
    "\U0010ffff",
    "\u206a",  # deprecated format control
    "\ufff9",  # interlinear annotation
]
# Legitimate in real text: RTL marks, joiners (emoji, Indic and Persian scripts), RTL scripts, emoji.
ALLOWED = [
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "\u200d",  # ZERO WIDTH JOINER
    "\u200c",  # ZERO WIDTH NON-JOINER
    "שמלת קיץ",
    "فستان صيفي",
    "👩\u200d👩\u200d👧",
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # England's flag: tag characters
    "Crème brûlée \u2013 50 % off",
    "\u00a0",
]


class Sample(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10), SINGLE_LINE] = "x"
    body: Annotated[str, StringConstraints(max_length=50), MULTI_LINE] | None = None
    tags: list[SingleLineText] = []
    note: MultiLineText | None = None


def _error(**data: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate(data)
    errors = caught.value.errors(include_url=False, include_input=False)
    assert len(errors) == 1, errors
    return dict(errors[0])


@pytest.mark.parametrize("char", CONTROLS + BIDI_CONTROLS + OTHERS)
def test_refused_everywhere(char: str) -> None:
    for multiline in (False, True):
        found = forbidden_char(f"ab{char}cd", multiline=multiline)
        assert found is not None
        assert (found.char, found.position) == (char, 3)
        assert found.describe().startswith(f"U+{ord(char):04X}")


@pytest.mark.parametrize("char", LINE_BREAKS)
def test_line_breaks_only_in_multi_line_text(char: str) -> None:
    assert forbidden_char(f"a{char}b", multiline=True) is None
    found = forbidden_char(f"a{char}b")
    assert found is not None
    assert "line break or tab" in found.message()


@pytest.mark.parametrize("text", ALLOWED)
def test_legitimate_text_passes(text: str) -> None:
    assert forbidden_char(text) is None
    assert forbidden_char(text, multiline=True) is None


def test_messages_name_the_character_and_where() -> None:
    found = forbidden_char("Dress\u202egpj.exe")
    assert found is not None
    assert found.message() == (
        "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 6 is not allowed: "
        "a bidirectional override, which can disguise text"
    )
    nul = forbidden_char("\x00")
    assert nul is not None and nul.describe() == "U+0000 (NULL)"
    surrogate = forbidden_char("ok\udc00")
    assert surrogate is not None and surrogate.message().startswith("U+DC00 at character 3")
    assert "lone surrogate" in surrogate.kind


def test_the_types_refuse_with_bad_text_and_keep_pydantics_own_errors() -> None:
    error = _error(name="ab\x00")
    assert (error["type"], error["loc"]) == ("bad_text", ("name",))
    assert "U+0000 (NULL) at character 3" in error["msg"]
    # Positions count in the text as sent, before stripping.
    assert "at character 4" in _error(name="   \u202ex")["msg"]
    assert _error(tags=["ok", "b\x1bad"])["loc"] == ("tags", 1)
    assert _error(body="x\ud800")["type"] == "bad_text"
    assert _error(note="\ufeffx")["type"] == "bad_text"
    assert _error(name="a\tb")["type"] == "bad_text"
    # Lengths and types keep their own messages: the rule runs first and lets anything else through.
    assert _error(name="x" * 11)["type"] == "string_too_long"
    assert _error(name="   ")["type"] == "string_too_short"
    assert _error(name=5)["type"] == "string_type"


def test_multi_line_text_keeps_tabs_and_newlines() -> None:
    sample = Sample.model_validate({"body": "Line one\n\tindented\r\nlast", "note": "a\tb", "name": " Zoë "})
    assert sample.body == "Line one\n\tindented\r\nlast"
    assert sample.name == "Zoë"


def test_the_422_names_field_character_and_place() -> None:
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate({"tags": ["fine", "x\u2066y"]})
    problem = validation_problem(caught.value)
    assert problem.code == "validation_failed"
    [entry] = problem.extensions["errors"]
    assert entry["field"] == "tags.1"
    assert entry["type"] == "bad_text"
    assert entry["message"].startswith("U+2066 (LEFT-TO-RIGHT ISOLATE) at character 2")


def test_visible_replaces_only_what_the_rule_refuses() -> None:
    assert visible("a\x00b\u202ec\td\n\u200fe") == "a\ufffdb\ufffdc\td\n\u200fe"
    assert visible("a\tb", multiline=False) == "a\ufffdb"


@given(st.text())
def test_the_rule_is_exactly_the_characters_it_names(text: str) -> None:
    """Any text: refused iff one of its characters is, at the first such character; ``visible`` of
    any text passes the rule and keeps its length."""
    for multiline in (False, True):
        bad = [i for i, ch in enumerate(text) if forbidden_char(ch, multiline=multiline) is not None]
        found = forbidden_char(text, multiline=multiline)
        assert (found.position - 1 if found else None) == (bad[0] if bad else None)
        cleaned = visible(text, multiline=multiline)
        assert forbidden_char(cleaned, multiline=multiline) is None
        assert len(cleaned) == len(text)


@given(st.characters(codec=None))
def test_each_character_by_its_class(char: str) -> None:
    """One character at a time against an independent statement of the rule."""
    cp = ord(char)
    always = (
        (cp < 0x20 and char not in "\t\n\r")
        or 0x7F <= cp <= 0x9F
        or 0x202A <= cp <= 0x202E
        or 0x2066 <= cp <= 0x206F
        or 0xD800 <= cp <= 0xDFFF
        or cp == 0xFEFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFF in (0xFFFE, 0xFFFF)
        or 0xFFF9 <= cp <= 0xFFFB
    )
    assert (forbidden_char(char, multiline=True) is not None) == always
    assert (forbidden_char(char) is not None) == (always or char in LINE_BREAKS)


# -- every public request model follows the rule --------------------------------------------------

FOLDERS = ["catalog", "credits", "generate", "edit", "billing", "stripe_webhook"]
# Strings that are no free text: opaque or checked otherwise, named with the reason.
EXEMPT = {
    "cursor",  # pagination cursors: base64 of our own JSON, decoded and checked (shared/pagination.py)
    "PriceList.updated_by",  # replaced by the admin's id from the token, whatever was sent
    # dict[str, Any]: ColumnMapping (ruled) validates the mapping and refuses unknown keys.
    "ImportCreate.mapping[key]",
    "ImportUpdate.mapping[key]",
}


def _public_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for folder in FOLDERS:
        module = importlib.import_module(f"functions.{folder}.main")
        for app in (v for v in vars(module).values() if isinstance(v, HttpApp)):
            for route in app.routes:
                if route.access in (Access.TASK, Access.SCHEDULER):
                    continue  # internal callers, payloads we wrote
                models += [m for m in (route.body_model, route.query_model) if m is not None]
    return models


def _unruled(annotation: Any, metadata: list[Any], path: str, seen: set[type], found: list[str]) -> None:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        _unruled(inner, [*metadata, *extra], path, seen, found)
    elif annotation is str:
        ruled = any(m is SINGLE_LINE or m is MULTI_LINE or getattr(m, "pattern", None) for m in metadata)
        if not ruled and path not in EXEMPT and path.rsplit(".", 1)[-1] not in EXEMPT:
            found.append(path)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in seen:
            seen.add(annotation)
            for name, field in annotation.model_fields.items():
                _unruled(field.annotation, list(field.metadata), f"{annotation.__name__}.{name}", seen, found)
    elif origin is dict:
        key, value = typing.get_args(annotation)
        _unruled(key, [], f"{path}[key]", seen, found)
        _unruled(value, [], f"{path}[]", seen, found)
    elif origin in (list, tuple, set, frozenset, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            _unruled(arg, [], path, seen, found)
    # Anything else (numbers, enums, literals, URLs, Any) is no free text.


def test_every_free_text_field_of_a_public_request_follows_the_rule() -> None:
    """A str field of a body or query model is either ruled (SINGLE_LINE / MULTI_LINE), a pattern
    (ids, codes), or named in EXEMPT: a new free-text field cannot forget the rule."""
    models = _public_models()
    assert len(models) > 20
    found: list[str] = []
    seen: set[type] = set()
    for model in models:
        _unruled(model, [], model.__name__, seen, found)
    assert found == []


def test_the_check_finds_a_field_without_the_rule() -> None:
    class Inner(BaseModel):
        label: str | None = None

    class Careless(BaseModel):
        ok: SingleLineText
        code: Annotated[str, StringConstraints(pattern=r"^[a-z]+$")]
        free: Annotated[str, StringConstraints(max_length=5)]
        items: list[Inner]
        by_name: dict[SingleLineText, list[str]]

    found: list[str] = []
    _unruled(Careless, [], "Careless", set(), found)
    assert found == ["Careless.free", "Inner.label", "Careless.by_name[]"]
