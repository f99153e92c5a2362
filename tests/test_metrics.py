"""Metrics of the generative benchmarks: Fréchet distance, FID backends, reference statistics, patch-FID crops,
SSIM / PSNR against scikit-image on real photos, CLIP score with a tiny CLIP, the latency protocol."""

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import SmallFeatures, tiny_clip
from PIL import Image
from scipy import linalg
from uplift_diffusion.eval.latency import measure_latency
from uplift_diffusion.eval.metrics import (
    FID,
    CLIPScorer,
    PairedMetrics,
    PatchFID,
    crop_boxes,
    frechet_distance,
    load_clip,
    psnr_per_image,
    ssim_per_image,
)


def _direct_fid(real_feats: np.ndarray, fake_feats: np.ndarray) -> float:
    mu1, mu2 = real_feats.mean(0), fake_feats.mean(0)
    s1, s2 = np.cov(real_feats, rowvar=False), np.cov(fake_feats, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    # diagonal (commuting) covariances: closed form |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-10)
    # full covariances: against a direct SciPy computation and torchmetrics' eigenvalue formula
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + np.eye(5), m2 @ m2.T + np.eye(5)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)
    from torchmetrics.image.fid import _compute_fid

    tm = _compute_fid(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(tm, rel=1e-7)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def _image_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (12, 3, 48, 48), generator=g, dtype=torch.uint8)
    fake = (real.float() * 0.6 + 40).to(torch.uint8)
    return real, fake


def test_fid_torchmetrics_backend_matches_direct_computation():
    real, fake = _image_sets()
    net = SmallFeatures()
    fid = FID("torchmetrics", feature_extractor=net)
    for chunk in real.split(5):
        fid.update(chunk, real=True)
    for chunk in fake.split(5):
        fid.update(chunk, real=False)
    with torch.no_grad():
        direct = _direct_fid(net(real).double().numpy(), net(fake).double().numpy())
    assert fid.compute() == pytest.approx(direct, rel=1e-4, abs=1e-6)
    assert fid.num_real == fid.num_fake == 12
    fid.reset_fake()  # keeps the real statistics
    fid.update(real, real=False)
    assert fid.compute() == pytest.approx(0.0, abs=1e-5)


def test_fid_clean_fid_backend_matches_direct_computation():
    from cleanfid.resize import build_resizer

    real, fake = _image_sets()
    for mode in ("clean", "legacy_pytorch"):
        net = SmallFeatures()
        fid = FID("clean-fid", mode=mode, feature_extractor=net)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        resize = build_resizer(mode)

        def feats(images, resize=resize, net=net):
            x = np.stack([resize(a) for a in images.permute(0, 2, 3, 1).numpy()]).transpose(0, 3, 1, 2)
            with torch.no_grad():
                return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()

        assert fid.compute() == pytest.approx(_direct_fid(feats(real), feats(fake)), rel=1e-6)


def test_reference_statistics_round_trip(tmp_path):
    real, fake = _image_sets()
    for backend in ("torchmetrics", "clean-fid"):
        first = FID(backend, feature_extractor=SmallFeatures())
        first.update(real, real=True)
        first.save_reference(tmp_path / f"{backend}.npz", key="set-a")
        first.update(fake, real=False)
        second = FID(backend, feature_extractor=SmallFeatures())
        assert not second.load_reference(tmp_path / f"{backend}.npz", key="set-b")  # other data: not reused
        assert second.load_reference(tmp_path / f"{backend}.npz", key="set-a")
        second.update(fake, real=False)
        assert second.compute() == pytest.approx(first.compute(), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        FID("clean-fid", feature_extractor=SmallFeatures()).compute()


def test_patch_fid_crops_same_positions():
    boxes = crop_boxes(1024, 1024, 512, 4, seed=0, index=3)
    assert boxes == crop_boxes(1024, 1024, 512, 4, seed=0, index=3)
    assert boxes != crop_boxes(1024, 1024, 512, 4, seed=0, index=4)
    assert all(0 <= t <= 512 and 0 <= left <= 512 for t, left in boxes)
    patch = PatchFID(FID("clean-fid", feature_extractor=SmallFeatures()), crop=16, num_crops=4, seed=0)
    images = torch.arange(2 * 3 * 40 * 40, dtype=torch.int32).reshape(2, 3, 40, 40)
    crops = patch.crops(images, [7, 8])
    assert crops.shape == (8, 3, 16, 16)
    t, left = crop_boxes(40, 40, 16, 4, 0, 8)[2]
    assert torch.equal(crops[6], images[1, :, t:t + 16, left:left + 16])
    with pytest.raises(ValueError, match="larger than the image"):
        crop_boxes(256, 256, 512, 4, 0, 0)


def _real_pairs(shared_dir):
    """Real photos (256² crops) and a degraded version of each (JPEG quality 20 + a brightness shift)."""
    import io

    pairs = []
    for name in ("kodak/kodim03.png", "kodak/kodim19.png", "photos/astronaut.png"):
        image = Image.open(shared_dir / "data" / name).convert("RGB").crop((100, 100, 356, 356))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=20)
        degraded = np.clip(np.asarray(Image.open(buffer)).astype(int) + 6, 0, 255).astype(np.uint8)
        pairs.append((np.asarray(image), degraded))
    return pairs


def test_ssim_psnr_match_scikit_image_on_real_photos(shared_dir):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = _real_pairs(shared_dir)
    target = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a, _ in pairs])
    preds = torch.stack([torch.from_numpy(b).permute(2, 0, 1) for _, b in pairs])
    ssim, psnr = ssim_per_image(preds, target), psnr_per_image(preds, target)
    for i, (a, b) in enumerate(pairs):
        ref_ssim = structural_similarity(b / 255.0, a / 255.0, data_range=1.0, channel_axis=-1,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ssim[i].item() - ref_ssim) < 1e-3
        assert abs(psnr[i].item() - peak_signal_noise_ratio(a / 255.0, b / 255.0, data_range=1.0)) < 0.01
    paired = PairedMetrics()
    paired.update(preds[:2], target[:2])
    paired.update(preds[2:], target[2:])
    result = paired.compute()
    assert result["psnr"] == pytest.approx(psnr.mean().item(), abs=1e-5)  # per image, then the mean
    pooled = 10 * torch.log10(1 / ((preds.float() - target.float()) / 255).pow(2).mean())
    assert abs(result["psnr"] - pooled.item()) > 1e-3  # not the PSNR of the pooled MSE
    with pytest.raises(ValueError, match="same shape"):
        ssim_per_image(preds[:, :, :100], target)


def test_clip_score_with_tiny_clip(tmp_path):
    model, processor = tiny_clip(tmp_path)
    scorer = CLIPScorer((model, processor))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 40, 48), generator=g, dtype=torch.uint8)
    captions = ["a cat", "a dog", "cat dog"]
    scorer.update(images[:2], captions[:2])
    scorer.update(images[2:], captions[2:])
    inputs = processor(text=captions, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inputs["input_ids"],
                                      attention_mask=inputs["attention_mask"]).pooler_output
    expected = (100 * torch.nn.functional.cosine_similarity(img, txt)).mean().clamp(min=0).item()
    assert scorer.compute() == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="captions"):
        scorer.update(images, captions[:2])


def _tiny_open_clip(tmp_path):
    """A tiny randomly initialised open_clip model registered as architecture ``tiny-test-clip``, its weights saved to
    a local file (no download: open_clip builds it from a config; its BPE tokenizer ships with the package)."""
    import json

    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    state = open_clip.create_model("tiny-test-clip").state_dict()
    state["text_projection"] = -state["text_projection"]  # random towers happen to disagree: make the score positive
    torch.save(state, tmp_path / "tiny.bin")
    return tmp_path / "tiny.bin"


def test_clip_score_with_open_clip_backend(tmp_path):
    import open_clip

    weights = _tiny_open_clip(tmp_path)
    scorer = CLIPScorer(f"open_clip:tiny-test-clip/{weights}")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 40, 48), generator=g, dtype=torch.uint8)
    captions = ["a cat", "a dog", "cat dog"]
    scorer.update(images[:2], captions[:2])
    scorer.update(images[2:], captions[2:])
    # Direct: open_clip's own preprocessing, tokenizer and encoders on the same weights.
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-test-clip", pretrained=str(weights))
    pixels = torch.stack([preprocess(PIL.Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    with torch.no_grad():
        img = model.eval().encode_image(pixels)
        txt = model.encode_text(open_clip.get_tokenizer("tiny-test-clip")(captions))
    per_image = 100 * torch.nn.functional.cosine_similarity(img, txt)
    assert per_image.mean() > 0  # the floor at 0 does not hide the comparison
    assert scorer.compute() == pytest.approx(per_image.mean().item(), abs=1e-3)
    with pytest.raises(ValueError, match="ARCH/PRETRAINED"):
        CLIPScorer("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        CLIPScorer("open_clip:no-such-arch/openai")
    with pytest.raises(ValueError, match="could not load open_clip"):
        CLIPScorer(f"open_clip:tiny-test-clip/{tmp_path / 'missing.bin'}")


def test_missing_weights_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(OSError, match="weights-inception-2015-12-05-6726825d.pth"):
            FID("torchmetrics")
    finally:
        torch.hub.set_dir(previous)
    with pytest.raises(OSError, match="inception-2015-12-05.pt"):
        FID("clean-fid", mode="clean", weights=tmp_path)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        FID("clean-fid", mode="legacy_pytorch", weights=tmp_path)
    bad = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        FID("torchmetrics", weights=bad)
    with pytest.raises(OSError, match="--clip-model DIR"):
        load_clip(str(tmp_path / "no-clip-here"))
    with pytest.raises(ValueError, match="backend"):
        FID("pytorch-fid")


def test_latency_protocol_counts_calls():
    calls = []
    result = measure_latency(lambda: calls.append(1), device="cpu", dtype=torch.float32, batch_size=4)
    assert len(calls) == 3 + 10
    assert result["warmup"] == 3 and result["iterations"] == 10 and result["device"] == "cpu"
    assert result["dtype"] == "float32" and result["seconds_per_image"] == pytest.approx(result["mean_s"] / 4)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, iterations=0)


def test_grid_ratio_sees_a_decoded_latent_mesh_and_not_blur(shared_dir):
    """The latent-grid score on a real photo: against itself 1; its bicubic 4x round trip (soft, no mesh) near 1;
    taef2's round trip near 1; taef2 decoding *smoothed* latents (2x average-pooled, bilinear back: what a weak
    latent upsampler hands the decoder) gives the 8-pixel mesh, which must score far above 1."""
    from uplift_diffusion.eval.metrics import grid_peak_per_image, grid_ratio_per_image

    from uplift_diffusion.backbones.vae import decode_latents, encode_latents
    from uplift_diffusion.builtin import load_builtin_vae

    photo = Image.open(shared_dir / "data/kodak/kodim08.png").convert("RGB").crop((128, 128, 384, 384))
    hr = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None]  # uint8 [1, 3, 256, 256]
    soft = photo.resize((64, 64), Image.BICUBIC).resize(photo.size, Image.BICUBIC)
    soft = torch.from_numpy(np.asarray(soft).copy()).permute(2, 0, 1)[None]
    vae = load_builtin_vae("taef2")
    with torch.no_grad():
        latents = encode_latents(vae, hr.float() / 255)  # [1, 32, 32, 32]
        smoothed = F.interpolate(F.avg_pool2d(latents, 2), scale_factor=2, mode="bilinear")
        round_trip, mesh = (decode_latents(vae, z).clamp(0, 1) for z in (latents, smoothed))
    assert float(grid_ratio_per_image(hr, hr)) == pytest.approx(1.0)
    assert 0.8 < float(grid_ratio_per_image(soft, hr)) < 1.4
    assert 0.8 < float(grid_ratio_per_image(round_trip, hr)) < 1.2
    assert float(grid_ratio_per_image(mesh, hr)) > 2.0
    assert grid_peak_per_image(torch.cat([hr, soft])).shape == (2,)
