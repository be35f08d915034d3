"""Shrink an HTML page for a model: drop scripts, styles, SVG, noscript and comments.

The rest of the markup is kept as written (start tags verbatim, entities unexpanded). JSON-LD
scripts (``type="application/ld+json"``) stay, since they hold a page's structured data. The
standard library parser is lenient, so malformed HTML never raises: an element left open
drops everything after it, as a browser would hide it.
"""

from __future__ import annotations

from html.parser import HTMLParser

DROPPED_ELEMENTS = frozenset({"script", "style", "svg", "noscript"})
_JSON_LD = "application/ld+json"


def strip_html(html: str) -> str:
    """``html`` without scripts (JSON-LD kept), styles, SVG, noscript and comments."""
    stripper = _Stripper()
    stripper.feed(html)
    stripper.close()
    return "".join(stripper.out)


def _is_json_ld(attrs: list[tuple[str, str | None]]) -> bool:
    kind = next((value for name, value in attrs if name == "type"), None) or ""
    return kind.split(";", 1)[0].strip().lower() == _JSON_LD


class _Stripper(HTMLParser):
    """Copies markup to ``out`` except inside dropped elements and comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self._skipping: str | None = None  # the dropped element we are inside
        self._depth = 0  # how many of it are open (an <svg> may hold an <svg>)

    def _drops(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        return tag in DROPPED_ELEMENTS and not (tag == "script" and _is_json_ld(attrs))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping is not None:
            if tag == self._skipping:
                self._depth += 1
        elif self._drops(tag, attrs):
            self._skipping, self._depth = tag, 1
        else:
            self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping is None and not self._drops(tag, attrs):
            self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping is None:
            self.out.append(f"</{tag}>")
        elif tag == self._skipping:
            self._depth -= 1
            if self._depth == 0:
                self._skipping = None

    def handle_data(self, data: str) -> None:
        if self._skipping is None:
            self.out.append(data)

    def handle_entityref(self, name: str) -> None:
        if self._skipping is None:
            self.out.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        if self._skipping is None:
            self.out.append(f"&#{name};")

    def handle_decl(self, decl: str) -> None:
        if self._skipping is None:
            self.out.append(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        if self._skipping is None:
            self.out.append(f"<?{data}>")

    def handle_comment(self, data: str) -> None:
        """Comments (and ``<!x>`` bogus ones) are dropped."""

    def unknown_decl(self, data: str) -> None:
        """``<![CDATA[...]]>`` and other marked sections are comments to HTML: dropped."""

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # The stdlib raises AssertionError on ``<![foo[``; HTML reads it as a bogus comment.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i, report)
