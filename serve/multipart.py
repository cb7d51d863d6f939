"""``multipart/form-data`` bodies of ``POST /v1/frames`` parsed in one pass, off the event loop (the
ingress runs :func:`frame_parts` in a thread): python-multipart's parser, the parts' own headers kept."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header


@dataclass
class Part:
    name: str
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    is_file: bool = False

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def frame_parts(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The file parts of a form, in order, named by their field name. Raises ValueError on a malformed
    body or more than ``max_parts`` parts."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ValueError("multipart/form-data needs a boundary")
    parts: list[Part] = []
    field_name: list[bytes] = []
    value: list[bytes] = []
    ended: list[bool] = []

    def part_begin() -> None:
        parts.append(Part(name=""))
        if len(parts) > max_parts:
            raise ValueError("stop")  # ends the parse; reported below

    def header_end() -> None:
        name, text = b"".join(field_name).decode("latin-1").lower(), b"".join(value).decode("latin-1")
        field_name.clear()
        value.clear()
        part = parts[-1]
        part.headers[name] = text
        if name == "content-disposition":
            _, options = parse_options_header(text)
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            part.is_file = b"filename" in options

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part_begin,
            "on_header_field": lambda d, s, e: field_name.append(d[s:e]),
            "on_header_value": lambda d, s, e: value.append(d[s:e]),
            "on_header_end": header_end,
            "on_part_data": lambda d, s, e: parts[-1].chunks.append(d[s:e]),
            "on_end": lambda: ended.append(True),
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # the parser's own errors (MultipartParseError and kin), or too many parts
        if len(parts) > max_parts:
            raise ValueError(f"more than {max_parts} parts (limits.max_batch_frames)") from None
        raise ValueError(f"malformed multipart body: {exc}") from None
    if not ended:
        raise ValueError("truncated multipart body: no closing boundary")
    return [p for p in parts if p.is_file]
