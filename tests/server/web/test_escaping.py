"""Property test: whatever an agent puts in an event (type-valid JSON of any strings), the
timeline rows the UI renders contain only the template's own elements and attributes, and
every agent string comes back as text, exactly."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.audit.events import canonical_json
from corral.server.web.pages import env
from corral.server.web.timeline import entry

ALLOWED = {"li": {"class", "id"}, "details": set(), "summary": set(), "span": {"class"},
           "time": set(), "dl": set(), "dt": set(), "dd": set(), "code": set()}
# Strings an attacker would try, mixed with arbitrary text.
NASTY = st.sampled_from(["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"',
                         "'", "&", "&lt;", "</li><li>", "{{ 7*7 }}", "{% raw %}", "\u2028",
                         "javascript:", "<svg/onload=alert(1)>", "]]>", "<!--", "\x00"])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=12)), max_size=6).map("".join)


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.bad: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        allowed = ALLOWED.get(tag)
        if allowed is None or any(name not in allowed for name, _ in attrs):
            self.bad.append(f"<{tag} {attrs}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.bad.append(f"<!--{data}-->")


@settings(max_examples=300, deadline=None)
@given(type_=st.sampled_from(["proxy.deny", "proxy.allow", "exec.start", "tool.call",
                              "dns.query", "approval.request", "sandbox.limit", "x.other"]),
       fields=st.dictionaries(st.sampled_from(["host", "path", "method", "rule", "argv", "tool",
                                               "name", "status", "limit", "reason"]),
                              TEXT, max_size=6),
       argv=st.lists(TEXT, max_size=3))
def test_timeline_rows_are_inert(type_: str, fields: dict[str, str], argv: list[str]) -> None:
    data: dict[str, object] = dict(fields)
    if "argv" in data:
        data["argv"] = argv
    raw = canonical_json(data)
    rendered = env.get_template("ui/_events.html").render(entries=[entry(7, 1, type_, raw)])
    parser = Elements()
    parser.feed(rendered)
    parser.close()
    assert parser.bad == [], (rendered, parser.bad)
    text = "".join(parser.text)
    for key, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        assert shown in text or html.unescape(shown) in text, (key, shown)
