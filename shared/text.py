"""The text rule: which characters free text a caller sends may hold, as pydantic types.

Every free-text field of a request (names, descriptions, prompts, tags, SKUs, reasons, search
filters…) is one of the two types below, and the CSV import applies the same rule to the rows it
turns into products (:func:`forbidden_char`). Refused, because they break what stores and shows
the text, never because they are unusual:

- C0 controls (NUL…), DEL and C1 controls: NUL and friends break store sync, CSV exports and
  terminals. Single-line text also refuses tab, line feed, carriage return and the Unicode line
  and paragraph separators; multi-line text (descriptions, prompts) keeps tab, LF and CR.
- Bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069): they reorder
  what follows them on screen, so ``gpj.exe`` can show as ``exe.jpg``. The marks LRM, RLM and
  ALM (U+200E, U+200F, U+061C) stay allowed: right-to-left text needs them and they reorder
  nothing around them; so do ZWJ and ZWNJ (emoji sequences, Indic and Persian scripts).
- Lone surrogates (U+D800 to U+DFFF): JSON can carry them (``"\\ud800"``) but they are no
  characters; Firestore cannot encode them (a 500) and no UTF-8 consumer can read them.
- The byte order mark U+FEFF: an invisible "zero width no-break space" inside text, a spoofing
  and matching hazard (two names that look equal differ).
- Noncharacters (U+FDD0 to U+FDEF and the last two code points of every plane): Unicode reserves
  them for a program's internal use, never for interchange.
- The deprecated format controls U+206A to U+206F and the interlinear annotation controls
  U+FFF9 to U+FFFB: invisible, and Unicode advises against them in text.

The error names the character as ``U+XXXX`` and its position (1-based, in the text as sent);
the HTTP layer adds the field.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = [
    "BAD_TEXT",
    "MULTI_LINE",
    "SINGLE_LINE",
    "ForbiddenChar",
    "MultiLineText",
    "SingleLineText",
    "forbidden_char",
    "plain_text",
    "visible",
]

BAD_TEXT: Final = "bad_text"

_NONCHARACTERS: Final = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
)
# Forbidden everywhere (a character class body: see the module docstring for why each is here).
_ALWAYS: Final = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 controls but tab, LF, CR; DEL; C1 controls
    "\u202a-\u202e\u2066-\u2069"  # bidi embeddings, overrides, isolates
    "\ud800-\udfff"  # surrogates (in a Python str, always lone)
    "\ufeff"  # byte order mark
    "\u206a-\u206f\ufff9-\ufffb" + _NONCHARACTERS  # deprecated format controls, interlinear annotation
)
_LINE_BREAKS: Final = "\t\n\r\u2028\u2029"
_MULTI_LINE: Final = re.compile(f"[{_ALWAYS}]")
_SINGLE_LINE: Final = re.compile(f"[{_ALWAYS}{_LINE_BREAKS}]")

# Names unicodedata does not know (controls have none).
_NAMES: Final = {
    "\x00": "NULL",
    "\t": "CHARACTER TABULATION",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


@dataclass(frozen=True, slots=True)
class ForbiddenChar:
    """The first character of a text the rule refuses, and where it is (``position`` is 1-based)."""

    char: str
    position: int
    multiline: bool

    @property
    def code_point(self) -> str:
        return f"U+{ord(self.char):04X}"

    @property
    def kind(self) -> str:
        cp = ord(self.char)
        if self.char in _LINE_BREAKS:
            return "a line break or tab, which this single-line field does not take"
        if cp < 0x20 or 0x7F <= cp <= 0x9F:
            return "a control character"
        if 0x202A <= cp <= 0x202E or 0x2066 <= cp <= 0x2069:
            return "a bidirectional override, which can disguise text"
        if 0xD800 <= cp <= 0xDFFF:
            return "a lone surrogate, which is not a character"
        if cp == 0xFEFF:
            return "an invisible byte order mark"
        if 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE:
            return "a Unicode noncharacter"
        return "an invisible format control"

    def describe(self) -> str:
        """For example ``U+202E (RIGHT-TO-LEFT OVERRIDE)``."""
        name = _NAMES.get(self.char) or unicodedata.name(self.char, "")
        return f"{self.code_point} ({name})" if name else self.code_point

    def sentence(self) -> str:
        """For example ``has U+202E (RIGHT-TO-LEFT OVERRIDE) at character 5 (a bidirectional…)``."""
        return f"has {self.describe()} at character {self.position} ({self.kind})"

    def message(self) -> str:
        """For example ``U+202E (RIGHT-TO-LEFT OVERRIDE) at character 5 is not allowed: a bidirectional…``."""
        return f"{self.describe()} at character {self.position} is not allowed: {self.kind}"


def forbidden_char(text: str, *, multiline: bool = False) -> ForbiddenChar | None:
    """The first character of ``text`` the rule refuses, or None when the text is fine."""
    found = (_MULTI_LINE if multiline else _SINGLE_LINE).search(text)
    if found is None:
        return None
    return ForbiddenChar(char=found.group(), position=found.start() + 1, multiline=multiline)


def visible(text: str, *, multiline: bool = True) -> str:
    """``text`` with each refused character replaced by U+FFFD, for echoing what a caller sent."""
    return (_MULTI_LINE if multiline else _SINGLE_LINE).sub("\ufffd", text)


# Tags that end a block of text (a paragraph, a list item, a cell, a line break) and tags whose content
# is no text at all.
_BLOCK_TAGS: Final = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "footer", "h1",
    "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
})  # fmt: skip
_HIDDEN_TAGS: Final = frozenset({"script", "style", "template", "noscript", "head", "title"})
_SENTENCE_ENDS: Final = ".!?:;…"


def plain_text(text: str) -> str:
    """``text`` (store descriptions keep their HTML) as plain single-spaced text for a prompt: tags
    dropped, entities decoded (``&amp;`` -> ``&``), scripts and styles left out, and paragraphs, list
    items and cells joined with "; " unless they end a sentence already. Text without markup is only
    single-spaced."""
    if "<" not in text and "&" not in text:
        return " ".join(text.split())
    from html.parser import HTMLParser  # here: most text has no markup, and every function imports this module

    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.blocks: list[list[str]] = [[]]
            self.hidden = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in _HIDDEN_TAGS:
                self.hidden += 1
            elif tag in _BLOCK_TAGS:
                self.blocks.append([])

        def handle_endtag(self, tag: str) -> None:
            if tag in _HIDDEN_TAGS:
                self.hidden = max(0, self.hidden - 1)
            elif tag in _BLOCK_TAGS:
                self.blocks.append([])

        def handle_data(self, data: str) -> None:
            if not self.hidden:
                self.blocks[-1].append(data)

    parser = _Text()
    parser.feed(text)
    parser.close()
    out = ""
    for block in parser.blocks:
        line = " ".join("".join(block).split())
        if not line:
            continue
        if out:
            out += " " if out[-1] in _SENTENCE_ENDS else "; "
        out += line
    return out


class _TextRule:
    """The check a marker runs; callable, so pydantic takes it as a validator function."""

    def __init__(self, *, multiline: bool) -> None:
        self.multiline = multiline

    def __call__(self, value: Any) -> Any:
        # Before pydantic's own str validation, so positions count in the text as sent (before any
        # stripping); anything but a str is left to that validation to refuse.
        if isinstance(value, str):
            found = forbidden_char(value, multiline=self.multiline)
            if found is not None:
                raise PydanticCustomError(BAD_TEXT, found.message())
        return value


# The markers, for fields with their own constraints. Put the marker last in ``Annotated`` (after
# ``StringConstraints``): it then runs first, and the constraints keep their own error messages.
#     Name = Annotated[str, StringConstraints(min_length=1, max_length=300), SINGLE_LINE]
SINGLE_LINE: Final = BeforeValidator(_TextRule(multiline=False))  # names, SKUs, tags, filters
MULTI_LINE: Final = BeforeValidator(_TextRule(multiline=True))  # descriptions, prompts: tab, LF, CR allowed

SingleLineText = Annotated[str, SINGLE_LINE]
MultiLineText = Annotated[str, MULTI_LINE]
