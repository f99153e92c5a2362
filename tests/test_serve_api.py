"""The page's documented API (``/upscale``), called with ``gradio_client`` as a script would: the same image, bit for
bit, as ``UPLiFTSuperResolutionPipeline.from_builtin("taef2")``; inputs typed as they are accepted, internal events
hidden, outputs named."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uplift_diffusion import UPLiFTSuperResolutionPipeline, app
from uplift_diffusion.commands.loading import load_pair


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page as ``uplift-diffusion serve`` builds it (default preset), served in this process."""
    vae, upsampler = load_pair("taef2", None, None, torch.float32)
    pipeline = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    pipeline.set_progress_bar_config(disable=True)
    upscaler = app.PageUpscaler(pipeline, app.PageLimits(), workdir=tmp_path_factory.mktemp("work"))
    demo = app.build_demo(upscaler, app.FeatureStrips.load(None))
    url = app.launch(demo, app.PageLimits(), port=free_port(), block=False)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def photo(shared_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "coffee_crop.png"
    with Image.open(shared_dir / "data" / "photos" / "coffee.png") as coffee:
        coffee.convert("RGB").crop((200, 100, 360, 220)).save(path)  # 160x120
    return path


def test_api_is_documented_typed_and_hides_the_pages_internal_events(served):
    with urllib.request.urlopen(served + "gradio_api/info") as response:
        info = json.load(response)
    assert list(info["named_endpoints"]) == ["/upscale"] and not info["unnamed_endpoints"]  # no /lambda, /show ...
    endpoint = info["named_endpoints"]["/upscale"]
    params = {p["parameter_name"]: p for p in endpoint["parameters"]}
    assert list(params) == ["files", "scale", "color_correction", "tiles"]
    assert params["scale"]["python_type"]["type"] == "float" and params["scale"]["parameter_default"] == 2
    assert params["color_correction"]["python_type"]["type"] == "bool"
    assert [Path(f["path"]).suffix for f in params["files"]["example_input"]] == [".png"]  # a photo, not a PDF
    assert [r["label"] for r in endpoint["returns"]] == ["Download PNG", "Summary"]  # no value_17


def test_api_returns_the_pipelines_image_bit_for_bit(served, photo):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    for scale in (2, "2"):  # the documented int, and the string older docs suggested
        files, summary = client.predict([handle_file(str(photo))], scale, True, "auto", api_name="/upscale")
        assert "coffee_crop.png: 160×120 → 320×240 (2×)" in summary
    with Image.open(files[0]) as result:
        served_pixels = np.asarray(result.convert("RGB"))

    reference = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    reference.set_progress_bar_config(disable=True)
    with Image.open(photo) as image:
        expected = reference(image.convert("RGB"), scale=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(served_pixels, np.asarray(expected))


def test_api_takes_any_factor_from_1_to_8_as_the_pipeline_does(served, photo):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    files, summary = client.predict([handle_file(str(photo))], 1.5, True, "auto", api_name="/upscale")
    assert "coffee_crop.png: 160×120 → 240×180 (1.5×)" in summary and Path(files[0]).name == "coffee_crop_x1.5.png"
    reference = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    reference.set_progress_bar_config(disable=True)
    with Image.open(photo) as image, Image.open(files[0]) as result:
        expected = reference(image.convert("RGB"), scale=1.5, generator=torch.Generator().manual_seed(0)).images[0]
        assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(expected))


def test_api_refusals_are_errors_with_the_pages_words(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    (tmp_path / "notes.png").write_text("not a photo\n")
    client = Client(served, verbose=False)
    with pytest.raises(AppError, match="notes.png is not an image this page can read"):
        client.predict([handle_file(str(tmp_path / "notes.png"))], 2, True, "auto", api_name="/upscale")


def test_api_wrong_values_are_one_line_errors_without_a_traceback(served, photo, capfd):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    capfd.readouterr()
    for scale, tiles, expected in ((9, "auto", "scale must be a number from 1 to 8 .*, not 9"),
                                   (0.5, "auto", "scale must be a number from 1 to 8 .*, not 0.5"),
                                   ("big", "auto", "scale must be a number from 1 to 8 .*, not 'big'"),
                                   ("other", "auto", "scale must be a number from 1 to 8 .*, not 'other'"),
                                   (None, "auto", "scale must be a number from 1 to 8 .*, not None"),
                                   (2, "300", "tiles must be one of 'auto', 'off', '256', '512', '1024', not '300'")):
        with pytest.raises(AppError, match=expected):
            client.predict([handle_file(str(photo))], scale, True, tiles, api_name="/upscale")
    with pytest.raises(AppError, match="Add one or more photos first"):
        client.predict(None, 2, True, "auto", api_name="/upscale")
    # (a closed stream left on the page's logger by another test module makes logging print its own tracebacks)
    err = re.sub(r"--- Logging error ---.*?\nArguments: [^\n]*\n", "", capfd.readouterr().err, flags=re.S)
    assert "Traceback" not in err, err
