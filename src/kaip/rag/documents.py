"""Reading sources: files on disk into sections of prose or into structured records.

Parsing is pure (bytes in, `Parsed` out); only `expand` and `read_file` touch the file system. A document
becomes sections (a heading path and its text, so that chunks can be split on headings); a CSV or JSONL file
becomes records, one chunk each. Problems in one record (a malformed JSONL line) are reported, the rest kept.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

EXTENSIONS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html",
              ".htm": "html", ".pdf": "pdf", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STRUCTURED = {"csv", "jsonl"}


class UnreadableError(Exception):
    """The file can't be read or parsed at all; the message says why."""


@dataclass(frozen=True)
class Section:
    heading: str  # "Gold plan > Deductible", "" before the first heading
    text: str
    page: int | None = None


@dataclass(frozen=True)
class Record:
    number: int  # 1-based line (JSONL) or row (CSV, after the header)
    fields: dict[str, Any]


@dataclass
class Parsed:
    sections: list[Section] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # per-record problems; the rest of the file is kept


def format_of(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UnreadableError(f"unknown file type {Path(path).suffix or '(none)'!r}: set the source's format")
    return fmt


def expand(pattern: str) -> tuple[list[str], bool]:
    """The files a source names (a file, every file under a directory, or a glob), sorted; and whether the
    pattern is a glob (a glob matching nothing is fine, a missing file is not)."""
    is_glob = glob.has_magic(pattern)
    if is_glob:
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)), True
    if os.path.isdir(pattern):
        found = [os.path.join(root, f) for root, _, files in os.walk(pattern) for f in files
                 if Path(f).suffix.lower() in EXTENSIONS]
        return sorted(found), False
    return [pattern], False


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise UnreadableError(err.strerror or str(err)) from err


def parse(data: bytes, fmt: str) -> Parsed:
    if fmt == "markdown":
        return Parsed(sections=markdown_sections(_decode(data)))
    if fmt == "text":
        return Parsed(sections=[Section("", _decode(data))])
    if fmt == "html":
        return Parsed(sections=markdown_sections(html_to_markdown(_decode(data))))
    if fmt == "pdf":
        return Parsed(sections=pdf_sections(data))
    if fmt == "csv":
        return csv_records(_decode(data))
    if fmt == "jsonl":
        return jsonl_records(_decode(data))
    raise UnreadableError(f"unsupported format {fmt!r}")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UnreadableError(f"not UTF-8 text (byte {err.start})") from err


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown on ATX headings (outside code fences); each section carries its heading path."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(" > ".join(h for _, h in path), body))
        lines.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, match.group(2))]
        else:
            lines.append(line)
    flush()
    if not sections and path:  # headings only
        sections.append(Section(" > ".join(h for _, h in path), path[-1][1]))
    return sections


class _HTMLText(HTMLParser):
    BLOCK = {"p", "div", "li", "tr", "br", "section", "article", "table", "ul", "ol", "dd", "dt", "blockquote"}
    SKIP = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.heading = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading = int(tag[1])
            self.out.append("\n\n" + "#" * self.heading + " ")
        elif tag in self.BLOCK:
            self.out.append("\n")
        elif tag == "td":
            self.out.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading = 0
            self.out.append("\n")
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(re.sub(r"\s+", " ", data) if self.heading else data)


def html_to_markdown(html: str) -> str:
    """Visible text of an HTML page, headings turned into Markdown headings (scripts and styles dropped)."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.out)
    return re.sub(r"\n[ \t]*\n(\s*\n)+", "\n\n", text).strip()


def pdf_sections(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as err:
        raise UnreadableError(f"not a readable PDF: {err}") from err
    return [Section(f"page {i}", text.strip(), page=i) for i, text in enumerate(pages, 1) if text.strip()]


def csv_records(text: str) -> Parsed:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise UnreadableError("the CSV file has no header row")
    out = Parsed()
    for number, row in enumerate(reader, 1):
        if None in row:
            out.problems.append(f"row {number}: more values than header columns")
            continue
        out.records.append(Record(number, {k: v for k, v in row.items() if v not in (None, "")}))
    return out


def jsonl_records(text: str) -> Parsed:
    out = Parsed()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            out.problems.append(f"line {number}: invalid JSON ({err.msg})")
            continue
        if not isinstance(value, dict):
            out.problems.append(f"line {number}: a record must be a JSON object")
            continue
        out.records.append(Record(number, value))
    return out


def render_record(fields: dict[str, Any], text_fields: list[str] | None) -> str:
    """A record as the text that is embedded: `field: value` lines, nested values as compact JSON."""
    names = text_fields if text_fields is not None else list(fields)
    lines = []
    for name in names:
        if name not in fields:
            continue
        value = fields[name]
        if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            shown = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            # Records in a record (claims): plain words embed far better than JSON punctuation.
            shown = "; ".join(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in item.items()) for item in value)
            shown = shown or "none"
        elif isinstance(value, dict | list):
            shown = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
        else:
            shown = str(value)
        lines.append(f"{name.replace('_', ' ')}: {shown}")
    return "\n".join(lines)
