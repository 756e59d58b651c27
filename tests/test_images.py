"""The one image decoder (kerastl.data.images): EXIF orientation, sizes, formats."""

from __future__ import annotations

import io

import numpy as np
import pytest


def _photo(h: int = 100, w: int = 150) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((w, h)))


def _jpeg(pixels: np.ndarray, orientation: int | None, endian: str = "<") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif.endian = endian
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_photo_like_pil(orientation, endian):
    from PIL import Image, ImageOps

    from kerastl.data.images import decode_and_resize, exif_orientation

    jpeg = _jpeg(_photo(), orientation, endian)
    assert (b"II*" if endian == "<" else b"MM\x00*") in jpeg
    assert int(exif_orientation(jpeg)) == orientation
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB"))
    got = decode_and_resize(jpeg, None, 3).numpy()
    assert got.shape == ref.shape
    err = np.abs(got.astype(int) - ref).mean()
    assert err < 1.5, err  # decoder rounding only (PIL and TF upsample chroma differently)
    if orientation != 1:  # the tag made a difference: not the stored pixels
        stored = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        if stored.shape == ref.shape:
            assert np.abs(stored.astype(int) - ref).mean() > 10 * max(err, 0.5)


def test_no_exif_png_and_a_jfif_segment_first_read_as_upright():
    import tensorflow as tf
    from PIL import Image

    from kerastl.data.images import exif_orientation

    photo = _photo()
    assert int(exif_orientation(_jpeg(photo, None))) == 1
    assert int(exif_orientation(tf.io.encode_png(photo))) == 1
    buf = io.BytesIO()  # JFIF APP0 then an APP1 Exif segment: the walk skips APP0
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo).save(buf, "JPEG", exif=exif.tobytes(), jfif=True)
    data = buf.getvalue()
    assert data[2:4] == b"\xff\xe0" and int(exif_orientation(data)) == 8
    assert int(exif_orientation(b"not an image")) == 1
    assert int(exif_orientation(data[:40])) == 1  # truncated inside the segments: no crash


def test_quarter_turned_large_jpeg_still_decodes_at_reduced_scale_to_the_right_shape():
    from kerastl.data.images import decode_and_resize

    jpeg = _jpeg(_photo(400, 640), 6)  # stored 400x640, shown 640x400
    assert decode_and_resize(jpeg, (64, 48), 3).shape == (64, 48, 3)
    assert decode_and_resize(jpeg, None, 3).shape == (640, 400, 3)
    gray = decode_and_resize(jpeg, (32, 32), 1)
    assert gray.shape == (32, 32, 1) and gray.dtype.name == "uint8"


def test_predict_reads_a_tiff_through_pil_with_the_same_resize(tmp_path):
    from PIL import Image

    from kerastl.data.images import resize_uint8
    from kerastl.errors import DataError
    from kerastl.export.modalities.image import ImageExporter

    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "p.tiff")
    reader = ImageExporter({"input": {"name": "image", "shape": [40, 60, 3]}})
    got = reader.load_files([str(tmp_path / "p.tiff")])[0]
    np.testing.assert_array_equal(got, resize_uint8(photo, (40, 60)).numpy().astype(np.float32))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="bad.jpg"):
        reader.load_files([str(tmp_path / "bad.jpg")])
