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
