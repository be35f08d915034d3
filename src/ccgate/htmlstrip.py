"""Shrink an HTML page for a model: drop scripts, styles, SVG, noscript and comments.

The rest of the markup is kept as written: start tags, text and entities verbatim, end tags
as ``</name>``. JSON-LD scripts (``type="application/ld+json"``) stay, since they hold a
page's structured data.

Pages are hostile input, so the page is read by a scanner of its own rather than the standard
library's parser (which, on unfinished tags, comments and marked sections, rescans the rest of
the page once per opener). Each piece ends where the HTML tokenizer ends it, and every search
starts where the last one stopped, so the time grows linearly with the page whatever its
markup. Malformed HTML never raises; as in a browser, a dropped element left open hides the
rest of the page, a comment left open runs to the end, and a tag cut off by the end of the
page is dropped. ``deadline`` bounds the time spent on a page.
"""

from __future__ import annotations

import html as entities
import re
import time

DROPPED_ELEMENTS = frozenset({"script", "style", "svg", "noscript"})
MAX_HTML_CHARS = 4 * 1024 * 1024
# Elements whose content is text up to their own end tag.
_RAW_TEXT_END = {
    name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE) for name in ("script", "style")
}
_JSON_LD = "application/ld+json"
_CHECK_EVERY = 512  # pieces of markup between two looks at the clock

_NAME_END = re.compile(r"[\t\n\f\r />]")
_TAG_STOP = re.compile(r"[>=]")
_SPACES = re.compile(r"[\t\n\f\r ]*+")
_UNQUOTED_END = re.compile(r"[\t\n\f\r >]")
_ATTRIBUTE = re.compile(
    r"""[\t\n\f\r /]*+([^\t\n\f\r />][^\t\n\f\r /=>]*+)"""
    r"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+("[^"]*+"|'[^']*+'|[^\t\n\f\r >]*+))?+"""
)


class StripAborted(Exception):
    """The page is too long to strip, or (``timed_out``) stripping it ran past its deadline."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def strip_html(html: str, *, deadline: float | None = None) -> str:
    """``html`` without scripts (JSON-LD kept), styles, SVG, noscript and comments.

    Raises StripAborted for a page over ``MAX_HTML_CHARS`` characters, or once
    ``time.monotonic()`` passes ``deadline``.
    """
    if len(html) > MAX_HTML_CHARS:
        raise StripAborted(f"the page is longer than {MAX_HTML_CHARS} characters")
    return _Stripper(html, deadline).run()


def _is_json_ld(start_tag: str, name_end: int) -> bool:
    """Whether a ``<script>`` start tag's first ``type`` attribute names JSON-LD."""
    for match in _ATTRIBUTE.finditer(start_tag, name_end, len(start_tag) - 1):
        if match.group(1).lower() == "type":
            value = (match.group(2) or "").strip("\"'")
            return entities.unescape(value).split(";", 1)[0].strip().lower() == _JSON_LD
    return False


class _Stripper:
    """One pass over a page, copying to ``out`` all but dropped elements and comments."""

    def __init__(self, html: str, deadline: float | None) -> None:
        self.html = html
        self.end = len(html)
        self.deadline = deadline
        self.out: list[str] = []
        self._skipping: str | None = None  # the dropped element we are inside
        self._depth = 0  # how many of it are open (an <svg> may hold an <svg>)
        self._next: dict[str, int] = {}  # where each closer was last found (-1: nowhere)

    def run(self) -> str:
        html, pos, pieces = self.html, 0, 0
        while pos < self.end:
            pieces += 1
            if (
                self.deadline is not None
                and pieces % _CHECK_EVERY == 0
                and time.monotonic() > self.deadline
            ):
                raise StripAborted("stripping the page ran past its deadline", timed_out=True)
            lt = html.find("<", pos)
            if lt < 0:
                self._emit(html[pos:])
                break
            if lt > pos:
                self._emit(html[pos:lt])
            pos = self._markup(lt)
        return "".join(self.out)

    def _emit(self, text: str) -> None:
        if self._skipping is None:
            self.out.append(text)

    def _find(self, closer: str, start: int) -> int:
        """The first ``closer`` at or after ``start`` (-1: none). Answers are remembered, so
        a page of many openers and no closer is searched once, not once per opener."""
        known = self._next.get(closer)
        if known is None or 0 <= known < start:
            known = self._next[closer] = self.html.find(closer, start)
        return known

    def _markup(self, lt: int) -> int:
        """Handle the markup starting at ``lt`` (a ``<``); return where the text resumes."""
        html = self.html
        after = html[lt + 1 : lt + 2]
        if after.isascii() and after.isalpha():
            return self._tag(lt, lt + 1, closing=False)
        if after == "/":
            name = html[lt + 2 : lt + 3]
            if name.isascii() and name.isalpha():
                return self._tag(lt, lt + 2, closing=True)
            if name == ">":
                return lt + 3  # "</>" is nothing at all
            return self._up_to(">", lt + 2, keep=None)  # "</3" opens a bogus comment
        if after == "!":
            if html.startswith("<!--", lt):
                return self._comment(lt + 4)
            if html.startswith("<![CDATA[", lt):
                return self._up_to("]]>", lt + 9, keep=None)
            # The doctype is kept; anything else (``<![if]>``, ``<!x>``) is a bogus comment.
            doctype = html[lt + 2 : lt + 9].lower() == "doctype"
            return self._up_to(">", lt + 2, keep=lt if doctype else None)
        if after == "?":
            return self._up_to(">", lt + 2, keep=lt)  # processing instruction, kept
        self._emit("<")
        return lt + 1

    def _up_to(self, closer: str, start: int, *, keep: int | None) -> int:
        """Skip to just past ``closer`` (the page's end without one), copying the markup
        from ``keep`` when given."""
        found = self._find(closer, start)
        if found < 0:
            return self.end
        stop = found + len(closer)
        if keep is not None:
            self._emit(self.html[keep:stop])
        return stop

    def _comment(self, start: int) -> int:
        html = self.html
        if html.startswith(">", start):
            return start + 1  # "<!-->"
        if html.startswith("->", start):
            return start + 2  # "<!--->"
        ends = [
            (found, len(closer))
            for closer in ("-->", "--!>")
            if (found := self._find(closer, start)) >= 0
        ]
        if not ends:
            return self.end
        found, size = min(ends)
        return found + size

    def _tag(self, lt: int, name_start: int, *, closing: bool) -> int:
        """A start or end tag: its name, then attributes up to the ``>`` that ends it."""
        name_stop = _NAME_END.search(self.html, name_start)
        if name_stop is None:
            return self.end  # the page ends inside the tag name: drop it
        end = self._tag_end(name_stop.start())
        if end < 0:
            return self.end  # the page ends inside the tag: drop it
        name = self.html[name_start : name_stop.start()].lower()
        if closing:
            self._end_tag(name)
            return end
        text = self.html[lt:end]
        self_closing = text.endswith("/>")
        self._start_tag(name, text, name_stop.start() - lt, self_closing)
        if name in _RAW_TEXT_END and not self_closing:
            return self._raw_text(name, end)
        return end

    def _tag_end(self, pos: int) -> int:
        """Just past the ``>`` that ends a tag whose attributes start at ``pos``; -1 when the
        page ends first. A ``>`` inside a quoted attribute value does not end it."""
        html = self.html
        while True:
            stop = _TAG_STOP.search(html, pos)
            if stop is None:
                return -1
            if stop.group() == ">":
                return stop.end()
            spaces = _SPACES.match(html, stop.end())
            assert spaces is not None  # the pattern matches the empty string too
            pos = spaces.end()
            quote = html[pos : pos + 1]
            if quote in ("'", '"'):
                close = html.find(quote, pos + 1)
                if close < 0:
                    return -1
                pos = close + 1
            else:
                value_end = _UNQUOTED_END.search(html, pos)
                if value_end is None:
                    return -1
                pos = value_end.start()

    def _start_tag(self, name: str, text: str, name_end: int, self_closing: bool) -> None:
        if self._skipping is not None:
            if name == self._skipping and not self_closing:
                self._depth += 1
        elif name in DROPPED_ELEMENTS and not (name == "script" and _is_json_ld(text, name_end)):
            if not self_closing:
                self._skipping, self._depth = name, 1
        else:
            self.out.append(text)

    def _end_tag(self, name: str) -> None:
        if self._skipping is None:
            self.out.append(f"</{name}>")
        elif name == self._skipping:
            self._depth -= 1
            if self._depth == 0:
                self._skipping = None

    def _raw_text(self, name: str, start: int) -> int:
        """The content of a script or style: text up to its own end tag (kept only for a
        kept element); that end tag is then read as markup."""
        found = _RAW_TEXT_END[name].search(self.html, start)
        stop = found.start() if found else self.end
        self._emit(self.html[start:stop])
        return stop
