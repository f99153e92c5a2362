"""The package's public names: the model layer at import, the pipelines and the feature extractor on first use."""

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
