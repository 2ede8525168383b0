"""POST /predict as an HTML form or a mobile SDK sends it: ``multipart/form-data`` with one image part.

Why python-multipart: it is the maintained streaming parser (Starlette's and
FastAPI's), pure Python, and reads a 4.2 MB form in about 1 ms; the stdlib's
``email`` parser takes about 100 ms for the same body (docs/benchmarks.md, section 2).
Powertools 3.37 parses multipart only inside its own event handler's OpenAPI
validation middleware, which the Chalice route does not use. It is imported on
the first form request, so a plain image upload never pays for it.

The form's image is then checked exactly as a plain upload is
(:func:`chalicelib.predict.validate_image_request`): same types, same limits,
and its bytes are forwarded unchanged, EXIF orientation included.
"""

from __future__ import annotations

from contract import sniff_image

from chalicelib.predict import (
    BAD_MULTIPART,
    CONTENT_TYPES,
    EMPTY_BODY,
    PAYLOAD_TOO_LARGE,
    PredictError,
    media_type,
)

#: The media type each decodable format is checked as when the part declares none of CONTENT_TYPES.
FORMAT_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "heif": "image/heic"}
#: A part's header block longer than this is not a form a browser or SDK sends.
MAX_PART_HEADER_BYTES = 16 * 1024


class _Part:
    """One part as the parser reports it: its headers and its data chunks."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.header_bytes = 0
        self._field = b""
        self._value = b""

    @property
    def disposition(self) -> dict[bytes, bytes]:
        from python_multipart.multipart import parse_options_header

        return parse_options_header(self.headers.get(b"content-disposition", b""))[1]

    @property
    def is_file(self) -> bool:
        """A file input (it has a ``filename``) or an SDK's part with a non-text type; text fields are not."""
        declared = self.headers.get(b"content-type", b"").decode("latin-1")
        return b"filename" in self.disposition or media_type(declared) not in ("", "text/plain")

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _parse(body: bytes, boundary: bytes) -> list[_Part]:
    """Every part of ``body``; a malformed or unfinished form is a 400 ``bad_multipart``."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    parts: list[_Part] = []
    ended = [False]

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        parts[-1]._field += data[start:end]
        parts[-1].header_bytes += end - start

    def on_header_value(data: bytes, start: int, end: int) -> None:
        parts[-1]._value += data[start:end]
        parts[-1].header_bytes += end - start
        if parts[-1].header_bytes > MAX_PART_HEADER_BYTES:
            raise PredictError(BAD_MULTIPART, "A form part's headers are too long")

    def on_header_end() -> None:
        part = parts[-1]
        part.headers[part._field.strip().lower()] = part._value.strip()
        part._field, part._value = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].chunks.append(data[start:end])

    def on_end() -> None:
        ended[0] = True

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_end": on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise PredictError(BAD_MULTIPART, f"The multipart/form-data body cannot be parsed ({exc})") from exc
    if not ended[0]:
        raise PredictError(
            BAD_MULTIPART, "The multipart/form-data body is cut off (it has no closing boundary)"
        )
    return parts


def form_image(body: bytes | None, content_type: str | None, max_bytes: int) -> tuple[bytes, str]:
    """The form's one image and the media type to check it as; any other form is a PredictError.

    The whole body is held to the image limit (it is what travels in the Lambda
    event). Text fields are ignored; an empty file input (a form sent without a
    file chosen) counts as no file. The part's own Content-Type decides when it is
    one the route accepts; otherwise (none, ``application/octet-stream``) its magic
    bytes do, and bytes that are no image keep the declared type, so the plain
    upload's checks answer them (415 or 400).
    """
    from python_multipart.multipart import parse_options_header

    if not body:
        raise PredictError(EMPTY_BODY, "The request body is empty; send a form with one image file")
    if len(body) > max_bytes:
        raise PredictError(
            PAYLOAD_TOO_LARGE,
            f"The form is {len(body)} bytes; the limit is {max_bytes} bytes. Resize the image and retry",
        )
    boundary = parse_options_header(content_type or "")[1].get(b"boundary")
    if not boundary:
        raise PredictError(BAD_MULTIPART, "The multipart/form-data Content-Type has no boundary parameter")
    files = [part for part in _parse(body, boundary) if part.is_file]
    files = [part for part in files if part.chunks and part.data or part.disposition.get(b"filename")]
    if len(files) != 1:
        found = "no file part" if not files else f"{len(files)} file parts"
        raise PredictError(BAD_MULTIPART, f"The form has {found}; send exactly one image file")
    part = files[0]
    data = part.data
    declared = media_type(part.headers.get(b"content-type", b"").decode("latin-1"))
    if declared in CONTENT_TYPES:
        return data, declared
    sniffed = sniff_image(data)
    return data, FORMAT_TYPES[sniffed] if sniffed else declared
