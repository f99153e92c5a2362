"""The package's public names: the model layer at import, the pipelines and the feature extractor on first use."""

import os
import subprocess
import sys

import pytest

import uplift_diffusion


def test_lazy_exports_resolve_to_their_classes():
    from uplift_diffusion.pipelines import UPLiFTPipeline, UPLiFTSuperResolutionPipeline

    from uplift_diffusion.features import UPLiFTFeatureExtractor

    assert uplift_diffusion.UPLiFTPipeline is UPLiFTPipeline
    assert uplift_diffusion.UPLiFTSuperResolutionPipeline is UPLiFTSuperResolutionPipeline
    assert uplift_diffusion.UPLiFTFeatureExtractor is UPLiFTFeatureExtractor
    assert set(uplift_diffusion.__all__) >= {"UPLiFTModel", "LocalAttender", "ColorCorrection", "UPLiFTPipeline"}
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        uplift_diffusion.NotAThing  # noqa: B018


def test_package_import_does_not_import_the_pipelines():
    code = "import sys, uplift_diffusion; print('uplift_diffusion.pipelines' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pipelines_package_exports_every_pipeline():
    import uplift_diffusion.pipelines as pipelines
    from uplift_diffusion.pipelines.flux2 import UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline

    assert {"UPLiFTFlux2KleinPipeline", "UPLiFTFlux2Pipeline", "UPLiFTPipeline", "UPLiFTPipelineOutput",
            "UPLiFTSuperResolutionPipeline", "upscale_latents"} == set(pipelines.__all__) <= set(dir(pipelines))
    assert pipelines.UPLiFTFlux2Pipeline is UPLiFTFlux2Pipeline
    assert uplift_diffusion.UPLiFTFlux2KleinPipeline is UPLiFTFlux2KleinPipeline
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        pipelines.NotAThing  # noqa: B018


# The text-to-image pipelines' modules, and diffusers' behind them. diffusers.models.unets / .transformers are not
# listed: diffusers' own DiffusionPipeline imports them (pipeline_utils imports AutoencoderKL, and the autoencoders
# package imports the UNet blocks, which import every transformer model).
TEXT_TO_IMAGE_MODULES = ("uplift_diffusion.pipelines.flux2", "uplift_diffusion.pipelines.uplift_pipeline",
                         "diffusers.pipelines.flux2", "diffusers.pipelines.stable_diffusion")


def test_super_resolution_pipeline_alone_imports_no_text_to_image_pipeline(tmp_path):
    """``upscale``, the web page and ``eval sr`` pay only for the super-resolution pipeline's imports, and a saved
    super-resolution folder still loads in such a process (diffusers resolves its components from sys.modules)."""
    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline

    UPLiFTSuperResolutionPipeline.from_builtin("taef2").save_pretrained(tmp_path / "pipe")
    code = ("import sys\n"
            "from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline\n"
            f"print([m for m in {TEXT_TO_IMAGE_MODULES!r} if m in sys.modules])\n"
            "pipe = UPLiFTSuperResolutionPipeline.from_pretrained(sys.argv[1])\n"
            "print(type(pipe.vae).__name__, type(pipe.upsampler).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pipe")], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.splitlines() == ["[]", "TAEF2 UPLiFTModel"], out.stderr[-2000:]
