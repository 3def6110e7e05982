"""Just enough YAML to read deploy/'s files when PyYAML is not installed.

The deploy files are written in a small, plain subset on purpose: block mappings and sequences,
plain / quoted scalars, JSON-style flow sequences and ``>-`` / ``|`` block scalars; no anchors,
no flow mappings. When PyYAML is importable the tests check that both parsers agree, so this
subset cannot drift from real YAML unnoticed.
"""

from __future__ import annotations

import json
import re
from typing import Any

_INT = re.compile(r"^[-+]?\d+$")


class MiniYamlError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    out: list[str] = []
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(c)
    return "".join(out).rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text == "" or text in ("~", "null"):
        return None
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'"):
            raise MiniYamlError(f"unterminated string: {text}")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        return json.loads(text)
    if text.startswith(("{", "&", "*", "!")):
        raise MiniYamlError(f"unsupported YAML construct: {text}")
    if text in ("true", "false"):
        return text == "true"
    if _INT.match(text):
        return int(text)
    return text


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str, str]] = []  # (indent, content, raw line)
        for raw in text.splitlines():
            content = _strip_comment(raw)
            if content.strip() == "":
                self.lines.append((-1, "", raw))
                continue
            self.lines.append((len(content) - len(content.lstrip(" ")), content.strip(), raw))
        self.i = 0

    def _skip_blank(self) -> None:
        while self.i < len(self.lines) and self.lines[self.i][0] < 0:
            self.i += 1

    def parse_block(self, indent: int) -> Any:
        self._skip_blank()
        if self.i >= len(self.lines):
            return None
        ind, content, _ = self.lines[self.i]
        if ind < indent:
            return None
        if content.startswith("- ") or content == "-":
            return self._sequence(ind)
        return self._mapping(ind)

    def _sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while True:
            self._skip_blank()
            if self.i >= len(self.lines):
                return out
            ind, content, raw = self.lines[self.i]
            if ind != indent or not (content.startswith("- ") or content == "-"):
                if ind > indent:
                    raise MiniYamlError(f"bad indentation: {raw!r}")
                return out
            rest = content[2:].strip() if content != "-" else ""
            if rest == "":
                self.i += 1
                out.append(self.parse_block(indent + 1))
            elif self._is_key(rest):
                # "- key: value" opens a mapping whose keys sit two columns further in.
                self.lines[self.i] = (indent + 2, rest, raw)
                out.append(self._mapping(indent + 2))
            else:
                self.i += 1
                out.append(_scalar(rest))

    @staticmethod
    def _is_key(text: str) -> bool:
        if text.startswith(("'", '"', "[")):
            return False
        m = re.match(r"^[^\s:][^:]*:(\s|$)", text)
        return m is not None

    def _mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            self._skip_blank()
            if self.i >= len(self.lines):
                return out
            ind, content, raw = self.lines[self.i]
            if ind != indent:
                if ind > indent:
                    raise MiniYamlError(f"bad indentation: {raw!r}")
                return out
            if content.startswith("- "):
                return out
            if not self._is_key(content):
                raise MiniYamlError(f"expected 'key: value': {raw!r}")
            key, _, value = content.partition(":")
            key = key.strip()
            value = value.strip()
            if key in out:
                raise MiniYamlError(f"duplicate key {key!r}")
            self.i += 1
            if value in (">-", ">", "|", "|-"):
                out[key] = self._block_scalar(indent, value)
            elif value == "":
                self._skip_blank()
                nxt = self.lines[self.i] if self.i < len(self.lines) else (-1, "", "")
                if nxt[0] > indent or (nxt[0] == indent and nxt[1].startswith("- ")):
                    out[key] = self.parse_block(nxt[0])
                else:
                    out[key] = None
            else:
                out[key] = _scalar(value)

    def _block_scalar(self, indent: int, style: str) -> str:
        body: list[str] = []
        block_indent: int | None = None
        while self.i < len(self.lines):
            ind, _, raw = self.lines[self.i]
            if ind >= 0 and ind <= indent:
                break
            if ind >= 0 and block_indent is None:
                block_indent = ind
            body.append(raw[block_indent:] if ind >= 0 and block_indent is not None else "")
            self.i += 1
        while body and body[-1] == "":
            body.pop()
        folded = " ".join(line.strip() for line in body if line.strip())
        text = folded if style.startswith(">") else "\n".join(body)
        return text if style.endswith("-") else text + "\n"


def loads(text: str) -> Any:
    """Parse the subset; raises ``MiniYamlError`` on anything outside it."""
    parser = _Parser(text)
    result = parser.parse_block(0)
    parser._skip_blank()
    if parser.i != len(parser.lines):
        raise MiniYamlError(f"unparsed content at line {parser.i + 1}: {parser.lines[parser.i][2]!r}")
    return result


def load_file(path: Any) -> Any:
    """PyYAML's ``safe_load`` when installed (checked against this parser), else this parser."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    mine = loads(text)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return mine
    theirs = yaml.safe_load(text)
    if theirs != mine:
        raise MiniYamlError(f"{path}: mini_yaml and PyYAML disagree")
    return theirs
