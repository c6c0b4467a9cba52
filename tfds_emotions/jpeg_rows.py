"""JPEG frames whose rows decode on their own: a restart marker after every row of MCUs.

A training clip keeps a square crop of each frame it samples (112 of a portrait frame's 199 rows), yet a
JPEG decoder has to decode the whole frame. A restart marker at the end of every MCU row (16 pixel rows
for 4:2:0) resets the entropy decoder's state, so the rows a crop needs can be cut out of the stored
bytes as a JPEG of their own (the same header with a smaller height, those rows' data, the markers
renumbered) and decoded alone: about 64% of the work for a portrait crop (see README, input pipeline).

`encode` writes such a frame without an encoder option for restart markers (simplejpeg has none): it
encodes the frame one MCU row at a time and joins the rows' entropy-coded data with markers between
them. libjpeg's colour conversion, 2x2 chroma averaging and edge padding never look across an MCU row,
and a restart marker is preceded by exactly the flush that ends a scan, so the result holds the
coefficients of one whole-frame encode, bit for bit: it decodes to the same pixels as
`simplejpeg.encode_jpeg(frame)`, and any JPEG reader reads it. `decode_rows` returns the rows of the
full decode exactly, because it keeps one more MCU row wherever chroma upsampling looks at a neighbour.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Sequence

import numpy as np
import simplejpeg

_SOF_BASELINE = (0xC0, 0xC1)  # Huffman-coded sequential DCT; progressive scans cannot be cut by row.
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")  # Entropy-coded data escapes 0xFF as FF00, so these are markers.
_RESTART_MARKERS = [bytes((0xFF, 0xD0 + k)) for k in range(8)]  # RST0..RST7, used in turn.


def encode(frame: np.ndarray, quality: int) -> bytes:
    """RGB uint8 [H, W, 3] to a 4:2:0 baseline JPEG with a restart marker after every 16-pixel row.

    Decodes to exactly the pixels of `simplejpeg.encode_jpeg(frame, quality, "RGB", "420")`.
    """
    return encode_all([frame], quality)[0]


def encode_all(frames: Sequence[np.ndarray], quality: int) -> list[bytes]:
    """`encode` of each frame; frames of one size share their header, which is parsed once."""
    out, layout = [], {}
    for frame in frames:
        height, width = frame.shape[:2]
        bands = [
            simplejpeg.encode_jpeg(
                np.ascontiguousarray(frame[top : top + 16]), quality=quality, colorspace="RGB", colorsubsampling="420"
            )
            for top in range(0, height, 16)
        ]
        first = bands[0]
        if (height, width) not in layout or not first.startswith(layout[height, width][0]):
            layout[height, width] = _layout(first, height, width)
        _, head, sof, scan = layout[height, width]
        pieces = [head]
        for k, band in enumerate(bands):
            # Rows share the whole-frame tables; only the height differs (the last row may be shorter).
            if band[: sof + 5] != first[: sof + 5] or band[sof + 7 : scan] != first[sof + 7 : scan]:
                raise ValueError("the encoder wrote different tables for rows of one frame")
            if k:
                pieces.append(_RESTART_MARKERS[(k - 1) % 8])
            pieces.append(band[scan : band.rindex(b"\xff\xd9")])
        pieces.append(b"\xff\xd9")
        out.append(b"".join(pieces))
    return out


def _layout(first_band: bytes, height: int, width: int) -> tuple[bytes, bytes, int, int]:
    """From a frame's first band: (the band's header, the frame's header (its full height and a restart
    interval of one MCU row), the SOF offset, the offset of the scan data)."""
    header = Header.parse(first_band)
    sof, scan = header.sof, len(header.prefix)
    sos = first_band.rindex(b"\xff\xda", 0, scan)
    dri = b"\xff\xdd\x00\x04" + struct.pack(">H", -(-width // header.mcu_width))
    head = first_band[: sof + 5] + struct.pack(">H", height) + first_band[sof + 7 : sos] + dri + first_band[sos:scan]
    return header.prefix, head, sof, scan


@dataclasses.dataclass(frozen=True)
class Header:
    """What cutting rows out of a JPEG needs from its header. The frames of one video share one header
    (same size, same tables), so it is parsed once per clip: `prefix` tells whether another frame has it.

    Attributes:
      prefix: the bytes up to the entropy-coded data.
      sof: offset of the frame header (SOF) marker.
      height, width: pixels.
      mcu_height, mcu_width: pixels per MCU (16 x 16 for 4:2:0).
      restart_interval: MCUs per restart interval; 0 for none.
      progressive: a progressive (or arithmetic-coded) JPEG, which cannot be cut by rows.
    """

    prefix: bytes
    sof: int
    height: int
    width: int
    mcu_height: int
    mcu_width: int
    restart_interval: int
    progressive: bool

    @classmethod
    def parse(cls, jpeg: bytes) -> Header:
        if jpeg[:2] != b"\xff\xd8":
            raise ValueError("not a JPEG (no SOI marker)")
        pos, found = 2, {"restart_interval": 0}
        while pos + 4 <= len(jpeg):
            if jpeg[pos] != 0xFF:
                raise ValueError(f"corrupt JPEG header at byte {pos}")
            marker = jpeg[pos + 1]
            if marker == 0xFF:  # Fill byte.
                pos += 1
                continue
            (length,) = struct.unpack_from(">H", jpeg, pos + 2)
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width, components = struct.unpack_from(">HHB", jpeg, pos + 5)
                sampling = [jpeg[pos + 11 + 3 * c] for c in range(components)]
                unit = (8 * max(f & 0x0F for f in sampling), 8 * max(f >> 4 for f in sampling))
                found.update(sof=pos, height=height, width=width, progressive=marker not in _SOF_BASELINE)
                found["mcu_height"], found["mcu_width"] = unit if components > 1 else (8, 8)
            elif marker == 0xDD:
                (found["restart_interval"],) = struct.unpack_from(">H", jpeg, pos + 4)
            elif marker == 0xDA:
                if "sof" not in found:
                    raise ValueError("JPEG without a frame header (SOF)")
                return cls(prefix=bytes(jpeg[: pos + 2 + length]), **found)
            pos += 2 + length
        raise ValueError("truncated JPEG header (no SOS marker)")

    @property
    def row_cuttable(self) -> bool:
        """Whether the frame has one restart interval per MCU row (what `encode` writes)."""
        return not self.progressive and self.restart_interval == -(-self.width // self.mcu_width)


def decode_rows(jpeg: bytes, top: int, bottom: int, header: Header | None = None) -> np.ndarray:
    """RGB rows [top, bottom) of a JPEG frame: exactly `simplejpeg.decode_jpeg(jpeg)[top:bottom]`.

    For frames written by `encode`, only the MCU rows that hold them (and a neighbour for chroma
    upsampling where a cut would otherwise fall next to them) are decoded; other JPEGs are decoded whole.
    `header`, another frame's of the same video, saves parsing this one's when they are equal.
    """
    if header is None or not jpeg.startswith(header.prefix):
        header = Header.parse(jpeg)
    height, unit = header.height, header.mcu_height
    if not 0 <= top < bottom <= height:
        raise ValueError(f"rows [{top}, {bottom}) outside a frame of height {height}")
    first = 0 if top == 0 else (top - 1) // unit  # Fancy upsampling reads one chroma row either side.
    stop = min(-(-height // unit), (bottom + unit) // unit)
    if (first == 0 and stop * unit >= height) or not header.row_cuttable:
        return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")[top:bottom]
    scan = len(header.prefix)
    markers = [m.start() for m in _RESTART.finditer(jpeg, scan)]
    begin = scan if first == 0 else markers[first - 1] + 2
    end = markers[stop - 1] if stop - 1 < len(markers) else jpeg.rindex(b"\xff\xd9")
    body = bytearray(memoryview(jpeg)[begin:end])
    if first % 8:  # The cut's markers must count from RST0 again.
        for k, at in enumerate(markers[first : stop - 1]):
            body[at - begin + 1] = 0xD0 + k % 8
    sof, rows = header.sof, min(height, stop * unit) - first * unit
    cut = b"".join((jpeg[: sof + 5], struct.pack(">H", rows), jpeg[sof + 7 : scan], body, b"\xff\xd9"))
    offset = top - first * unit
    return simplejpeg.decode_jpeg(cut, colorspace="RGB")[offset : offset + bottom - top]
