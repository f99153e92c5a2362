"""The CPU backend (uplift_diffusion.fast_paths): what it detects, the switch that turns it off, and that every
private torch op it uses has a working fallback (bf16 on CPUs without native bf16 included)."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from fast_path_helpers import BF16_RELATIVE, EXACT, randomise_batch_norms, relative_error  # noqa: E402

from uplift_diffusion import UPLiFTModel, fast_paths
from uplift_diffusion.blocks import ConvBlock


@pytest.fixture
def forbid_private_ops(monkeypatch):
    """Make both private oneDNN entry points raise: a call proves a fast path ran where it must not."""
    fast_paths.capabilities()  # the one-time probes ran before (they call the real ops)
    calls = []

    def refuse(name):
        def op(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called although the backend must not use it here")
        return op

    monkeypatch.setattr(torch, "mkldnn_convolution", refuse("torch.mkldnn_convolution"))
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", refuse("mkldnn._convolution_pointwise"))
    return calls


@pytest.fixture
def capabilities_as(monkeypatch):
    """Pretend the process detected other capabilities (as on another CPU / torch build)."""
    def set_(**changes):
        monkeypatch.setattr(fast_paths, "_capabilities", dataclasses.replace(fast_paths.capabilities(), **changes))
    return set_


@pytest.fixture
def batch_norm_model():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", norm_type="batch", noise_channels=0).eval()
    with torch.no_grad():
        randomise_batch_norms(model)
    return model, torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)


def test_capabilities_agree_with_torch():
    caps = fast_paths.capabilities()
    assert caps is fast_paths.capabilities()  # detected once per process
    assert caps.onednn == torch.backends.mkldnn.is_available()
    assert caps.cpu_capability == torch.backends.cpu.get_cpu_capability()
    if caps.onednn:
        # the check behind torch's "bf16 path needs the cpu support ..." error
        assert caps.onednn_bf16 == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert fast_paths.describe().startswith("fast paths ")


def test_probe_refuses_ops_that_raise_or_compute_something_else():
    expected = lambda: torch.ones(3)  # noqa: E731

    def raises():
        raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support avx_ne_convert or avx512bw, ...")

    assert fast_paths._probe(lambda: torch.ones(3), expected)
    assert not fast_paths._probe(raises, expected)
    assert not fast_paths._probe(lambda: torch.zeros(3), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_switch_off_runs_the_published_sequence(batch_norm_model, forbid_private_ops, dtype):
    model, image, features = batch_norm_model
    model = model.to(dtype)
    image, features = image.to(dtype), features.to(dtype)
    reference = model(image, features, iterations=2).detach()  # autograd on: plain PyTorch ops
    with fast_paths.fast_paths(False), torch.inference_mode():
        assert not fast_paths.fast_paths_enabled() and not fast_paths.active(image)
        off = model(image, features, iterations=2)
    assert fast_paths.fast_paths_enabled()  # restored after the block
    assert forbid_private_ops == []
    torch.testing.assert_close(off, reference, rtol=0, atol=0)  # the same ops in the same order


def test_switch_from_the_environment(monkeypatch):
    for value, expected in (("0", False), ("off", False), ("False", False), ("1", True), ("", True)):
        monkeypatch.setenv(fast_paths.ENV_VAR, value)
        assert fast_paths._enabled_from_env() is expected, value
    # read once, at import: one fresh process shows the variable takes effect there
    code = "from uplift_diffusion import fast_paths; print(fast_paths.fast_paths_enabled())"
    env = {**os.environ, fast_paths.ENV_VAR: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_missing_private_ops_fall_back_exactly(batch_norm_model, forbid_private_ops, capabilities_as):
    model, image, features = batch_norm_model
    reference = model(image, features, iterations=2).detach()
    capabilities_as(pointwise_conv=False, fused_conv_relu=False)  # e.g. a torch build that dropped them
    with torch.inference_mode():
        assert fast_paths.active(image)  # the channels-last layout still applies (public ops only)
        fast = model(image, features, iterations=2)
        block = ConvBlock(6, 8, 1, "batch").eval()
        x = torch.randn(1, 6, 8, 8)
        assert block(x).is_contiguous(memory_format=torch.channels_last)
    assert forbid_private_ops == []
    torch.testing.assert_close(fast, reference, **EXACT)


def test_bfloat16_convolutions_without_native_support_run_in_float32(capabilities_as):
    torch.manual_seed(0)
    block = ConvBlock(6, 8, 1, "batch").eval().bfloat16()
    x = torch.randn(1, 6, 9, 7).bfloat16()
    conv = block.conv[0]
    capabilities_as(onednn_bf16=False)
    with torch.inference_mode():
        for stride in (1, 2):
            expected = F.conv2d(x.float(), conv.weight.float(), None, stride, 1).bfloat16()
            assert torch.equal(fast_paths.conv2d(conv, x, stride), expected)
        with fast_paths.fast_paths(False):  # switched off: ATen's own bf16 convolution
            assert fast_paths.conv2d(conv, x).dtype == torch.bfloat16


@pytest.mark.parametrize("norm_type", ["batch", "layer"])
def test_bfloat16_without_native_support_falls_back(norm_type, forbid_private_ops, capabilities_as):
    """A CPU without native bf16 in oneDNN (AVX2 only): bf16 tensors take the plain path, within tolerance."""
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", norm_type=norm_type, noise_channels=0).eval()
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    with torch.inference_mode(), fast_paths.fast_paths(False):
        exact = model(image, features, iterations=2)  # float32 (the private ops are refused in this test)
    capabilities_as(onednn_bf16=False)
    with torch.inference_mode():
        assert fast_paths.active(image) and not fast_paths.active(image.bfloat16())
        out = model.to(torch.bfloat16)(image.bfloat16(), features.bfloat16(), iterations=2)
    assert out.dtype == torch.bfloat16 and forbid_private_ops == []
    assert relative_error(out, exact) < BF16_RELATIVE


def test_bfloat16_under_an_avx2_limit_in_a_fresh_process():
    """What a user on an AVX2-only CPU runs (emulated: oneDNN and ATen limited to AVX2). Before the backend this
    raised ``mkldnn_convolution: bf16 path needs the cpu support avx_ne_convert or avx512bw, ...``."""
    code = textwrap.dedent("""
        import torch
        from uplift_diffusion import UPLiFTModel, fast_paths
        torch.manual_seed(0)
        model = UPLiFTModel.from_preset("tiny-vae", norm_type="batch", noise_channels=0).eval()
        image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
        with torch.inference_mode():
            exact = model(image, features, iterations=2)
            out = model.to(torch.bfloat16)(image.bfloat16(), features.bfloat16(), iterations=2)

        class Convolutions(torch.overrides.TorchFunctionMode):  # the dtype every 2-D convolution runs in
            dtypes = []

            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in (torch.nn.functional.conv2d, torch.conv2d):
                    self.dtypes.append(args[0].dtype)
                return func(*args, **(kwargs or {}))

        with torch.inference_mode(), Convolutions():  # ATen's naive bf16 conv (~50x slower than float32) never runs
            model(image.bfloat16(), features.bfloat16(), iterations=2)
        bf16_convs = sum(d == torch.bfloat16 for d in Convolutions.dtypes)
        print(fast_paths.capabilities().onednn_bf16, ((out.float() - exact).abs().max() / exact.abs().max()).item(),
              bf16_convs if Convolutions.dtypes else "none-seen")
    """)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    native, relative, slow_convs = out.stdout.split()[-3:]
    assert native == "False"  # the limit is seen: oneDNN reports no native bf16
    assert float(relative) < BF16_RELATIVE
    assert slow_convs == "0"  # convolutions of bf16 maps computed in float32


def test_model_built_under_inference_mode(batch_norm_model):
    """Weights created under inference_mode are inference tensors (no version counter): the folded BatchNorm cache
    must not key on it. Before: ``RuntimeError: Inference tensors do not track version counter``."""
    model, image, features = batch_norm_model
    with torch.inference_mode():
        expected = model(image, features, iterations=2)
        converted = model.to(torch.float64).to(torch.float32)  # new parameters, all inference tensors
        assert converted.encoder.block_0.blocks[0].conv[0].weight.is_inference()
        out = converted(image, features, iterations=2)
        for m in converted.modules():  # an in-place change inside inference mode is seen on the next call
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(1.0)
        changed = converted(image, features, iterations=2)
    torch.testing.assert_close(out, expected, **EXACT)
    assert not torch.allclose(changed, out)


def test_weights_on_the_meta_device_until_called(batch_norm_model):
    """accelerate's sequential offload (what ``enable_sequential_cpu_offload`` installs): every weight waits on the meta
    device until its own module is called. The backend's fused conv + BatchNorm path reads weights directly, so it
    must call the modules instead. Before: NaN outputs from oneDNN ops on meta-backed weights."""
    import copy

    from accelerate import cpu_offload

    model, image, features = batch_norm_model
    with torch.no_grad():
        expected = model(image, features, iterations=2, generator=torch.Generator().manual_seed(0))
    offloaded = copy.deepcopy(model)
    cpu_offload(offloaded, torch.device("cpu"), offload_buffers=True)
    assert offloaded.encoder.block_0.blocks[0].conv[1].running_var.device.type == "meta"
    with torch.inference_mode():
        out = offloaded(image, features, iterations=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected, **EXACT)


def test_float16_on_the_cpu_is_said_once(monkeypatch):
    """`pipe.to(torch.float16)` on a CPU runs ~100x slower: one warning per process, not one per call."""
    import warnings

    from uplift_diffusion import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.utils import device

    monkeypatch.setattr(device, "_WARNED_FLOAT16_CPU", False)
    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.to(torch.float32)
        pipe.to(torch.float16)
        pipe.to(torch.float16)
    messages = [str(w.message) for w in caught if "float16 on the CPU" in str(w.message)]
    assert len(messages) == 1 and "100x slower" in messages[0]
