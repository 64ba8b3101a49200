"""One uploaded image: streamed to a private folder under a size cap, recognised, preprocessed by the batch code.

An upload never touches the disk outside a folder made for its request by :func:`tempfile.mkdtemp`
(mode 0700, so other local users cannot read it) and removed when the request ends, whatever the
outcome. The body is read chunk by chunk and refused with 413 as soon as it passes the cap, so a
client cannot fill the disk; multipart bodies are parsed from that file with python-multipart's
streaming parser, not with Starlette's form reader (which spools to the system temp folder).

Preprocessing is exactly the batch pipeline's: a DICOM goes through
:func:`mammoclip.data.preprocess.process_image` with the model's :class:`~mammoclip.data.model_input.ModelPreprocess`
options and the server's :class:`~mammoclip.imaging.dicom.DecodeLimits` (so the declared
rows x columns x frames is checked on the header before decoding); a PNG/JPEG goes through
:meth:`ModelPreprocess.pixels`, after its declared width x height is checked against the same budget.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.data.model_input import ModelPreprocess
from mammoclip.data.preprocess import process_image
from mammoclip.errors import DataError, ImageError
from mammoclip.imaging import failures as fc
from mammoclip.imaging.breast import TransformRecord
from mammoclip.imaging.dicom import DecodeLimits

#: Body kinds by their first bytes: name -> (offset, magic, file suffix the batch code routes on).
MAGIC: dict[str, tuple[int, bytes, str]] = {
    "dicom": (128, b"DICM", ".dcm"),
    "png": (0, b"\x89PNG\r\n\x1a\n", ".png"),
    "jpeg": (0, b"\xff\xd8\xff", ".jpg"),
}
#: Content types accepted for a raw body (a multipart part may say any of these too).
ACCEPTED_TYPES: frozenset[str] = frozenset({"application/dicom", "image/png", "image/jpeg", "application/octet-stream"})
#: Largest form field (text, task list) of a multipart body, in bytes.
MAX_FIELD_BYTES: int = 64 << 10
#: Upload read size.
CHUNK: int = 1 << 16

#: Error codes of the request itself (the image's own codes are those of :mod:`mammoclip.imaging.failures`).
UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"  # the request body is over the server's upload limit
UNSUPPORTED_MEDIA = "UNSUPPORTED_MEDIA"  # not a DICOM, PNG or JPEG (or a content type that is none of them)


class RequestError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class Upload:
    """A request's private folder, the stored image and the multipart form fields."""

    folder: Path
    path: Path | None = None
    kind: str | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None  # the client's file name: may identify a patient, never logged by default
    nbytes: int = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def private_folder() -> Path:
    """A fresh folder only this user can read (``mkdtemp`` creates it 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="mammoclip-serve-"))
    os.chmod(folder, 0o700)
    return folder


def sniff(path: Path) -> str | None:
    """The body kind from its first bytes (see :data:`MAGIC`), or None."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    return next((k for k, (off, magic, _) in MAGIC.items() if head[off:off + len(magic)] == magic), None)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


async def receive_upload(stream: AsyncIterator[bytes], content_type: str, content_length: str | None,
                         max_bytes: int, *, allow_fields_only: bool = False) -> Upload:
    """Store a request body (raw image or ``multipart/form-data`` with a ``file`` part) in a private folder.

    Raises:
        RequestError: 413 over ``max_bytes`` (from Content-Length, or while streaming), 415 for a
            content type other than :data:`ACCEPTED_TYPES` / multipart, 422 for an empty or
            unrecognised body.
    """
    media = _media_type(content_type or "application/octet-stream")
    if media != "multipart/form-data" and media not in ACCEPTED_TYPES:
        raise RequestError(415, UNSUPPORTED_MEDIA, f"content type {media!r} is not accepted; send "
                           f"{sorted(ACCEPTED_TYPES)} or multipart/form-data with a 'file' part")
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise RequestError(413, UPLOAD_TOO_LARGE, f"upload of {int(content_length)} bytes is over the "
                           f"{max_bytes}-byte limit")
    upload = Upload(private_folder())
    try:
        body = upload.folder / "body"
        with open(body, "wb") as fp:
            async for chunk in stream:
                upload.nbytes += len(chunk)
                if upload.nbytes > max_bytes:
                    raise RequestError(413, UPLOAD_TOO_LARGE, f"upload is over the {max_bytes}-byte limit")
                fp.write(chunk)
        if media == "multipart/form-data":
            body = _parse_multipart(body, content_type, upload)
            if upload.filename is None:  # fields only (e.g. texts to embed)
                if not allow_fields_only:
                    raise RequestError(422, UNSUPPORTED_MEDIA, "multipart body without a 'file' part")
                body.unlink(missing_ok=True)
                return upload
        if body.stat().st_size == 0:
            raise RequestError(422, UNSUPPORTED_MEDIA, "the upload is empty: send a DICOM, PNG or JPEG file")
        kind = sniff(body)
        if kind is None:
            raise RequestError(422, UNSUPPORTED_MEDIA, "the upload is neither a DICOM file (no 'DICM' at byte 128) "
                               "nor a PNG or JPEG image")
        upload.kind = kind
        upload.path = body.rename(upload.folder / f"upload{MAGIC[kind][2]}")
        return upload
    except BaseException:
        upload.cleanup()
        raise


def _parse_multipart(body: Path, content_type: str, upload: Upload) -> Path:
    """Split a stored multipart body: the ``file`` part to ``upload.folder/part``, small fields to ``upload.fields``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(422, UNSUPPORTED_MEDIA, "multipart/form-data without a boundary")
    out = upload.folder / "part"
    state: dict[str, Any] = {"name": None, "file": None, "header": b"", "value": b"", "headers": {}, "buf": b""}
    sink = open(out, "wb")  # noqa: SIM115 - closed in finally; written by the callbacks

    def on_part_begin() -> None:
        state.update(headers={}, buf=b"", name=None, file=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        state["file"] = b"filename" in disp
        if state["file"]:
            if state["name"] != "file" or upload.filename is not None:
                raise RequestError(422, UNSUPPORTED_MEDIA, "multipart: send exactly one file, in the part 'file'")
            upload.filename = disp[b"filename"].decode("utf-8", "replace")
            media = _media_type(state["headers"].get(b"content-type", b"application/octet-stream").decode("latin-1"))
            if media not in ACCEPTED_TYPES:
                raise RequestError(415, UNSUPPORTED_MEDIA, f"file part of content type {media!r} is not accepted")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["file"]:
            sink.write(data[start:end])
        else:
            state["buf"] += data[start:end]
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise RequestError(413, UPLOAD_TOO_LARGE, f"form field over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if not state["file"] and state["name"]:
            upload.fields.setdefault(state["name"], []).append(state["buf"].decode("utf-8", "replace"))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        with open(body, "rb") as fp:
            while chunk := fp.read(CHUNK):
                parser.write(chunk)
        parser.finalize()
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - the parser raises its own types on a malformed body
        raise RequestError(422, UNSUPPORTED_MEDIA, f"malformed multipart body ({fc.describe_exception(err)})") from None
    finally:
        sink.close()
        body.unlink(missing_ok=True)
    return out


@dataclass
class Prepared:
    """One image as the model and the page need it."""

    pixels: np.ndarray  # (H, W) uint8/uint16 stored pixels at the model's input size
    record: TransformRecord | None  # None: the upload was declared already processed
    original_size: tuple[int, int]  # (H, W) of the uploaded image


def _check_image_budget(path: Path, limits: DecodeLimits) -> tuple[int, int]:
    """Declared (H, W) of a PNG/JPEG, refused as ``TOO_LARGE`` over the budget before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            frames = int(getattr(im, "n_frames", 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageError(f"upload: cannot read the image header ({fc.describe_exception(err)})", fc.BAD_HEADER) from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"upload: {err}", fc.TOO_LARGE) from None
    if width * height * frames > limits.max_pixels:
        raise ImageError(f"upload: declared image {height}x{width}x{frames} frames is over the budget of "
                         f"{limits.max_pixels} pixels; not decoded", fc.TOO_LARGE)
    return height, width


def prepare(upload: Upload, prep: ModelPreprocess, limits: DecodeLimits, *, processed: bool = False) -> Prepared:
    """The batch pipeline on one stored upload (runs in a worker thread: decoding is CPU work).

    Args:
        processed: The PNG/JPEG is already the model's input (``mammoclip preprocess`` output): only
            resized, no crop; the transform record is then None.

    Raises:
        ImageError: with a code of :mod:`mammoclip.imaging.failures` (``TOO_LARGE`` over the budget).
    """
    assert upload.path is not None and upload.kind is not None
    path = upload.path
    try:
        if upload.kind == "dicom":
            if processed:
                raise DataError("upload: a DICOM is never already processed; drop processed=true")
            pixels, record = process_image(path, prep.options, limits)
            return Prepared(pixels, record, (record.orig_height, record.orig_width))
        size = _check_image_budget(path, limits)
        pixels, maybe = prep.pixels(path, processed=processed)
        return Prepared(pixels, None if processed else maybe, size)
    except DataError as err:
        # the batch code names the file: name the upload instead of the private temp path
        message = str(err).replace(str(path), "upload").replace(str(upload.folder), "upload")
        raise ImageError(message, fc.failure_code(err)) from None
