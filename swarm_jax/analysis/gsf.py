"""Gwyddion Simple Field (``.gsf``) export and import of height maps (NumPy only).

File layout (Gwyddion user guide, "Simple Field Files"):

1. the magic line ``Gwyddion Simple Field 1.0`` terminated by ``\\n``;
2. a UTF-8 text header of ``Name = Value`` lines, each terminated by ``\\n`` (no NUL inside);
   ``XRes`` and ``YRes`` are mandatory; we always write ``XReal``, ``YReal`` (metres),
   ``XYUnits = m``, ``ZUnits = m`` and optionally ``Title`` and extra keys;
3. one to four NUL bytes, so that the binary data starts at a multiple of 4 bytes (hence at
   least one NUL even when the text already ends on a multiple of 4);
4. ``XRes · YRes`` IEEE-754 float32 values, little-endian, row by row: ``YRes`` rows of
   ``XRes`` values.

Orientation and units used by this project
------------------------------------------
- Our maps are ``h[x, y]`` of shape ``(Lx, Ly)`` in layers. The file has ``XRes = Lx`` columns
  and ``YRes = Ly`` rows: **pixel (column x, row y) holds h[x, y]**, i.e. the data block is
  ``h.T`` flattened in C order. :func:`read_gsf` undoes this and returns ``z[x, y]``.
- Heights are written in metres: ``z = h · a`` with the lattice constant ``a`` (default
  4.59 Å = 4.59e-10 m); lateral sizes are ``XReal = Lx · a``, ``YReal = Ly · a``.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

import numpy as np

from swarm_jax.outdir import atomic_write_bytes

__all__ = ["GSF_MAGIC", "DEFAULT_LATTICE_CONSTANT_M", "gsf_bytes", "write_gsf", "read_gsf"]

GSF_MAGIC = "Gwyddion Simple Field 1.0"
DEFAULT_LATTICE_CONSTANT_M = 4.59e-10
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _fmt(value) -> str:
    """Header value text: floats as the shortest round-tripping decimal (with '.')."""
    if isinstance(value, (bool, np.bool_)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    else:
        text = str(value)
    if "\n" in text or "\x00" in text:
        raise ValueError(f"GSF header values may not contain a newline or NUL: {text!r}")
    return text.strip()


def gsf_bytes(
    heights_layers,
    lattice_constant_m: float = DEFAULT_LATTICE_CONSTANT_M,
    title: Optional[str] = None,
    extra: Optional[Mapping[str, object]] = None,
) -> bytes:
    """Encode a height map as the bytes of a ``.gsf`` file.

    Args:
        heights_layers: (Lx, Ly) heights in layers (any real dtype).
        lattice_constant_m: lattice constant a in metres (lateral and vertical scale).
        title: optional ``Title`` (UTF-8, single line).
        extra: optional further ``Name = Value`` header fields (names must be identifiers and
            must not clash with the fields written here).
    """
    h = np.asarray(heights_layers, dtype=np.float64)
    if h.ndim != 2 or min(h.shape) < 1:
        raise ValueError(f"a GSF map must be 2-D (Lx, Ly); got shape {h.shape}")
    a = float(lattice_constant_m)
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"lattice constant must be a positive length in metres, got {a}")
    lx, ly = h.shape
    fields = {
        "XRes": lx,
        "YRes": ly,
        "XReal": lx * a,
        "YReal": ly * a,
        "XOffset": 0.0,
        "YOffset": 0.0,
        "XYUnits": "m",
        "ZUnits": "m",
    }
    if title is not None:
        fields["Title"] = title
    for key, value in (extra or {}).items():
        if not _NAME.match(key) or key in fields:
            raise ValueError(f"bad or reserved GSF header field name {key!r}")
        fields[key] = value
    text = GSF_MAGIC + "\n" + "".join(f"{k} = {_fmt(v)}\n" for k, v in fields.items())
    header = text.encode("utf-8")
    header += b"\x00" * (4 - len(header) % 4)  # 1..4 NULs, data aligned on 4 bytes
    data = (h * a).T.astype("<f4")  # row y, column x  <-  h[x, y]
    return header + np.ascontiguousarray(data).tobytes(order="C")


def write_gsf(
    path,
    heights_layers,
    lattice_constant_m: float = DEFAULT_LATTICE_CONSTANT_M,
    title: Optional[str] = None,
    extra: Optional[Mapping[str, object]] = None,
) -> str:
    """Write ``heights_layers`` (Lx, Ly) to ``path`` as a ``.gsf`` file (see module docstring).

    Returns the path written.
    """
    blob = gsf_bytes(heights_layers, lattice_constant_m, title=title, extra=extra)
    path = os.fspath(path)
    atomic_write_bytes(path, blob)  # whole file or none (temporary file + rename)
    return path


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_gsf(path) -> tuple[np.ndarray, dict]:
    """Read a ``.gsf`` file.

    Returns:
        ``(z, header)``: ``z[x, y]`` of shape (XRes, YRes), float32, in the file's z units
        (metres for our files); ``header`` maps field names to int/float/str values.

    Raises:
        ValueError: not a GSF file, malformed header or padding, or wrong data size.
    """
    with open(os.fspath(path), "rb") as fh:
        blob = fh.read()
    magic = (GSF_MAGIC + "\n").encode("ascii")
    if not blob.startswith(magic):
        raise ValueError(f"{path}: not a Gwyddion Simple Field 1.0 file (bad magic line)")
    end = blob.find(b"\x00")
    if end < 0:
        raise ValueError(f"{path}: GSF header is not NUL-terminated")
    start = end + (4 - end % 4)  # the data starts at the next multiple of 4 after >= 1 NUL
    if start > len(blob) or blob[end:start] != b"\x00" * (start - end):
        raise ValueError(f"{path}: GSF NUL padding is malformed")
    header = {}
    for line in blob[len(magic):end].decode("utf-8").split("\n"):
        if not line.strip():
            continue
        if "=" not in line:
            raise ValueError(f"{path}: GSF header line without '=': {line!r}")
        name, value = line.split("=", 1)
        header[name.strip()] = _parse_value(value.strip())
    try:
        xres, yres = int(header["XRes"]), int(header["YRes"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: GSF header lacks a valid XRes/YRes") from exc
    data = blob[start:]
    if len(data) != 4 * xres * yres:
        raise ValueError(
            f"{path}: GSF data holds {len(data)} bytes, expected 4 * {xres} * {yres}"
        )
    z = np.frombuffer(data, dtype="<f4").reshape(yres, xres).T.copy()
    return z, header
