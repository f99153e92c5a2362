"""`uplift-diffusion serve` without a browser: the page's limits, its messages and the command's arguments (the page
itself is tested in Chromium in test_serve_browser.py)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
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
    ((600, 400), 1.5, "auto", None),  # 900x600 = 0.54 MP out
    ((600, 600), 2.5, "auto", 256),  # 1500x1500 = 2.25 MP out: tiles
])
def test_tile_size_follows_the_limits(upscaler, size, scale, tiles, expected):
    assert upscaler.tile_size_for(size, scale, tiles, "a.png") == expected


@pytest.mark.parametrize("size,scale,tiles,expected", [
    ((400, 400), 8, "auto", "would be 3200×3200 (10.2 MP), over this page's limit of 4.0 MP: choose 2× or 4×"),
    ((700, 700), 4, "512", "would be 2800×2800 (7.8 MP), over this page's limit of 4.0 MP: choose 2×"),
    ((400, 400), 4, "off", "too large to compute in one piece here (limit 1.0 MP): pick a tile size"),
    ((700, 700), 2.9, "auto", "2.9× of a.png (700×700) would be 2030×2030 (4.1 MP), over this page's limit"),
])
def test_too_large_results_are_refused_with_a_way_out(upscaler, size, scale, tiles, expected):
    with pytest.raises(app.PageError) as err:
        upscaler.tile_size_for(size, scale, tiles, "a.png")
    assert expected in str(err.value)


def test_the_pages_plan_counts_the_tiles_the_run_will_use(upscaler, tmp_path, monkeypatch):
    """"auto" tiles a large result: the progress bar's plan must be the tiled run's (a plan for the whole photo
    misses the tiles' extra work), and a photo the run will refuse takes no time on the bar."""
    from uplift_diffusion.app.layout import PageEvents

    asked = []
    monkeypatch.setattr(upscaler, "expected_plan",
                        lambda size, scale, tile_size=None, cancelled=None: asked.append((size, tile_size)) or 1.0)
    paths = []
    for name, size in (("small.png", (300, 200)), ("large.png", (400, 400)), ("huge.png", (700, 700))):
        Image.new("RGB", size).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    plans = PageEvents(upscaler, features=None).expected_plans(paths, 4, "auto")
    assert asked == [((300, 200), None), ((400, 400), 256)]  # 0.96 MP out whole, 2.56 MP in 256-px tiles
    assert plans == [1.0, 1.0, 0.0]  # 7.84 MP out: over the page's limit


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
    message = app.user_message(RuntimeError("/srv/models/secret.bin: out of memory"))
    assert "RuntimeError" in message and "/srv" not in message
    assert app.user_message(app.PageError("plain words")) == "plain words"


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
    import socket

    from uplift_diffusion import UPLiFTModel

    UPLiFTModel.from_preset("tiny-vae", in_channels=4).save_pretrained(tmp_path / "sd_upsampler")
    with socket.socket() as probe:  # a free port: the port is checked first, and 7860 may be another server's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--upsampler", str(tmp_path / "sd_upsampler"), "--port", str(port)]) == 2  # built-in VAE
    err = capsys.readouterr().err
    assert "does not fit the vae" in err and "Traceback" not in err


def test_serve_refuses_a_malformed_quality_file_in_one_line(tmp_path, capsys):
    import socket

    from uplift_diffusion import UPLiFTModel

    UPLiFTModel.from_preset("tiny-vae", in_channels=32).save_pretrained(tmp_path / "upsampler")
    (tmp_path / "upsampler" / "quality.json").write_text('{"model": "m"}')
    with socket.socket() as taken:  # were the file accepted, the page would fail to start, not serve forever
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["serve", "--upsampler", str(tmp_path / "upsampler"), "--port", str(taken.getsockname()[1])]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "quality.json is not a model quality file" in err and "Traceback" not in err


def test_serve_says_when_the_port_is_taken(capsys, monkeypatch):
    """Before the models load: the answer takes a second, not the model loading's."""
    import socket

    from uplift_diffusion.commands import loading

    monkeypatch.setattr(loading, "load_pair", lambda *a, **k: pytest.fail("loaded the models first"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and "pick another --port" in err


def test_an_empty_upload_is_called_empty(upscaler, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(app.PageError, match=r"empty.png is an empty file \(0 bytes\)"):
        upscaler.read(tmp_path / "empty.png")


def test_refusals_are_logged_as_one_line_and_bugs_with_their_traceback(caplog):
    with caplog.at_level("INFO", logger="uplift_diffusion.app"):
        app.user_message(app.PageError("x.png is 1×1 pixels"))
        app.user_message(RuntimeError("a real bug"))
    refused, failed = caplog.records
    assert refused.getMessage() == "request refused: x.png is 1×1 pixels" and refused.exc_info is None
    assert failed.levelname == "ERROR" and failed.exc_info is not None


def test_one_progress_bar_over_a_batch_with_the_time_left():
    reports, now = [], [0.0]
    bar = app.RequestProgress(lambda fraction, desc: reports.append((fraction, desc)), ["a.png", "b.png"],
                              [300.0, 100.0], min_interval=0, clock=lambda: now[0])
    bar.start_photo(0)
    now[0] = 3.0
    bar.work(150, "decoding")  # half of the first photo: 150 of 400 in all
    assert reports[-1] == (0.375, "a.png (1 of 2) · decoding · about 5 s left")
    bar.work(10_000)  # an estimate that was short never fills the photo's share before it is done
    assert reports[-1][0] == pytest.approx(0.99 * 300 / 400)
    bar.finish_photo(0)
    assert reports[-1] == (0.75, "a.png (1 of 2) · about 1 s left")  # the second photo's 100 at the pace: 1 s
    bar.start_photo(1)
    bar.work(0)  # the second photo starts where the first ended: one bar, no restart
    assert [f for f, _ in reports] == sorted(f for f, _ in reports) and reports[-1][0] == 0.75
    assert reports[-1][1].startswith("b.png (2 of 2)")
    bar.finish_photo(1)
    assert reports[-1] == (1.0, "b.png (2 of 2) · saving · about 1 s left")  # the finished photo is not left


def test_work_counter_counts_the_multiply_adds_of_convolutions_and_products():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    seen = []
    with torch.inference_mode(), app.WorkCounter(lambda total, part: seen.append(part),
                                                 {conv.weight.data_ptr(): "decoding"}) as counter:
        out = conv(torch.zeros(1, 4, 10, 10))
        torch.ones(5, 6) @ torch.ones(6, 7)
    assert counter.total == 8 * 10 * 10 * 4 * 3 * 3 + 5 * 7 * 6
    assert seen == ["decoding", None] and out.shape == (1, 8, 10, 10)


def test_work_counter_counts_the_fused_convolutions_of_the_fast_path():
    from uplift_diffusion import fast_paths

    if not fast_paths.capabilities().fused_conv_add_relu:
        pytest.skip("this torch build has no oneDNN conv + add")
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    residual = torch.randn_like(x)
    with torch.inference_mode(), app.WorkCounter(parts={conv.weight.data_ptr(): "decoding"}) as counter:
        fast_paths.conv_relu(x, conv, relu=True)  # conv + ReLU: one oneDNN op
        fast_paths.conv_add_relu_(residual, x, conv)  # conv + residual + ReLU, in place: one oneDNN op
    assert counter.total == 2 * 8 * 12 * 10 * 8 * 3 * 3  # both, each with its own output's multiply-adds


def test_the_zoom_goes_to_the_most_detailed_region():
    image = Image.new("L", (120, 80), 128)
    rng = np.random.default_rng(0)
    image.paste(Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)), (90, 50))  # texture, bottom right
    assert app.most_detailed_center(image, 20) == (100, 60)
    assert app.crop_box((240, 160), (230, 150), 64) == (176, 96, 240, 160)  # moved inside the image


def test_model_line_is_read_from_the_measured_numbers_not_made_up(tmp_path):
    from uplift_diffusion.builtin import builtin_upsampler_path, read_model_quality

    line = app.model_quality_line(read_model_quality(builtin_upsampler_path("taef2")), "x")
    assert line.startswith("**Model: uplift-taef2.** Measured on BSDS500 test50") and "bicubic low-res" in line
    assert "2× 28.79 dB / 0.866 vs 27.92 dB / 0.838" in line and "8× 21.92 dB / 0.504 vs 21.86 dB / 0.506" in line
    assert "python benchmarks/builtin_table.py" in line
    (tmp_path / "quality.json").write_text(
        '{"model": "my-model", "measurements": [{"dataset": "Kodak", "command": "make kodak", "results": ['
        '{"scale": 8, "low_res": "bicubic", "model": {"psnr": 21.5, "ssim": 0.6}, '
        '"pixel_bicubic": {"psnr": 20.0, "ssim": 0.5}}]}]}')
    assert app.model_quality_line(read_model_quality(tmp_path), "x") == (
        "**Model: my-model.** Measured on Kodak, bicubic low-res, PSNR / SSIM against pixel bicubic: 8× 21.50 dB / "
        "0.600 vs 20.00 dB / 0.500 (`make kodak`).")
    assert read_model_quality(tmp_path / "none") is None
    assert app.model_quality_line(None, "UPLiFT (model.safetensors)") == "**Model: UPLiFT (model.safetensors).**"
    (tmp_path / "quality.json").write_text('{"model": "m", "measurements": [{"dataset": "d"}]}')
    with pytest.raises(ValueError, match="quality.json is not a model quality file"):
        read_model_quality(tmp_path)


def test_examples_come_from_scikit_image_and_the_page_builds_without_it(monkeypatch):
    assert [p.name for p in app.example_photos()] == list(app.EXAMPLE_PHOTOS)
    monkeypatch.setitem(sys.modules, "skimage", None)  # not installed
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    assert app.example_photos() == []
    app.build_demo(app.PageUpscaler(pipeline=None), app.FeatureStrips.load(None))


def test_scale_is_any_number_from_1_to_8_in_the_api():
    radio = app.scale_radio(app.SCALE_CHOICES, value=2)
    assert radio.api_info()["type"] == "number" and radio.get_block_name() == "radio"
    assert radio.preprocess(4) == 4 and radio.preprocess("4") == 4 and radio.preprocess(4.0) == 4
    assert radio.preprocess(1.5) == 1.5 and radio.preprocess("3") == 3 and radio.preprocess("other") == "other"
    for wrong in (0.5, 9, float("nan"), "big", True, None):
        with pytest.raises(gr.Error, match="scale must be a number from 1 to 8"):
            radio.preprocess(wrong)
    assert not list(Path(app.__file__).parent.glob("*.pyi"))  # Gradio writes no stub beside the module


def test_download_all_zips_every_result_under_a_unique_name(upscaler, tmp_path):
    results = []
    for i, name in enumerate(["a_x2.png", "a_x2.png", "b_x2.png"]):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / name)
        results.append(app.UpscaleResult(name=name, input_size=(2, 2), output_size=(4, 4), seconds=0,
                                         output_png=folder / name, input_view=folder / name,
                                         bicubic_view=folder / name, tile_size=None))
    with zipfile.ZipFile(upscaler.zip_results(results, 2)) as archive:
        assert archive.namelist() == ["a_x2.png", "a_x2_2.png", "b_x2.png"]
        assert archive.read("a_x2_2.png") == results[1].output_png.read_bytes()


def test_the_bar_moves_by_expected_seconds_per_part_and_the_files_written():
    from uplift_diffusion.app.progress import SAVING, WorkPlan

    reports, now = [], [0.0]
    plan = WorkPlan({"UPLiFT": 100, "decoding": 100, SAVING: 1.0}, {"UPLiFT": 1.0, "decoding": 3.0, SAVING: 1.0})
    bar = app.RequestProgress(lambda fraction, desc: reports.append((fraction, desc)), ["a.png"], [plan],
                              min_interval=0, clock=lambda: now[0])
    bar.start_photo(0)
    assert reports[-1] == (0.0, "a.png · about 5 s left")  # before any work: the plan's seconds
    now[0] = 2.0
    bar.work(100, "UPLiFT")  # all of the upsampler: 1 s of the 5 s expected
    # the parts not yet seen (4 expected s) at the geometric mean of the plan's pace and this request's (2 s per s)
    assert reports[-1] == (pytest.approx(0.2), "a.png · UPLiFT · about 6 s left")
    bar.work(150, "decoding")  # half of the decoder (1.5 s more), at the expected pace
    now[0] = 2.0 + 1.5
    bar.work(200)  # an op without a named weight: still the decoder's
    assert reports[-1][0] == pytest.approx(0.8) and "decoding" in reports[-1][1]
    now[0] = 60.0
    bar.work(2 / 3, SAVING)  # two of the three files written: the bar moves while saving, never "0 s" before the end
    # The files took 56.5 s for two thirds of them: the last third at that part's own pace, blended (while the part
    # has less than PART_EVIDENCE_S of expected work behind it) with the prior, the geometric mean of the plan's pace
    # and the request's (60 s for 4.67 expected): (2/3 * 84.75 + 1/3 * 3.59) / 3 = 19.2 s.
    assert reports[-1][0] == pytest.approx(14 / 15) and reports[-1][1] == "a.png · saving · about 19 s left"
    bar.work(1.0, SAVING)
    assert reports[-1][0] == pytest.approx(0.99) and "about 1 s left" in reports[-1][1]
    cancelled = app.RequestProgress(lambda *a, **k: None, ["a.png"], [plan], cancelled=lambda: True)
    with pytest.raises(app.JobCancelled):
        cancelled.work(1, "UPLiFT")


def test_the_colour_correction_after_the_decoder_is_a_part_of_its_own():
    """A convolution on a kernel of no part right after the decoder (the colour correction's blur) starts the
    decoder's tail part; a matrix product without weights (attention) stays in the part it runs in."""
    import torch.nn.functional as F

    from uplift_diffusion.app.progress import WorkCounter

    weight, seen = torch.zeros(1, 1, 1, 1), []
    with WorkCounter(lambda total, part: seen.append(part), parts={weight.data_ptr(): "decoding"},
                     tails={"decoding": "finishing"}) as counter:
        x = torch.zeros(1, 1, 8, 8)
        F.conv2d(x, weight)
        torch.mm(torch.zeros(8, 8), torch.zeros(8, 8))  # a product in the decoder
        F.conv2d(x, torch.ones(1, 1, 3, 3) / 9, padding=1)  # a blur after it
        F.conv2d(x, torch.ones(1, 1, 3, 3) / 9, padding=1)
        F.conv2d(x, weight)  # the decoder again
    assert seen == ["decoding", None, "finishing", None, "decoding"]
    assert counter.macs_by_part["finishing"] == 2 * 64 * 9
    assert counter.macs_by_part["decoding"] == 2 * 64 + 8 * 8 * 8


def test_a_tiled_plan_grows_a_part_by_its_tiles_work_but_not_its_tail():
    """Ops after a part's last one on its own weights (an upsampler's last attention products, on no part's weights)
    are its tail: it keeps its seconds and its place at the end when the part's own ops grow in tiles."""
    import torch.nn.functional as F

    from uplift_diffusion.app.progress import SAVING, WorkCounter, WorkPlan

    weight = torch.zeros(1, 1, 1, 1)
    now = [0.0]
    with WorkCounter(clock=lambda: now[0], parts={weight.data_ptr(): "decoding"}) as counter:
        for kernel, seconds in ((weight, 3.0), (weight, 3.0), (torch.zeros(1, 1, 1, 1), 4.0)):  # the last: the tail
            now[0] += seconds
            F.conv2d(torch.zeros(1, 1, 8, 8), kernel)
    assert counter.named_ops["decoding"] == 2 and len(counter.ops_by_part["decoding"]) == 3
    plan = WorkPlan({"decoding": 192, SAVING: 1.0}, {"decoding": 10.0, SAVING: 1.0},
                    profiles=WorkPlan.profiles_of(counter), body_ops=dict(counter.named_ops))
    tiled = plan.tiled({"decoding": 1.5})
    assert tiled.macs["decoding"] == pytest.approx(128 * 1.5 + 64)  # two own ops 1.5x, the tail once
    assert tiled.seconds["decoding"] == pytest.approx(6.0 * 1.5 + 4.0)
    assert tiled.seconds[SAVING] == 1.0 and tiled.macs[SAVING] == 1.0
    # through the tiles the bar goes straight; the tail's 4 s come with its own multiply-adds, at the end
    assert tiled.position({"decoding": 96}) == pytest.approx(4.5)
    assert tiled.position({"decoding": 192}) == pytest.approx(9.0)
    assert tiled.position({"decoding": 192 + 32}) == pytest.approx(11.0)


def test_within_a_part_the_bar_follows_where_its_time_went_in_the_measured_run():
    import torch.nn.functional as F

    from uplift_diffusion.app.progress import SAVING, WorkCounter, WorkPlan

    # A decoder whose last layer has few multiply-adds per second (a full-resolution layer): measured once, its
    # profile says where the time goes, and the bar and the time left follow it instead of the multiply-adds.
    now = [0.0]
    counter = WorkCounter(clock=lambda: now[0])
    with counter:
        for size, seconds in ((8, 1.0), (8, 1.0), (32, 8.0)):  # the last conv: 16x the work, 8x the time
            now[0] += seconds
            F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, 1, 1))
    profiles = WorkPlan.profiles_of(counter)
    (macs, seconds), = profiles.values()
    assert macs == pytest.approx((0, 64 / 1152, 128 / 1152, 1)) and seconds == pytest.approx((0, 0.1, 0.2, 1))

    plain = WorkPlan({"decoding": 1152, SAVING: 1.0}, {"decoding": 10.0, SAVING: 1.0})
    profiled = WorkPlan({"decoding": 1152, SAVING: 1.0}, {"decoding": 10.0, SAVING: 1.0},
                        profiles={"decoding": profiles[None]})
    assert plain.position({"decoding": 128}) == pytest.approx(10 * 128 / 1152)  # 1.1 s: the bar runs behind
    assert profiled.position({"decoding": 128}) == pytest.approx(2.0)  # the first two layers' 2 s of the 10
    assert profiled.scaled(4).position({"decoding": 512}) == pytest.approx(8.0)  # a photo 4x the size
    # ... whose files are still one photo's: half of them written is half of its saving time (4 s of 8)
    assert profiled.scaled(4).position({"decoding": 1152 * 4, SAVING: 0.5}) == pytest.approx(40.0 + 2.0)
    reports, clock = [], [0.0]
    bar = app.RequestProgress(lambda fraction, desc: reports.append((fraction, desc)), ["a.png"], [profiled],
                              min_interval=0, clock=lambda: clock[0])
    bar.start_photo(0)
    clock[0] = 2.0
    bar.work(128, "decoding")  # on plan: 2 s of the 11 s, 9 s left
    assert reports[-1] == (pytest.approx(2 / 11), "a.png · decoding · about 9 s left")


def test_a_part_not_yet_seen_goes_at_the_plans_pace_or_halfway_to_the_requests():
    from uplift_diffusion.app.progress import SAVING, WorkPlan

    def left_after_a_fast_upsampler(calibrated: bool) -> str:
        reports, now = [], [0.0]
        plan = WorkPlan({"UPLiFT": 100, "decoding": 100, SAVING: 1.0}, {"UPLiFT": 4.0, "decoding": 10.0, SAVING: 1.0},
                        calibrated=calibrated)
        bar = app.RequestProgress(lambda fraction, desc: reports.append(desc), ["a.png"], [plan], min_interval=0,
                                  clock=lambda: now[0])
        bar.start_photo(0)
        now[0] = 2.0
        bar.work(100, "UPLiFT")  # the upsampler in half its planned time
        return reports[-1]

    # A plan measured on a photo: the upsampler ran twice as fast as when it was measured; the parts not yet seen are
    # expected at the geometric mean of the two paces (11 s at 0.71: a second run at a size skips the first run's
    # allocations, which the upsampler pays and the decoder much less).
    assert left_after_a_fast_upsampler(False).endswith("about 8 s left")
    # A plan from the calibration photos: the upsampler's error is its own; the decoder keeps its planned 10 s.
    assert left_after_a_fast_upsampler(True).endswith("about 11 s left")


def test_a_long_parts_slow_first_second_does_not_set_the_pace_of_the_rest():
    """A 30 s decoder whose first expected second takes 1.5 s (its first tile's buffers), then goes as planned: one
    second of evidence would put 14 s on its remaining 29 s; a tenth of the part's plan is what counts fully."""
    from uplift_diffusion.app.progress import SAVING, WorkPlan

    reports, now = [], [0.0]
    plan = WorkPlan({"decoding": 300, SAVING: 1.0}, {"decoding": 30.0, SAVING: 1.0}, calibrated=True)
    bar = app.RequestProgress(lambda fraction, desc: reports.append(desc), ["a.png"], [plan], min_interval=0,
                              clock=lambda: now[0])
    bar.start_photo(0)
    now[0] = 1.5
    bar.work(10, "decoding")  # the first expected second, half again as slow as planned
    real_left = 29.0 + 1.0  # the rest of the decoder as planned, then the files
    said = float(reports[-1].split("about ")[1].split(" s left")[0])
    assert said / real_left - 1 < 0.3  # one second of evidence alone said 44.5 s (+48 %)
    for step in range(1, 30):  # the rest at the planned pace: the estimate comes down to the truth
        now[0] = 1.5 + step
        bar.work(10 + 10 * step, "decoding")
    assert reports[-1].endswith("decoding · about 1 s left")  # the files at the calibrated plan's own pace


def test_a_plan_from_the_calibration_photos_gives_each_op_its_time_at_the_photos_size():
    import torch.nn.functional as F

    from uplift_diffusion.app.progress import OpCosts, WorkCounter

    def run(side: int) -> WorkCounter:  # two ops at a quarter of the resolution and one at full resolution
        now = [0.0]
        counter = WorkCounter(clock=lambda: now[0])
        with counter:
            for size in (side // 4, side // 4, side):
                x = torch.zeros(1, 1, size, size)
                now[0] += 0.1 + 1e-4 * 2 * x.numel()  # set-up, then time by the elements read and written
                F.conv2d(x, torch.zeros(1, 1, 1, 1))
        return counter

    costs = OpCosts.fit(run(32), 32 * 32, run(64), 64 * 64)
    (rate, per_op), = costs.rates.values()
    assert rate == pytest.approx(1e-4) and per_op == pytest.approx(0.1)
    (macs, small), = costs.profiles(32 * 32).values()
    (_, large), = costs.profiles(1024 * 1024).values()
    assert macs == pytest.approx((0, 1 / 18, 2 / 18, 1))
    assert small == pytest.approx((0, 0.1128 / 0.5304, 0.2256 / 0.5304, 1))  # at the calibration's own size
    assert large == pytest.approx((0, 13.2072 / 236.2296, 26.4144 / 236.2296, 1))  # the last op: 89 % of the time
    assert costs.longest(1024 * 1024) == pytest.approx(209.8152)


def test_a_decoder_plan_from_the_calibration_photos_gives_its_thin_last_layers_their_own_pace():
    import torch.nn.functional as F

    from uplift_diffusion.app.progress import OpCosts, WorkCounter

    wide, thin = torch.zeros(16, 16, 3, 3), torch.zeros(3, 16, 1, 1)

    def run(side: int) -> WorkCounter:  # a wide convolution at half resolution, then a thin one at full resolution
        now = [0.0]
        counter = WorkCounter(clock=lambda: now[0], parts={wide.data_ptr(): "decoding", thin.data_ptr(): "decoding"})
        with counter:
            x = torch.zeros(1, 16, side // 2, side // 2)
            now[0] += 0.1 + 1e-5 * 2 * x.numel()  # 72 multiply-adds per element streamed: fast per element
            F.conv2d(x, wide, padding=1)
            x = torch.zeros(1, 16, side, side)
            now[0] += 0.05 + 3e-5 * 19 / 16 * x.numel()  # 2.5 per element: three times slower per element
            F.conv2d(x, thin)
        return counter

    def last_op_share(costs: OpCosts, pixels: int) -> float:
        (_, seconds), = costs.profiles(pixels).values()
        return 1 - seconds[1]

    small, large = run(32), run(64)
    by_kind = OpCosts.fit(small, 32 * 32, large, 64 * 64, by_kind=("decoding",))
    assert by_kind.op_rates["decoding"] == [pytest.approx((1e-5, 0.1)), pytest.approx((3e-5, 0.05))]
    pixels = 1024 * 1024
    expected = (0.05 + 3e-5 * 19 * pixels) / (0.15 + 1e-5 * 8 * pixels + 3e-5 * 19 * pixels)
    assert last_op_share(by_kind, pixels) == pytest.approx(expected)  # 88 %
    one_line = OpCosts.fit(small, 32 * 32, large, 64 * 64)  # one line through both kinds: far too little
    assert last_op_share(one_line, pixels) < expected - 0.05


def test_a_visitor_who_left_before_their_job_started_does_not_keep_the_model_busy(upscaler, tmp_path):
    from types import SimpleNamespace

    from uplift_diffusion.app.layout import PageEvents

    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    events = PageEvents(upscaler, features=None)  # no pipeline: a job that started its work would fail otherwise
    visitor, other = SimpleNamespace(session_hash="left-early"), SimpleNamespace(session_hash="still-here")
    events.visitor_left(visitor)  # the page closed while its click was still queued
    updates = list(events.run_page([str(photo)], 2, None, True, "auto", "bicubic", request=visitor,
                                   progress=lambda *args, **kwargs: None))
    assert "cancelled" in str(updates[-1]).lower() and visitor.session_hash not in events.jobs
    run = events.run_page([str(photo)], 2, None, True, "auto", "bicubic", request=other, progress=lambda *a, **k: None)
    next(run)  # the busy update: the job is registered before it, so a Cancel from then on reaches it
    assert not events.jobs[other.session_hash].is_set()
    events.stop_job(other)
    assert "cancelled" in str(list(run)[-1]).lower() and not events.jobs


def test_the_last_seconds_are_said_in_tenths_never_under_one():
    from uplift_diffusion.app.progress import _time_left

    assert [_time_left(v) for v in (0.2, 1.46, 2.0, 2.96, 3.54, 4.96, 5.4, 12.4, 150.0)] == [
        "1 s", "1.5 s", "2 s", "3 s", "3.5 s", "5 s", "5 s", "12 s", "2.5 min"]


def test_the_librarys_refusals_reach_the_visitor_in_the_pages_words():
    from uplift_diffusion.utils.errors import InputError

    message = app.user_message(InputError("a 4000x3000 image at 4x needs about 40.0 GiB of memory; 8.0 GiB is "
                                          "available: use tiles (--tile-size 256, about 2.0 GiB)"))
    assert "40.0 GiB" in message and "Advanced → Tile size 256" in message and "Something went wrong" not in message


def test_between_counts_the_bar_goes_on_at_the_measured_pace_then_ever_slower_never_standing_still():
    import threading

    from uplift_diffusion.app.progress import SAVING, WorkPlan

    reports, now = [], [0.0]
    plan = WorkPlan({"decoding": 100, SAVING: 1.0}, {"decoding": 4.0, SAVING: 1.0}, longest=1.0)
    bar = app.RequestProgress(lambda fraction, desc: reports.append((fraction, desc)), ["a.png"], [plan],
                              min_interval=0, clock=lambda: now[0])
    bar.start_photo(0)
    now[0] = 4.0
    bar.work(50, "decoding")  # 2 expected seconds in 4 s: the pace is 2 s per expected second
    # 2 expected s of decoding at its own pace (2x) and 1 of saving, not yet seen, at the geometric mean of 2x and 1x
    assert reports[-1][1] == "a.png · decoding · about 5 s left"
    now[0] = 5.0
    bar.tick()  # one more second: half an expected second more
    assert reports[-1] == (pytest.approx(2.5 / 5), "a.png · decoding · about 4.4 s left")
    now[0] = 6.0
    bar.tick()  # the longest stretch measured (1 expected second) reached at the pace
    assert reports[-1][0] == pytest.approx(3 / 5)
    shown = []
    for second in range(7, 40):  # a long op (the machine got busy): the bar keeps moving, ever more slowly ...
        now[0] = float(second)
        bar.tick()
        shown.append(reports[-1][0])
    steps = np.diff([3 / 5, *shown])
    assert (steps >= 0.001).all() and (np.diff(steps) < 0).all(), steps  # >= 0.1 % (what the page shows) a second
    assert shown[-1] < 0.99  # ... never filling the photo's share before it is done
    # ... and the time left stays where the counts put it, less the op's expected length: not run down to "1 s".
    assert reports[-1][1] == "a.png · decoding · about 3.4 s left"
    before = reports[-1][0]
    bar.work(60)  # the op ended short of where the bar ran to: the bar does not move back ...
    assert reports[-1][0] == before
    now[0] = 40.0
    bar.tick()  # ... nor stand still: it goes on, slowly, until the counts catch up
    assert before < reports[-1][0] < 0.99
    bar.finish_photo(0)
    count = len(reports)
    bar.tick()  # the request is done: nothing more to move
    assert len(reports) == count and reports[-1][0] == 1.0

    # ``ticking``: a thread moves the bar while the work runs (in this thread's context, where gr.Progress looks).
    moved = threading.Event()
    ticked = app.RequestProgress(lambda fraction, desc: moved.set() if fraction > 0 else None, ["a.png"],
                                 [WorkPlan({None: 1.0}, {None: 100.0}, longest=50.0)], min_interval=0)
    ticked.start_photo(0)
    with ticked.ticking():
        assert moved.wait(timeout=30)


def test_a_plan_from_the_small_calibration_photo_does_not_scale_fixed_costs_with_the_pixels(tmp_path):
    """The first request's plan comes from a 64² calibration photo: the zoomed crops (capped in size) and each part's
    seconds per call must not grow with a large photo's pixels (they made the first job's time left read ~10 s long)."""
    from uplift_diffusion import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.app.progress import SAVING

    pipeline = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipeline.set_progress_bar_config(disable=True)
    upscaler = app.PageUpscaler(pipeline, workdir=tmp_path / "work")
    small = upscaler.expected_plan((64, 64), 2)
    large = upscaler.expected_plan((512, 512), 2)  # 64x the pixels
    assert set(large.seconds) == set(small.seconds) and SAVING in small.seconds
    assert all(large.macs[part] == pytest.approx(64 * small.macs[part]) for part in small.macs if part != SAVING)
    assert large.macs[SAVING] == small.macs[SAVING] == 1.0  # the fraction of its files written, at any size
    assert large.seconds[SAVING] < 0.9 * 64 * small.seconds[SAVING]  # the crops are as large for both
    assert large.total_seconds < 0.95 * 64 * small.total_seconds
    # Where the time falls along each part: from the calibration's ops at this size; not for a tiled run, whose ops
    # the untiled calibration did not see (its parts then spend their seconds evenly over their multiply-adds).
    assert large.calibrated and set(large.profiles) >= {"UPLiFT", "decoding"}
    tiled = upscaler.expected_plan((512, 512), 2, 256)
    # Through the tiles the decoder's time goes straight; the colour correction after it is a part of its own
    # (convolutions on kernels made per call), which tiles do not repeat.
    assert "decoding" not in tiled.profiles and large.macs["finishing"] > 0
    assert tiled.seconds["finishing"] == pytest.approx(large.seconds["finishing"])
    # The upsampler's tiles compute their overlaps once per tile: 3 tiles of 32 latents over 64 on each side.
    assert tiled.macs["UPLiFT"] == pytest.approx(1.5 ** 2 * large.macs["UPLiFT"])
    assert tiled.seconds["UPLiFT"] == pytest.approx(1.5 ** 2 * large.seconds["UPLiFT"])
    # The decoder's exact 512-px tiles compute their halos again: a few per cent more work.
    halos = pipeline.decoder_tile_work((512, 512), 2, 256)
    assert 1.02 < halos < 1.2
    assert tiled.seconds["decoding"] == pytest.approx(halos * large.seconds["decoding"])
    # ... every part as counted in a real tiled run (3 x 3 upsampler tiles of 16 latents over 40 x 32; 256-px encoder
    # tiles; 512-px decoder tiles over a 640 x 512 result)
    photo = Image.new("RGB", (320, 256))
    _, counter = upscaler._run(photo, 2, 128, True)
    planned = upscaler.expected_plan(photo.size, 2, 128).macs
    for part in ("encoding", "UPLiFT", "decoding"):
        assert counter.macs_by_part[part] == pytest.approx(planned[part], rel=0.005), part
    # (the colour correction's blur pads its borders: a larger share of the 64² calibration photo's work)
    assert counter.macs_by_part["finishing"] == pytest.approx(planned["finishing"], rel=0.03)


def test_the_finishing_is_timed_where_a_real_run_counts_it(tmp_path):
    """What follows the decoder is timed once at a realistic size, without the model: its parts must end where a real
    run's counts end them (the finishing at the colour correction's last convolution, the files after it), with
    the same ops along the finishing, or the bar's pace jumps when the finishing starts. The tiles do not touch
    the finishing: a tiled plan keeps its profile."""
    from uplift_diffusion import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.app.progress import SAVING, WorkPlan

    pipeline = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipeline.set_progress_bar_config(disable=True)
    upscaler = app.PageUpscaler(pipeline, workdir=tmp_path / "work")
    for _ in range(2):  # the first run makes the fast paths' weights, which only the second counts as the decoder's
        _, counter = upscaler._run(Image.new("RGB", (64, 48), "olive"), 2, None, True)
    real = WorkPlan.profiles_of(counter)["finishing"]
    pixels, seconds, profile = upscaler._time_finishing(2)
    assert 0.8e6 < pixels * 4 < 1.2e6 and set(seconds) == {"finishing", SAVING} and min(seconds.values()) > 0
    assert list(profile) == ["finishing"] and len(profile["finishing"][0]) == len(real[0]) == 3  # two convolutions
    assert profile["finishing"][0] == pytest.approx(real[0], abs=0.05)  # each its share of the multiply-adds
    plan = upscaler.expected_plan((640, 512), 2)  # the calibration times the finishing again
    assert plan.profiles["finishing"] == upscaler._finishing_profile[2]["finishing"]
    assert upscaler.expected_plan((640, 512), 2, 256).profiles["finishing"] == plan.profiles["finishing"]


def test_a_request_cancelled_while_the_page_calibrates_stops_the_calibration(tmp_path):
    """The first request at a scale waits for the calibration runs: leaving the page then stops them too, and the
    next request calibrates afresh."""
    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipeline = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipeline.set_progress_bar_config(disable=True)
    upscaler = app.PageUpscaler(pipeline, workdir=tmp_path / "work")
    with pytest.raises(app.JobCancelled):
        upscaler.expected_plan((64, 64), 2, cancelled=lambda: True)
    assert upscaler.expected_plan((64, 64), 2, cancelled=lambda: False).total_seconds > 0
