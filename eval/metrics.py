"""Image-quality metrics of the paper's generative benchmarks (appendix B.2; the CFM / FMBoost protocol).

- :class:`FID`: Fréchet Inception Distance streamed over uint8 batches. Backend ``"torchmetrics"`` is the protocol's
  ``FrechetInceptionDistance(feature=2048, normalize=False)`` with ``antialias=False`` (FMBoost predates the antialias
  option); backend ``"clean-fid"`` uses clean-fid's Inception and resizers (modes ``"clean"`` and
  ``"legacy_pytorch"``). The real set's statistics can be saved to / loaded from an ``.npz`` file and reused.
- patch-FID: :func:`crop_boxes` gives 4 random 512² crops per image pair, at the *same* positions in the real and the
  generated image, from a fixed seed (:class:`PatchFID`).
- :class:`PairedMetrics`: per-image PSNR (clamped [0, 1], ``dim=(1, 2, 3)``) and SSIM (Gaussian SSIM map with its
  5-pixel border cropped, as torchmetrics computed it before PR #2721 and as scikit-image does), each averaged over
  images.
- :class:`CLIPScorer`: CLIP score through torchmetrics ``CLIPScore``: transformers' ViT-B/32 (the paper's protocol,
  default) or any open_clip model (``open_clip:ARCH/PRETRAINED``).
- :func:`frechet_distance`: the distance between two Gaussians (SciPy ``sqrtm``), used by the clean-fid backend.

Every network weight file can be given as a local path; when it is missing and cannot be downloaded, the error names
the exact file to supply.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object, reduce
from torch import nn

from uplift_diffusion.color import luma
from uplift_diffusion.utils.errors import InputError, InputNotFoundError, UnavailableError
from uplift_diffusion.utils.io import atomic_write

FID_BACKENDS = ("torchmetrics", "clean-fid")
CLEANFID_MODES = ("clean", "legacy_pytorch")
SSIM_BORDER = 5  # (kernel_size 11 - 1) / 2: the border torchmetrics < 1.6 cropped from the SSIM map

# The Inception weight files each backend needs (name, where it comes from).
TORCHMETRICS_INCEPTION = (
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
CLEANFID_INCEPTION = {
    "clean": ("inception-2015-12-05.pt",
              "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    "legacy_pytorch": ("pt_inception-2015-12-05-6726825d.pth",
                       "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                       "pt_inception-2015-12-05-6726825d.pth"),
}
CLIP_MODEL = "openai/clip-vit-base-patch32"


def _missing_weights(what: str, filename: str, url: str, flag: str) -> OSError:
    return UnavailableError(f"{what} weights are not available offline: download {filename} from {url} and pass "
                            f"its path with {flag}")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float in [0, 1] -> uint8 in [0, 255] for the FID / KID / CLIP inputs: truncating, as the
    protocol's ``un_normalize_ims`` (images everywhere else are rounded: ``utils.image_ops.float_to_uint8``); uint8
    input is returned unchanged."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}")
    return (images.clamp(0, 1) * 255).to(torch.uint8)


def _check_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be a [B, 3, H, W] tensor, got {got}")
    return images


# ---------------------------------------------------------------------------------------------------- Fréchet distance
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians (float64).

    Uses ``scipy.linalg.sqrtm`` without the ``disp`` argument (deprecated in SciPy 1.17, removed in 1.18); a nearly
    singular product gets ``eps`` added to both diagonals, as pytorch-fid / clean-fid do.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise InputError(f"mismatched Gaussian statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / "
                         f"{sigma2.shape}")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise of sqrtm on a PSD product
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class GaussianStats:
    """Streaming mean and covariance (float64 sums) of feature vectors."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.sum = None if dim is None else np.zeros(dim)
        self.outer = None if dim is None else np.zeros((dim, dim))

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, np.float64).reshape(len(features), -1)
        if self.sum is None:
            self.sum, self.outer = np.zeros(features.shape[1]), np.zeros((features.shape[1],) * 2)
        self.sum += features.sum(0)
        self.outer += features.T @ features
        self.n += len(features)

    def merge(self, other: GaussianStats) -> None:
        """Add the features that ``other`` saw (another process's share of the same set)."""
        if other.n:
            self.sum = other.sum.copy() if self.sum is None else self.sum + other.sum
            self.outer = other.outer.copy() if self.outer is None else self.outer + other.outer
            self.n += other.n

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise InputError(f"FID needs at least 2 images in each set, got {self.n}")
        mu = self.sum / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


# ---------------------------------------------------------------------------------------------------- FID
def _torchmetrics_weights(weights: str | os.PathLike | None) -> str | None:
    """A verified local path for torch-fidelity's Inception, or None when its cached download exists."""
    filename, url = TORCHMETRICS_INCEPTION
    if weights is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if cached.is_file():
            return None
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise _missing_weights("FID Inception (torchmetrics)", filename, url, "--inception-weights FILE")
        return None  # torch-fidelity downloads it (failures are reported by the caller)
    path = Path(weights)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise InputNotFoundError(f"Inception weights not found at {path}; the torchmetrics backend needs {filename} "
                                f"({url})")
    # torch-fidelity reads the file with weights_only=False; refuse anything that is not a plain state dict first.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path} is not a plain PyTorch state dict of {filename} ({type(err).__name__})") from None
    return str(path)


class _CleanFIDFeatures(nn.Module):
    """clean-fid's resizing (per image, on CPU, as clean-fid does) followed by its Inception: uint8 [B, 3, H, W] ->
    [B, 2048]; ``extractor`` replaces the Inception (it receives float [B, 3, 299, 299] in [0, 255])."""

    def __init__(self, mode: str, weights: str | os.PathLike | None, extractor: nn.Module | None):
        super().__init__()
        from cleanfid.resize import build_resizer

        self.resize = build_resizer(mode)
        self.mode = mode
        self.net = extractor if extractor is not None else self._inception(mode, weights)

    @staticmethod
    def _inception(mode: str, weights) -> nn.Module:
        filename, url = CLEANFID_INCEPTION[mode]
        path = Path(weights) if weights is not None else None
        if path is not None and path.is_dir():
            path = path / filename
        if mode == "clean":
            from cleanfid.inception_torchscript import InceptionV3W

            path = path or Path(tempfile.gettempdir()) / filename  # clean-fid's own download location
            if not path.is_file():
                raise _missing_weights(f"clean-fid ({mode}) Inception", filename, url, "--inception-weights FILE")
            if path.name != filename:
                raise InputError(f"clean-fid expects the TorchScript file to be named {filename}, got {path.name}")
            return InceptionV3W(str(path.parent), download=False).eval()
        from cleanfid.inception_pytorch import InceptionV3

        if path is None:
            try:
                return InceptionV3(output_blocks=[3], resize_input=False).eval()
            except Exception as err:
                raise _missing_weights(f"clean-fid ({mode}) Inception", filename, url,
                                       "--inception-weights FILE") from err
        if not path.is_file():
            raise InputNotFoundError(f"Inception weights not found at {path}; clean-fid {mode} needs {filename}")
        # clean-fid fetches the file through torch.hub: point a private hub folder at the local copy.
        previous = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            (Path(hub) / "checkpoints").mkdir()
            os.symlink(path.resolve(), Path(hub) / "checkpoints" / filename)
            torch.hub.set_dir(hub)
            try:
                return InceptionV3(output_blocks=[3], resize_input=False).eval()
            finally:
                torch.hub.set_dir(previous)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        batch = np.stack([self.resize(a) for a in arrays]).transpose(0, 3, 1, 2)  # [B, 3, 299, 299] in [0, 255]
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.to(next(self.net.parameters(), torch.empty(0)).device)
        if isinstance(self.net, nn.Module) and type(self.net).__name__ == "InceptionV3":
            return self.net(x / 255)[0].flatten(1)
        return self.net(x).flatten(1)


class FID:
    """Streaming FID between real and generated uint8 images (``update(images, real=...)``, then :meth:`compute`).

    Args:
        backend (`str`, defaults to ``"torchmetrics"``): ``"torchmetrics"`` (the paper's protocol:
            ``FrechetInceptionDistance(feature=2048, normalize=False, antialias=False)``) or ``"clean-fid"``.
        mode (`str`, defaults to ``"clean"``): clean-fid mode, ``"clean"`` or ``"legacy_pytorch"``.
        weights (`str`, *optional*): local Inception weight file (or a folder holding it): torchmetrics
            ``weights-inception-2015-12-05-6726825d.pth``, clean-fid ``inception-2015-12-05.pt`` (clean) or
            ``pt_inception-2015-12-05-6726825d.pth`` (legacy_pytorch).
        feature_extractor (`nn.Module`, *optional*): replaces the Inception network. For the torchmetrics backend it
            receives uint8 [B, 3, H, W] images; for clean-fid float [B, 3, 299, 299] in [0, 255] after clean-fid's
            resize. It must return [B, D] features.
        device (`str` or `torch.device`, defaults to ``"cpu"``).
    """

    def __init__(self, backend: str = "torchmetrics", mode: str = "clean", weights: str | None = None,
                 feature_extractor: nn.Module | None = None, device: str | torch.device = "cpu"):
        if backend not in FID_BACKENDS:
            raise InputError(f"FID backend must be one of {FID_BACKENDS}, got {backend!r}")
        if backend == "clean-fid" and mode not in CLEANFID_MODES:
            raise InputError(f"clean-fid mode must be one of {CLEANFID_MODES}, got {mode!r}")
        self.backend, self.mode, self.device = backend, mode, torch.device(device)
        self.custom = feature_extractor is not None
        if backend == "torchmetrics":
            from torchmetrics.image.fid import FrechetInceptionDistance

            path = None if self.custom else _torchmetrics_weights(weights)
            try:
                self.metric = FrechetInceptionDistance(
                    feature=feature_extractor if self.custom else 2048, normalize=False, antialias=False,
                    reset_real_features=False, feature_extractor_weights_path=path,
                    sync_on_compute=False,  # processes combine their shares in gather(), never behind our back
                ).to(self.device)
            except (OSError, RuntimeError) as err:
                if self.custom or weights is not None:
                    raise
                raise _missing_weights("FID Inception (torchmetrics)", *TORCHMETRICS_INCEPTION,
                                       "--inception-weights FILE") from err
        else:
            self.features = _CleanFIDFeatures(mode, weights, feature_extractor).to(self.device)
            self.real, self.fake = GaussianStats(), GaussianStats()

    @property
    def name(self) -> str:
        extractor = "custom" if self.custom else "inception"
        return f"{self.backend}" + (f"-{self.mode}" if self.backend == "clean-fid" else "") + f"-{extractor}"

    @property
    def num_real(self) -> int:
        return int(self.metric.real_features_num_samples) if self.backend == "torchmetrics" else self.real.n

    @property
    def num_fake(self) -> int:
        return int(self.metric.fake_features_num_samples) if self.backend == "torchmetrics" else self.fake.n

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch: uint8 [B, 3, H, W] in [0, 255] (float [0, 1] batches are converted with :func:`to_uint8`)."""
        images = to_uint8(_check_batch(images)).to(self.device)
        if self.backend == "torchmetrics":
            self.metric.update(images, real=real)
        else:
            (self.real if real else self.fake).update(self.features(images).double().cpu().numpy())

    def compute(self) -> float:
        if min(self.num_real, self.num_fake) < 2:
            raise InputError(f"FID needs at least 2 real and 2 generated images, got {self.num_real} real and "
                             f"{self.num_fake} generated")
        if self.backend == "torchmetrics":
            return float(self.metric.compute())
        return frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())

    def gather(self, real: bool) -> None:
        """Under ``accelerate launch``, where each process added its share of the images: every process's real (or
        generated) statistics summed into each one's (a collective: every process calls it; one process: no-op)."""
        if self.backend == "torchmetrics":
            names = [f"{'real' if real else 'fake'}_features_{n}" for n in ("sum", "cov_sum", "num_samples")]
            total = reduce({n: getattr(self.metric, n) for n in names}, reduction="sum")
            for name in names:
                setattr(self.metric, name, total[name])
        else:
            merged = GaussianStats()
            for part in gather_object([self.real if real else self.fake]):
                merged.merge(part)
            setattr(self, "real" if real else "fake", merged)

    def reset_fake(self) -> None:
        """Forget the generated images (keep the real statistics) to score another method against the same set."""
        if self.backend == "torchmetrics":
            self.metric.reset()  # reset_real_features=False keeps the real statistics
        else:
            self.fake = GaussianStats()

    # reference statistics -------------------------------------------------------------------------------------------
    def _real_state(self) -> dict[str, np.ndarray]:
        if self.backend == "torchmetrics":
            m = self.metric
            return dict(sum=m.real_features_sum.cpu().numpy(), outer=m.real_features_cov_sum.cpu().numpy(),
                        n=np.array(int(m.real_features_num_samples)))
        return dict(sum=self.real.sum, outer=self.real.outer, n=np.array(self.real.n))

    def save_reference(self, path: str | os.PathLike, key: str) -> None:
        """Write the real set's statistics to ``path`` (``.npz``), tagged with this metric's name and ``key`` (what
        the real set is: dataset, size, count)."""
        state = self._real_state()
        if state["sum"] is None or int(state["n"]) < 2:
            raise InputError("no real statistics to save (update the metric with real=True first)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, **state, metric=np.array(self.name), key=np.array(key)))

    def load_reference(self, path: str | os.PathLike, key: str) -> bool:
        """Load real statistics saved by :meth:`save_reference`; False (nothing loaded) when the file is missing or
        was made by another metric / for another ``key``."""
        path = Path(path)
        if not path.is_file():
            return False
        with np.load(path) as data:
            if str(data["metric"]) != self.name or str(data["key"]) != key:
                return False
            total, outer, n = data["sum"], data["outer"], int(data["n"])
        if self.backend == "torchmetrics":
            m = self.metric
            if total.shape != tuple(m.real_features_sum.shape):
                return False
            m.real_features_sum = torch.from_numpy(total).to(m.real_features_sum)
            m.real_features_cov_sum = torch.from_numpy(outer).to(m.real_features_cov_sum)
            m.real_features_num_samples = torch.tensor(n, device=m.real_features_sum.device)
        else:
            self.real = GaussianStats()
            self.real.sum, self.real.outer, self.real.n = total, outer, n
        return True


def crop_boxes(height: int, width: int, crop: int, num: int, seed: int, index: int) -> list[tuple[int, int]]:
    """``num`` random (top, left) corners of ``crop``² windows in an image of ``height`` x ``width``; deterministic in
    (``seed``, ``index``) so that a real image and its generated counterpart, and reruns, get the same positions."""
    if crop > min(height, width):
        raise InputError(f"patch-FID crop {crop} is larger than the image ({height}x{width})")
    rng = np.random.default_rng([seed, index])
    tops = rng.integers(0, height - crop + 1, size=num)
    lefts = rng.integers(0, width - crop + 1, size=num)
    return [(int(t), int(left)) for t, left in zip(tops, lefts, strict=True)]


class PatchFID:
    """patch-FID: FID over ``num_crops`` random ``crop``² windows per image, at the same positions in the real and the
    generated image of a pair (positions from ``seed`` and the image's index).

    Args:
        fid ([`FID`]): the accumulator the crops go to.
        crop (`int`, defaults to 512), num_crops (`int`, defaults to 4), seed (`int`, defaults to 0).
    """

    def __init__(self, fid: FID, crop: int = 512, num_crops: int = 4, seed: int = 0):
        self.fid, self.crop, self.num_crops, self.seed = fid, crop, num_crops, seed

    def crops(self, images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """[B, 3, H, W] -> [B * num_crops, 3, crop, crop] at the positions of each image's index."""
        _check_batch(images)
        if len(indices) != images.shape[0]:
            raise InputError(f"{len(indices)} indices for {images.shape[0]} images")
        h, w, c = images.shape[-2], images.shape[-1], self.crop
        out = [img[:, top:top + c, left:left + c]
               for img, i in zip(images, indices, strict=True)
               for top, left in crop_boxes(h, w, c, self.num_crops, self.seed, i)]
        return torch.stack(out)

    def update(self, images: torch.Tensor, indices: Sequence[int], real: bool) -> None:
        self.fid.update(self.crops(images, indices), real=real)

    def compute(self) -> float:
        return self.fid.compute()


# ---------------------------------------------------------------------------------------------------- SSIM / PSNR
def ssim_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian SSIM (kernel 11, sigma 1.5, data range 1) per image, the mean of the map with its 5-pixel border
    cropped (= scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``). Images are uint8 or float [B, 3, H, W] in [0, 1] (clamped), computed in float32
    (float64 convolutions are ~7x slower on CPU); returns [B]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    preds, target = _paired(preds, target)
    b = SSIM_BORDER
    if min(preds.shape[-2:]) <= 2 * b:
        raise InputError(f"SSIM needs images larger than {2 * b}x{2 * b}, got {tuple(preds.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        preds, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none",
        return_full_image=True,
    )
    return ssim_map[..., b:-b, b:-b].mean(dim=(1, 2, 3))


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image on clamped [0, 1] images (``dim=(1, 2, 3)``); returns [B] (inf if identical)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    preds, target = _paired(preds, target)
    return peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3), reduction="none")


def _paired(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_batch(preds, "preds"), _check_batch(target, "target")
    if preds.shape != target.shape:
        raise InputError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same shape")
    return _unit(preds), _unit(target)


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float images -> float32 in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float().clamp(0, 1)


def saturation_per_image(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation ``(max - min) / max`` over the pixels of uint8 or float [B, 3, H, W] images; returns [B]."""
    x = _check_batch(images)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    hi, lo = x.amax(dim=1), x.amin(dim=1)  # [B, H, W]
    return torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-8), torch.zeros_like(hi)).mean(dim=(1, 2))


def contrast_per_image(images: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the luma (Rec. 601: 0.299 R + 0.587 G + 0.114 B, in [0, 1]) per image; returns [B]."""
    x = _check_batch(images)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return luma(x).flatten(1).std(dim=1)


def colour_ratios_per_image(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(saturation ratio, contrast ratio) of ``preds`` over ``target`` per image: 1 is faithful, < 1 washed out /
    flat, > 1 oversaturated / harsh. Grey or flat targets (nothing to compare against) give 1."""
    preds, target = _paired(preds, target)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(b > 1e-6, a / b.clamp_min(1e-6), torch.ones_like(a))

    return (ratio(saturation_per_image(preds), saturation_per_image(target)),
            ratio(contrast_per_image(preds), contrast_per_image(target)))


def grid_peak_per_image(images: torch.Tensor, period: int = 8) -> torch.Tensor:
    """How much each image's luma spectrum peaks on the harmonics of a ``period``-pixel grid (both axes, DC
    excluded): their power over the mean power of the frequency lines 2 and 3 bins beside them. A VAE's latent grid
    (8 pixels) decoded from imperfect latents shows up as such peaks; blur lowers peaks and neighbours alike, so a
    soft image scores like a sharp one. Photos score about 1; divide by the original's score
    (:func:`grid_ratio_per_image`). uint8 or float [B, 3, H, W] in [0, 1]; returns [B]."""
    rgb = _unit(_check_batch(images))
    y = luma(rgb)  # [B, H, W]
    spectrum = torch.fft.fft2(y - y.mean((-1, -2), keepdim=True)).abs().square()
    peak = torch.zeros(len(y))
    side = torch.zeros(len(y))
    for dim in (-1, -2):
        n = y.shape[dim]
        lines = torch.tensor([k * n // period for k in range(1, period) if (k * n) % period == 0], dtype=torch.long)
        if len(lines) == 0:
            continue
        power = spectrum.sum(dim=-2 if dim == -1 else -1)  # [B, n]: the power of each frequency line along ``dim``
        peak += power[:, lines].sum(-1)
        side += sum(power[:, (lines + o) % n].sum(-1) for o in (-3, -2, 2, 3)) / 4
    return peak / side.clamp_min(1e-12)


def grid_ratio_per_image(preds: torch.Tensor, target: torch.Tensor, period: int = 8) -> torch.Tensor:
    """:func:`grid_peak_per_image` of ``preds`` over the original's: 1 = no more latent grid than the photo has;
    a visible mesh scores well above 1 (about 1.7-2.9 for the first built-in taef2 model at 4x-8x)."""
    preds, target = _paired(preds, target)
    return grid_peak_per_image(preds, period) / grid_peak_per_image(target, period)


class PairedMetrics:
    """SSIM, PSNR, the colour ratios (saturation and contrast over the target's) and the latent-grid ratio
    (:func:`grid_ratio_per_image`) per image, averaged over all images seen (``update(preds, target)``,
    :meth:`compute`)."""

    KEYS = ("ssim", "psnr", "saturation_ratio", "contrast_ratio", "grid_ratio")

    def __init__(self):
        self.scores: dict[str, list[float]] = {key: [] for key in self.KEYS}

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        saturation, contrast = colour_ratios_per_image(preds, target)
        for key, values in zip(self.KEYS, (ssim_per_image(preds, target), psnr_per_image(preds, target), saturation,
                                           contrast, grid_ratio_per_image(preds, target)), strict=True):
            self.scores[key] += values.tolist()

    @property
    def ssim(self) -> list[float]:
        return self.scores["ssim"]

    @property
    def psnr(self) -> list[float]:
        return self.scores["psnr"]

    def gather(self) -> None:
        """Under ``accelerate launch``: every process's per-image scores (a collective; one process: no-op)."""
        self.scores = {key: gather_object(values) for key, values in self.scores.items()}

    def compute(self) -> dict[str, float]:
        if not self.scores["ssim"]:
            raise InputError("no image pairs were added")
        return {key: float(np.mean(values)) for key, values in self.scores.items()}


# ---------------------------------------------------------------------------------------------------- CLIP score
class _CLIPFeatures(nn.Module):
    """A transformers CLIPModel whose ``get_*_features`` return tensors (transformers 5 returns ModelOutputs, which
    torchmetrics 1.9's CLIPScore cannot use)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_clip(model: str = CLIP_MODEL) -> tuple[nn.Module, object]:
    """A CLIP model and processor from a local folder or the Hub (``openai/clip-vit-base-patch32`` by default)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(model).eval(), CLIPProcessor.from_pretrained(model)
    except OSError as err:
        raise UnavailableError(f"could not load CLIP {model!r} ({str(err).splitlines()[0][:120]}); offline, download "
                      f"{CLIP_MODEL} (config.json, model.safetensors, preprocessor_config.json, tokenizer.json / "
                      f"vocab.json + merges.txt) and pass the folder with --clip-model DIR") from None


OPEN_CLIP_PREFIX = "open_clip:"


class _OpenCLIPFeatures(nn.Module):
    """An open_clip model with the ``get_image_features`` / ``get_text_features`` that torchmetrics' CLIPScore calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = None  # no ``text_config``: the tokenizer already truncates to the model's context length

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class _OpenCLIPProcessor:
    """open_clip's image transform and tokenizer behind the processor call that torchmetrics' CLIPScore makes."""

    def __init__(self, preprocess, tokenizer):
        self.preprocess, self.tokenizer = preprocess, tokenizer

    def __call__(self, text=None, images=None, return_tensors: str = "pt", padding: bool = True) -> dict:
        from PIL import Image

        if images is not None:  # uint8 [3, H, W] tensors
            pils = [Image.fromarray(image.permute(1, 2, 0).cpu().numpy()) for image in images]
            return {"pixel_values": torch.stack([self.preprocess(pil) for pil in pils])}
        tokens = self.tokenizer(list(text))
        return {"input_ids": tokens, "attention_mask": (tokens != 0).long()}


def load_open_clip(spec: str) -> tuple[nn.Module, object]:
    """A torchmetrics-ready CLIP model and processor from open_clip.

    Args:
        spec (`str`): ``"open_clip:ARCH/PRETRAINED"``: an open_clip architecture and its pretrained tag, e.g.
            ``open_clip:ViT-B-32/openai`` or ``open_clip:ViT-g-14/laion2b_s34b_b88k`` (downloaded by open_clip), or
            a local weights file in place of the tag (``open_clip:ViT-B-32//models/open_clip_model.safetensors``).
    """
    import open_clip

    arch, _, pretrained = spec.removeprefix(OPEN_CLIP_PREFIX).partition("/")
    if not arch or not pretrained:
        raise ValueError(f"open_clip models are named open_clip:ARCH/PRETRAINED (e.g. open_clip:ViT-B-32/openai), "
                         f"got {spec!r}")
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r} in {spec!r}; e.g. ViT-B-32, ViT-L-14, ViT-g-14")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except RuntimeError as err:  # unknown tag, or a file that does not fit the architecture
        raise ValueError(f"could not load open_clip {spec!r}: {str(err).splitlines()[0][:200]}") from None
    except OSError as err:  # offline / not on the Hub
        raise OSError(f"could not fetch open_clip weights {spec!r} ({str(err).splitlines()[0][:120]}); offline, "
                      f"download them and pass open_clip:{arch}/PATH_TO_WEIGHTS") from None
    processor = _OpenCLIPProcessor(preprocess, open_clip.get_tokenizer(arch))
    return _OpenCLIPFeatures(model.eval()), processor


class CLIPScorer:
    """CLIP score (``100 * cos(image, caption)``, averaged, floored at 0) with torchmetrics ``CLIPScore``.

    Args:
        model (`str` or `tuple`, defaults to ``"openai/clip-vit-base-patch32"``): a transformers CLIP Hub id or local
            folder, an open_clip model ``"open_clip:ARCH/PRETRAINED"`` (see :func:`load_open_clip`), or a
            ``(CLIPModel, CLIPProcessor)`` pair built elsewhere.
        device (`str` or `torch.device`, defaults to ``"cpu"``).
    """

    def __init__(self, model: str | tuple = CLIP_MODEL, device: str | torch.device = "cpu"):
        from torchmetrics.multimodal.clip_score import CLIPScore

        if isinstance(model, str) and model.startswith(OPEN_CLIP_PREFIX):
            clip, processor = load_open_clip(model)
        else:
            clip, processor = model if isinstance(model, tuple) else load_clip(model)
            clip = _CLIPFeatures(clip)
        self.metric = CLIPScore(model_name_or_path=lambda: (clip, processor),
                                sync_on_compute=False).to(device)  # processes combine their shares in gather()
        self.device = torch.device(device)

    @torch.no_grad()
    def update(self, images: torch.Tensor, captions: Sequence[str]) -> None:
        """uint8 [B, 3, H, W] images and their B captions."""
        images = to_uint8(_check_batch(images)).to(self.device)
        if len(captions) != images.shape[0]:
            raise InputError(f"{images.shape[0]} images but {len(captions)} captions")
        self.metric.update(images, list(captions))

    def gather(self) -> None:
        """Under ``accelerate launch``: every process's score sum and count added up (a collective; one process:
        no-op)."""
        total = reduce({"score": self.metric.score, "n_samples": self.metric.n_samples}, reduction="sum")
        self.metric.score, self.metric.n_samples = total["score"], total["n_samples"]

    def compute(self) -> float:
        return float(self.metric.compute())


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 [B, 3, H, W] images to ``size``² (e.g. real images to the generated
    resolution)."""
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)

