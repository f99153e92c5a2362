"""`uplift-diffusion serve` without a browser: the page's limits, its messages and the command's arguments (the page
itself is tested in Chromium in test_serve_browser.py)."""

from __future__ import annotations

import pytest
from PIL import Image

from uplift_diffusion import app
from uplift_diffusion.cli import main

LIMITS = app.PageLimits(max_input_pixels=500_000, max_output_pixels=4_000_000, max_untiled_output_pixels=1_000_000,
                        auto_tile_size=256)


@pytest.fixture
def upscaler(tmp_path):
    return app.PageUpscaler(pipeline=None, limits=LIMITS, workdir=tmp_path / "work")


@pytest.mark.parametrize("size,scale,tiles,expected", [
    ((300, 200), 2, "auto", None),  # 0.24 MP out: one piece
    ((400, 400), 4, "auto", 256),  # 2.56 MP out: over the untiled limit, auto tiles
    ((400, 400), 4, "512", 512),
    ((100, 100), 8, "off", None),  # 8x of a small image is fine
])
def test_tile_size_follows_the_limits(upscaler, size, scale, tiles, expected):
    assert upscaler.tile_size_for(Image.new("RGB", size), scale, tiles, "a.png") == expected


@pytest.mark.parametrize("size,scale,tiles,expected", [
    ((400, 400), 8, "auto", "would be 3200×3200 (10.2 MP), over this page's limit of 4.0 MP: choose 2× or 4×"),
    ((700, 700), 4, "512", "would be 2800×2800 (7.8 MP), over this page's limit of 4.0 MP: choose 2×"),
    ((400, 400), 4, "off", "too large to compute in one piece here (limit 1.0 MP): pick a tile size"),
])
def test_too_large_results_are_refused_with_a_way_out(upscaler, size, scale, tiles, expected):
    with pytest.raises(app.PageError) as err:
        upscaler.tile_size_for(Image.new("RGB", size), scale, tiles, "a.png")
    assert expected in str(err.value)


@pytest.mark.parametrize("write,expected", [
    (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n not really"), "x.png is not an image this page can read"),
    (lambda path: Image.new("L", (10, 40)).save(path), "x.png is 10×40 pixels; the smallest image"),
    (lambda path: Image.new("RGB", (800, 700)).save(path), "x.png is 800×700 (0.6 MP), over this page's limit"),
])
def test_bad_uploads_are_named_without_the_server_path(upscaler, tmp_path, write, expected):
    folder = tmp_path / "private-upload-folder"
    folder.mkdir()
    write(folder / "x.png")
    with pytest.raises(app.PageError) as err:
        upscaler.read(folder / "x.png")
    assert expected in str(err.value) and "private-upload-folder" not in str(err.value)


def test_good_upload_is_read_as_rgb(upscaler, tmp_path):
    Image.new("RGBA", (40, 30), (10, 20, 30, 128)).save(tmp_path / "alpha.png")
    image, note = upscaler.read(tmp_path / "alpha.png")
    assert image.mode == "RGB" and image.size == (40, 30) and note.startswith("converted RGBA to RGB")
    Image.new("RGB", (40, 30)).save(tmp_path / "rgb.png")
    assert upscaler.read(tmp_path / "rgb.png")[1] is None


def test_unexpected_errors_become_a_generic_sentence():
    message = app._user_message(RuntimeError("/srv/models/secret.bin: out of memory"))
    assert "RuntimeError" in message and "/srv" not in message
    assert app._user_message(app.PageError("plain words")) == "plain words"


def test_features_that_cannot_load_say_how_and_name_no_server_path(tmp_path):
    missing = tmp_path / "secret" / "model.safetensors"
    features = app.FeatureStrips.load("dinov2-s14", backbone_weights=str(missing), upsampler=str(missing))
    assert features.extractor is None
    assert "could not be loaded" in features.unavailable and "--backbone-weights" in features.unavailable
    assert "secret" not in features.unavailable
    with pytest.raises(app.PageError, match="could not be loaded"):
        features.strip(tmp_path / "any.png")


@pytest.mark.parametrize("argv,expected", [
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max-pixels", "0"], "--max-pixels must be positive"),
    (["--vae", "/nonexistent/vae-folder"], "--vae /nonexistent/vae-folder"),
])
def test_serve_argument_errors_are_one_line(argv, expected, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_serve_refuses_an_upsampler_that_does_not_fit_the_vae(tmp_path, capsys):
    from uplift_diffusion import UPLiFTModel

    UPLiFTModel.from_preset("tiny-vae", in_channels=4).save_pretrained(tmp_path / "sd_upsampler")
    assert main(["serve", "--upsampler", str(tmp_path / "sd_upsampler")]) == 2  # with the built-in taef2 VAE
    err = capsys.readouterr().err
    assert "does not fit the vae" in err and "Traceback" not in err


def test_serve_says_when_the_port_is_taken(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and "pick another --port" in err
