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


def _tiff(orientation: int, endian: str = "<") -> bytes:
    import struct

    entry = struct.pack(endian + "HHIHH", 0x0112, 3, 1, orientation, 0)
    head = b"II*\x00" if endian == "<" else b"MM\x00*"
    return head + struct.pack(endian + "I", 8) + struct.pack(endian + "H", 1) + entry + b"\0" * 4


def _segment(marker: int, payload: bytes) -> bytes:
    import struct

    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def test_exif_found_where_pil_finds_it_in_unusual_layouts():
    """Fill bytes, many APP segments, eXIf after the PNG pixels, WebP: as PIL reads them."""
    import struct
    import zlib

    from PIL import Image

    from kerastl.data.images import exif_orientation

    body = _jpeg(_photo(), None)[2:]
    app1 = _segment(0xE1, b"Exif\0\0" + _tiff(6, ">"))
    layouts = {
        "fill byte": b"\xff\xd8\xff" + app1 + body,
        "40 APP2 first": b"\xff\xd8" + _segment(0xE2, b"Z" * 10) * 40 + app1 + body,
        "XMP APP1 first": b"\xff\xd8"
        + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0x")
        + app1
        + body,
    }
    png = io.BytesIO()
    Image.fromarray(_photo()).save(png, "PNG")
    png = png.getvalue()
    chunk = _tiff(3)
    chunk = (
        struct.pack(">I", len(chunk))
        + b"eXIf"
        + chunk
        + struct.pack(">I", zlib.crc32(b"eXIf" + chunk))
    )
    end = png.index(b"IEND") - 4
    layouts["PNG eXIf after IDAT"] = png[:end] + chunk + png[end:]
    webp = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(_photo()).save(webp, "WEBP", exif=exif.tobytes())
    layouts["WebP"] = webp.getvalue()
    for name, data in layouts.items():
        want = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
        assert want != 1 and int(exif_orientation(data)) == want, name


def test_truncated_or_tag_lookalike_bytes_read_as_upright():
    from kerastl.data.images import exif_orientation

    jpeg = _jpeg(_photo(), 6)
    assert {int(exif_orientation(jpeg[:n])) for n in range(0, 48)} == {1}
    # the tag inside compressed data without a TIFF header after it is not EXIF
    assert int(exif_orientation(_jpeg(_photo(), None) + b"Exif\0\0garbage")) == 1


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "PNG", "JPEG"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_listed_format_decodes_for_grey_and_rgb_models(fmt, channels):
    import tensorflow as tf
    from PIL import Image

    from kerastl.data.images import decode_and_resize

    buf = io.BytesIO()
    Image.fromarray(_photo()).save(buf, fmt)
    img = decode_and_resize(buf.getvalue(), (20, 30), channels)
    assert img.shape == (20, 30, channels) and img.dtype == tf.uint8
    assert float(tf.math.reduce_std(tf.cast(img, tf.float32))) > 10  # a picture, not a blank
    native = decode_and_resize(tf.constant(buf.getvalue()), None, channels)
    assert native.shape == (100, 150, channels)


def test_a_tiff_folder_trains_with_the_pixels_predict_reads(tmp_path):
    """Training reads what ``kerastl predict`` reads: TIFF (RGB, grey) through PIL, next to PNG."""
    from PIL import Image

    from kerastl import data as kdata
    from kerastl.data.files import image_files
    from kerastl.export.modalities.image import ImageExporter

    photo = _photo()
    for i, c in enumerate(("cat", "dog")):
        (tmp_path / c).mkdir()
        Image.fromarray(np.ascontiguousarray(photo[:, :: 1 - 2 * i])).save(tmp_path / c / "a.tiff")
        Image.fromarray(photo[..., i]).save(tmp_path / c / "b.TIF")  # grayscale
    Image.fromarray(photo).save(tmp_path / "cat" / "c.png")
    (tmp_path / "dog" / "bad.tif").write_bytes(b"II*\0 not really a TIFF")
    ex = kdata.from_image_folder(tmp_path)
    assert ex.class_counts() == {"cat": 3, "dog": 2}
    assert [(p.split("/")[-1], why) for p, why in ex.skipped] == [
        ("bad.tif", "ValueError: not a readable image (cannot identify image file)")
    ]
    x, y = next(iter(kdata.make_dataset(ex, image_size=(40, 60), batch_size=8)))
    assert x.shape == (5, 40, 60, 3) and y.numpy().tolist() == [0, 0, 0, 1, 1]
    reader = ImageExporter({"input": {"name": "image", "shape": [40, 60, 3]}})
    np.testing.assert_array_equal(x.numpy(), reader.load_files(list(ex.x)))
    grey = next(iter(kdata.make_dataset(ex, image_size=(40, 60), batch_size=8, channels=1)))[0]
    assert grey.shape == (5, 40, 60, 1)
    assert len(image_files(tmp_path, "inputs")) == 6  # predict's folder expansion lists them too


def test_pil_images_are_read_as_their_files_would_be(tmp_path):
    """art.predict(PIL image) as art.predict(its file): RGBA and grey PNGs of another size
    give the model's input, pixel for pixel the same as the files' path."""
    from PIL import Image

    from kerastl.export.modalities import get_modality

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L")
    paths = []
    for i, img in enumerate((rgba, grey)):
        paths.append(str(tmp_path / f"{i}.png"))
        img.save(paths[-1])
    m = get_modality({"input": {"name": "image", "shape": [32, 32, 3]}})
    from_files, _ = m.coerce(paths, "inputs")
    from_pil, _ = m.coerce([rgba, grey], "inputs")
    assert from_pil.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(from_pil, from_files)
    one, _ = m.coerce(grey, "inputs")
    np.testing.assert_array_equal(one[0], from_files[1])


def test_pil_16_bit_labels_and_limit_follow_the_file_path(tmp_path):
    from PIL import Image

    from kerastl.errors import DataError
    from kerastl.export.modalities import get_modality

    deep = np.random.default_rng(1).integers(0, 65536, (40, 30), dtype=np.uint16)
    deep[0, 0] = 30000
    path = str(tmp_path / "deep.png")
    Image.fromarray(deep).save(path)  # a 16-bit PNG; PIL opens it as mode I;16 (or I)
    m = get_modality({"input": {"name": "image", "shape": [40, 30, 3]}})
    from_file, _ = m.coerce([path], "inputs")
    with Image.open(path) as img:
        assert img.mode.startswith("I")
        from_pil, _ = m.coerce(img, "inputs")
    np.testing.assert_array_equal(from_pil, from_file)
    assert from_pil[0, 0, 0, 0] == 117  # 30000's high byte, as TensorFlow's decoder reads it
    greys = [Image.new("L", (8, 8), color=v) for v in range(10)]
    x, y = m.coerce((greys, np.arange(10) % 2), "inputs", limit=4)
    assert list(x[:, 0, 0, 0]) == [0, 3, 6, 9] and list(y) == [0, 1, 0, 1]  # spread, like files
    with pytest.raises(DataError, match="mode 'F'"):
        m.coerce(Image.new("F", (8, 8)), "inputs")
