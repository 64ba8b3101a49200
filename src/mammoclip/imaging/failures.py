"""Stable failure codes for images that cannot be processed, and one-line failure reasons.

A batch over thousands of files from a PACS export fails some of them for a handful of reasons; the
code lets a user group ``failures.csv`` by cause (and a script act on it) while the reason keeps the
detail. Codes are part of the file format: never rename one, add new ones with
:func:`register_failure_code`. Every failure raised by :mod:`mammoclip.imaging.dicom` is an
:class:`~mammoclip.errors.ImageError` carrying one of these codes.

Layer 0: no imports beyond the standard library and :mod:`mammoclip.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mammoclip.errors import DataError, ImageError


@dataclass(frozen=True)
class FailureCode:
    """One failure class: the stable ``code`` written to ``failures.csv`` and what it means."""

    code: str
    message: str


#: code -> :class:`FailureCode`; the table ``docs/data.md`` ("Robustness") lists.
FAILURE_CODES: dict[str, FailureCode] = {}


def register_failure_code(code: str, message: str) -> str:
    """Add a failure code (upper-case, stable) with its one-line human message; returns the code."""
    if not code.isidentifier() or code.upper() != code:
        raise ValueError(f"failure codes are UPPER_SNAKE_CASE identifiers, got {code!r}")
    if code in FAILURE_CODES and FAILURE_CODES[code].message != message:
        raise ValueError(f"failure code {code!r} is already registered with another message")
    FAILURE_CODES[code] = FailureCode(code, message)
    return code


MISSING_FILE = register_failure_code("MISSING_FILE", "the file does not exist")
NOT_A_FILE = register_failure_code("NOT_A_FILE", "not a regular file (folder, FIFO, socket or device): never opened")
NOT_DICOM = register_failure_code("NOT_DICOM", "not a DICOM file")
BAD_HEADER = register_failure_code("BAD_HEADER", "the DICOM header is malformed, truncated or holds impossible values")
NOT_MG = register_failure_code("NOT_MG", "the modality is not mammography (MG)")
NO_PIXELS = register_failure_code("NO_PIXELS", "the DICOM has no pixel data")
UNSUPPORTED_IMAGE = register_failure_code("UNSUPPORTED_IMAGE", "multi-frame, colour or not a 2-D grayscale image")
UNSUPPORTED_SYNTAX = register_failure_code(
    "UNSUPPORTED_SYNTAX", "no installed decoder reads the transfer syntax")
TOO_LARGE = register_failure_code(
    "TOO_LARGE", "declared size or decompression ratio over the budget (--max-pixels): not decoded")
DECODE_ERROR = register_failure_code("DECODE_ERROR", "the decoder failed on the pixel data (corrupt or truncated)")
DECODE_PANIC = register_failure_code(
    "DECODE_PANIC", "the decoder raised a non-Exception error (e.g. a Rust panic in a pylibjpeg plugin)")
DECODE_CRASH = register_failure_code(
    "DECODE_CRASH", "the worker process died on this file alone (native crash or killed); not retried")
DECODE_TIMEOUT = register_failure_code(
    "DECODE_TIMEOUT", "the worker process took longer than --timeout on this file alone and was killed; not retried")
NONFINITE_LUT = register_failure_code(
    "NONFINITE_LUT", "rescale slope/intercept non-finite or zero: pixel values undefined")
BLANK_OUTPUT = register_failure_code("BLANK_OUTPUT", "the processed image holds a single value")
TOO_SMALL = register_failure_code("TOO_SMALL", "the image is too small for the requested processing")
MASK_ERROR = register_failure_code("MASK_ERROR", "a lesion mask of the image cannot be read or mapped")
WRITE_ERROR = register_failure_code("WRITE_ERROR", "the output PNG or its sidecar cannot be written")
PROCESS_ERROR = register_failure_code("PROCESS_ERROR", "an unexpected error while processing the image")
LEFT_OUT = register_failure_code("LEFT_OUT", "left out when the manifest was built (see the reason)")

#: Longest reason kept in ``failures.csv`` (characters); longer ones are cut with an ellipsis.
MAX_REASON_CHARS: int = 500


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse whitespace (newlines included) to single spaces and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_exception(err: BaseException) -> str:
    """``"TypeName: text"`` on one line, safe for exceptions whose ``str()`` itself fails."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not turn one failure into two
        text = "(unprintable)"
    return one_line(f"{type(err).__name__}: {text}" if text else type(err).__name__)


def failure_code(err: BaseException, default: str = PROCESS_ERROR) -> str:
    """The code of an error: its own for an :class:`ImageError`, ``default`` otherwise."""
    code = getattr(err, "code", None) if isinstance(err, DataError) else None
    return code if isinstance(code, str) and code in FAILURE_CODES else default


def is_interrupt(err: BaseException) -> bool:
    """True for the BaseExceptions that must always propagate (Ctrl-C, ``sys.exit``, generator close)."""
    return isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit))


__all__ = ["FAILURE_CODES", "MAX_REASON_CHARS", "FailureCode", "ImageError", "describe_exception", "failure_code",
           "is_interrupt", "one_line", "register_failure_code"]
