"""Row-cuttable JPEG frames: the same pixels as a plain encode, and any rows decoded alone exactly."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import simplejpeg

from tfds_emotions import jpeg_rows


def _image(height: int, width: int, seed: int, smooth: bool = True) -> np.ndarray:
    """Smooth random content (like video frames) or noise (the most bits per block)."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    walk = np.cumsum(np.cumsum(rng.normal(0, 3, (height, width, 3)), 0), 1)
    return np.clip(walk - walk.mean() + 128, 0, 255).astype(np.uint8)


def _plain(img: np.ndarray, quality: int = 85) -> bytes:
    return simplejpeg.encode_jpeg(img, quality=quality, colorspace="RGB", colorsubsampling="420")


SIZES = [(199, 112), (112, 199), (1, 1), (16, 16), (17, 33), (128, 112), (300, 171), (213, 120)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("smooth", [True, False])
def test_decodes_to_the_pixels_of_a_plain_encode_in_any_decoder(height, width, smooth):
    img = _image(height, width, height * width, smooth)
    for quality in (60, 85, 100):
        rows, plain = jpeg_rows.encode(img, quality), _plain(img, quality)
        np.testing.assert_array_equal(simplejpeg.decode_jpeg(rows), simplejpeg.decode_jpeg(plain))
        # Pillow's own libjpeg reads the restart markers too, to its own decode of the plain file.
        np.testing.assert_array_equal(
            np.asarray(PIL.Image.open(io.BytesIO(rows))), np.asarray(PIL.Image.open(io.BytesIO(plain)))
        )
        header = jpeg_rows.Header.parse(rows)
        assert header.row_cuttable and (header.height, header.width) == (height, width)


@pytest.mark.parametrize("height,width", [(199, 112), (300, 171), (33, 40), (112, 199)])
def test_any_rows_decode_to_exactly_those_of_the_full_decode(height, width):
    img = _image(height, width, 7)
    rows = jpeg_rows.encode(img, 85)
    full = simplejpeg.decode_jpeg(rows)
    step = 1 if height < 64 else 5  # Every (top, bottom) for small frames; a grid over MCU edges otherwise.
    for top in range(0, height, step):
        for bottom in sorted({*range(top + 1, height + 1, step), height, top + 1}):
            np.testing.assert_array_equal(jpeg_rows.decode_rows(rows, top, bottom), full[top:bottom], f"{top}:{bottom}")


def test_the_crops_a_clip_takes_decode_a_fraction_of_the_frame():
    """A portrait frame's three crops (top 0, 43, 87 of 199 rows) are cut to at most 8 of its 13 MCU rows,
    and cuts that start past the 8th row renumber their restart markers from RST0 (else libjpeg refuses)."""
    img = _image(300, 171, 3)
    rows = jpeg_rows.encode(img, 85)
    full = simplejpeg.decode_jpeg(rows)
    for top in (0, 43, 87, 150, 188):
        np.testing.assert_array_equal(jpeg_rows.decode_rows(rows, top, top + 112), full[top : top + 112])


def test_other_jpegs_are_decoded_whole():
    img = _image(199, 112, 5)
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, "JPEG", quality=85, progressive=True)
    for jpeg in (_plain(img), buf.getvalue()):
        full = simplejpeg.decode_jpeg(jpeg)
        assert not jpeg_rows.Header.parse(jpeg).row_cuttable
        np.testing.assert_array_equal(jpeg_rows.decode_rows(jpeg, 43, 155), full[43:155])


def test_a_shared_header_is_used_only_for_frames_that_have_it():
    small, large = (jpeg_rows.encode(_image(h, 112, h), 85) for h in (150, 199))
    header = jpeg_rows.Header.parse(large)
    np.testing.assert_array_equal(jpeg_rows.decode_rows(small, 43, 149, header), simplejpeg.decode_jpeg(small)[43:149])


def test_storage_cost_of_the_markers_is_small():
    img = _image(199, 112, 11)
    assert len(jpeg_rows.encode(img, 85)) <= 1.02 * len(_plain(img))


def test_bad_input_is_a_clear_error():
    rows = jpeg_rows.encode(_image(40, 40, 1), 85)
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_rows.decode_rows(b"GIF89a" + rows, 0, 10)
    with pytest.raises(ValueError, match="outside a frame of height 40"):
        jpeg_rows.decode_rows(rows, 30, 41)
    with pytest.raises(ValueError, match="truncated"):
        jpeg_rows.decode_rows(rows[:100], 0, 10)
