"""Parity with the published implementation: every case in ../shared/spec/fixtures to 1e-5 relative, with the CPU
backend's fast paths on (what users run) and off (the published sequence of plain PyTorch operations)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from uplift_diffusion import UPLiFTModel, fast_paths
from uplift_diffusion.testing import FIXTURES, reference_weights

CASES = json.loads((FIXTURES / "cases.json").read_text()) if (FIXTURES / "cases.json").is_file() else []


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    files = {}
    for case in CASES:
        name = case["weights"]
        if name not in files:
            files[name] = folder / name.replace(".tsv", ".safetensors").replace("keys_", "")
            save_file(reference_weights(name), str(files[name]))
    return files


def test_fixtures_present(shared_dir):
    assert len(CASES) == 6, f"expected the 6 reference cases in {FIXTURES}"


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "plain"])
@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_matches_published_outputs(case, checkpoints, fast):
    model = UPLiFTModel.from_reference_checkpoint(str(checkpoints[case["weights"]]), preset=case["preset"])
    data = load_file(str(FIXTURES / case["file"]))
    torch.manual_seed(case["global_seed_before_forward"])
    with torch.no_grad(), fast_paths.fast_paths(fast):
        out = model(data["image"], data["features"], iterations=case["iterations"], output_size=case["output_size"])
    assert list(out.shape) == case["output_shape"]
    ours = out.flatten()[data["sample_index"]]
    ref = data["sample_value"]
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5
    torch.testing.assert_close(out.mean(), data["output_mean"][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.abs().mean(), data["output_abs_mean"][0], rtol=1e-4, atol=1e-6)
