"""One way to read an image (uplift_diffusion.utils.images.load_image) and one way to write a file
(uplift_diffusion.utils.io.atomic_write), used by every reader and writer of the project."""

import os
import stat
import warnings

import numpy as np
import pytest
from PIL import Image

from uplift_diffusion.utils.errors import ImageConversionWarning, InputError, InputNotFoundError
from uplift_diffusion.utils.images import load_image
from uplift_diffusion.utils.io import atomic_write, write_json_atomic


@pytest.fixture
def odd_images(tmp_path):
    """16-bit grey gradient, RGBA with hidden red under full transparency, CMYK, palette, and their expected RGB."""
    ramp = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, but invisible
    rgba[:, :4, 3] = 255  # left half opaque red
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (8, 8), 3).save(tmp_path / "palette.png")
    return tmp_path


def _load(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path)
    return image, [str(w.message) for w in caught if issubclass(w.category, ImageConversionWarning)]


def test_sixteen_bit_is_rescaled_not_clipped(odd_images):
    image, notes = _load(odd_images / "grey16.png")
    array = np.asarray(image)
    assert image.mode == "RGB" and array.min() == 0 and array.max() == 255
    assert 100 < array.mean() < 155  # a ramp, not "all white" (PIL's convert clips 16-bit to 255)
    assert notes and "grey16.png" in notes[0] and "high bit depth" in notes[0]


def test_transparency_is_composited_over_white(odd_images):
    image, notes = _load(odd_images / "rgba.png")
    array = np.asarray(image)
    assert tuple(array[0, 0]) == (255, 0, 0) and tuple(array[0, 7]) == (255, 255, 255)  # hidden red never shows
    assert "transparency" in notes[0]


@pytest.mark.parametrize("name", ["cmyk.jpg", "palette.png"])
def test_other_modes_are_converted_with_a_note(odd_images, name):
    image, notes = _load(odd_images / name)
    assert image.mode == "RGB" and len(notes) == 1 and name in notes[0]


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((4, 8, 3), np.uint8)
    array[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image, notes = _load(tmp_path / "rotated.jpg")
    assert image.size == (4, 8) and "EXIF" in notes[0]


def test_rgb_is_read_silently_and_errors_name_the_file(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "ok.png")
    image, notes = _load(tmp_path / "ok.png")
    assert notes == [] and tuple(np.asarray(image)[0, 0]) == (1, 2, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(InputNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="shard.tar:x.jpg"):
        load_image(b"junk", name="shard.tar:x.jpg")


def test_every_reader_uses_the_one_policy(odd_images):
    """The training folder source, the features command's reader and the feature extractor's PIL input."""
    from uplift_diffusion.features.extractor import _to_float_chw
    from uplift_diffusion.training.data import FolderSource

    expected = np.asarray(load_image(odd_images / "grey16.png"))
    source = FolderSource(odd_images)
    index = [p.name for p in source.files].index("grey16.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(np.asarray(source.load(index)), expected)
        rgba = _to_float_chw(Image.open(odd_images / "rgba.png"))
    assert rgba[0, :, 0, 7].tolist() == [1.0, 1.0, 1.0]  # white, not the hidden red


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        for name in ("a.txt", "b.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
        os.chmod(tmp_path / "a.txt", 0o600)  # an existing file keeps its mode
        atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("y"))
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "c.txt", lambda tmp: 1 / 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "plain.txt"]  # no temp file left


# ---------------------------------------------------------------- colour profiles, value ranges, big headers
def _icc_rgb_profile(colorants, gamma=2.2, name="Display P3") -> bytes:
    """A minimal ICC v2 matrix / TRC display profile (what cameras and phones embed) with D50-adapted colorants."""
    import struct

    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    text = name.encode() + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    desc += bytes(-len(desc) % 4)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*colorants[0])),
            (b"gXYZ", xyz(*colorants[1])), (b"bXYZ", xyz(*colorants[2])), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text" + bytes(4) + b"none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + bytes(12) + b"acsp"
              + bytes(4 * 4 + 8 + 4) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(4 + 16 + 28))
    return header + table + data


DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419), (0.1572, 0.0666, 0.7841))


def test_a_display_p3_photo_is_converted_to_srgb(tmp_path):
    pixel = (200, 90, 80)
    Image.new("RGB", (8, 8), pixel).save(tmp_path / "p3.jpg", quality=100,
                                         icc_profile=_icc_rgb_profile(DISPLAY_P3))
    image, notes = _load(tmp_path / "p3.jpg")
    r, g, b = (int(v) for v in np.asarray(image)[4, 4])
    assert r > pixel[0] + 8 and g < pixel[1] - 8  # P3's red is more saturated than sRGB's: more chroma in sRGB
    assert len(notes) == 1 and "Display P3" in notes[0] and "sRGB" in notes[0]

    Image.new("RGB", (8, 8), pixel).save(tmp_path / "plain.jpg", quality=100)  # no profile: as it is, no note
    image, notes = _load(tmp_path / "plain.jpg")
    assert notes == [] and np.abs(np.asarray(image)[4, 4].astype(int) - pixel).max() <= 2


def test_float_and_32_bit_images_keep_their_range_or_are_refused(tmp_path):
    ramp = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, "F").save(tmp_path / "float255.tif")
    image, notes = _load(tmp_path / "float255.tif")
    grey = np.asarray(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and 100 < grey.mean() < 155  # a ramp, not clipped to white
    Image.fromarray(np.full((8, 8), -3.0, np.float32), "F").save(tmp_path / "negative.tif")
    with pytest.raises(InputError, match="negative.tif.*values"):
        load_image(tmp_path / "negative.tif")


def test_an_image_too_big_is_refused_from_its_header(tmp_path, monkeypatch):
    """Refused before decoding: the limit is Pillow's own (Image.MAX_IMAGE_PIXELS); the decoder is never called."""
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: pytest.fail("decoded"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"big.png.*64x64"):
            load_image(tmp_path / "big.png")
    assert not caught  # one line, not Pillow's decompression-bomb warning first


def test_atomic_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    assert len(synced) == 2 and ".a." in synced[0] and synced[1] == str(tmp_path)


def test_every_entry_of_a_folder_that_is_not_read_is_named(tmp_path):
    from uplift_diffusion.utils.images import SkippedInputWarning, expand_inputs

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden.png")
    (tmp_path / "more").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.png"]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedInputWarning)]
    assert len(messages) == 1 and "skipped 3" in messages[0]
    assert all(name in messages[0] for name in (".hidden.png", "more/", "notes.txt"))
