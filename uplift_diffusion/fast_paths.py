"""The CPU backend: every fast kernel of the package (UPLiFT's conv blocks, the Local Attender's tiles, TAEF2's
layers), chosen per layer by what this CPU and torch build support, and one switch that turns all of them off.

The paper's blocks (:mod:`uplift_diffusion.blocks`), the attender (:mod:`uplift_diffusion.attender`) and TAEF2
(:mod:`uplift_diffusion.backbones.taef2`) are written with plain PyTorch modules; at a few points they ask this
module whether a faster, equal computation is available for a tensor and call it. Everything here is an
inference-only optimisation with the same values up to float rounding (summation order; within the 1e-5 parity
tolerance in float32):

- the *channels-last inference layout*: conv blocks run on channels-last maps ([B, C, H, W] with C innermost in
  memory), so oneDNN's convolutions need no layout conversion, the channel LayerNorm is one ``F.layer_norm`` over
  the innermost axis, concatenations are written channels-last and residuals are added in place;
- *1x1 convolutions on oneDNN* (``torch.mkldnn_convolution``): PyTorch sends single-threaded 1x1 convs to a GEMM
  that is 2-10x slower on CPUs where MKL takes its generic code path;
- *conv + eval BatchNorm + ReLU as one oneDNN kernel* (``torch.ops.mkldnn._convolution_pointwise`` with the
  BatchNorm folded into the conv's weight), and for TAEF2 *conv + ReLU*, *conv + residual add + ReLU written in
  place into the residual* (``torch.ops.mkldnn._convolution_pointwise_.binary``) and *nearest 2x upsample + 3x3
  conv as one 2x2 sub-pixel conv*; prepared weights are cached on the conv until a weight changes.

The private torch entry points are used only when a capability check (:func:`capabilities`) found them present *and*
a one-time probe on tiny tensors matched ``F.conv2d``; otherwise the plain op runs. bf16 runs on oneDNN only where
oneDNN has native bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX-512 BW/VL/DQ or AVX-NE-CONVERT,
after any ``ONEDNN_MAX_CPU_ISA`` limit); elsewhere bf16 tensors take the plain path, except that their convolutions
are computed in float32 and rounded to bf16 once (ATen's bf16 convolution without oneDNN is a naive loop, ~50x
slower than float32).

The switch: ``UPLIFT_FAST_PATHS=0`` in the environment (read at import) or :func:`set_fast_paths` /
:func:`fast_paths` turns every fast path off; the blocks, the attender and TAEF2 then run exactly the plain sequence
of PyTorch operations. A layer reads the switch and the capabilities once, at its first use (:func:`layer_plan`),
and again only after the switch is set. Autograd (training) and ``torch.compile`` always take the plain path. A fast
path that reads a module's weights instead of calling it first checks that they are on the input's device
(:func:`resident`: accelerate's sequential offload keeps them on the meta device until the module is called).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ENV_VAR = "UPLIFT_FAST_PATHS"
_OFF_VALUES = ("0", "false", "no", "off")


def _enabled_from_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF_VALUES


_enabled = _enabled_from_env()
_generation = 0  # bumped by set_fast_paths: layers re-read their plan (layer_plan) after it


def set_fast_paths(enabled: bool) -> None:
    """Turn every fast path on or off for this process (the default comes from ``UPLIFT_FAST_PATHS``).

    Args:
        enabled (`bool`): ``False``: the blocks run the published sequence of plain PyTorch operations.
    """
    global _enabled, _generation
    _enabled = bool(enabled)
    _generation += 1


def fast_paths_enabled() -> bool:
    """Whether the fast paths are switched on (they still apply only where :func:`capabilities` allows)."""
    return _enabled


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Context manager: :func:`set_fast_paths` inside the block, the previous setting restored after it.

    Args:
        enabled (`bool`): whether the fast paths may run inside the block.
    """
    previous = _enabled
    set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(previous)


@dataclass(frozen=True)
class Capabilities:
    """What this process's CPU and torch build support, as found by :func:`capabilities`.

    Args:
        onednn (`bool`): torch is built with oneDNN (``torch.backends.mkldnn.is_available()``).
        cpu_capability (`str`): ATen's CPU kernel level (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...; honours
            ``ATEN_CPU_CAPABILITY``).
        avx512 (`bool`): ATen dispatches AVX-512 kernels.
        onednn_bf16 (`bool`): oneDNN runs bf16 convolutions natively (honours ``ONEDNN_MAX_CPU_ISA``).
        pointwise_conv (`bool`): ``torch.mkldnn_convolution`` exists and matched ``F.conv2d`` on a probe.
        fused_conv_relu (`bool`): ``torch.ops.mkldnn._convolution_pointwise`` exists and matched conv + ReLU.
        fused_conv_add_relu (`bool`): ``torch.ops.mkldnn._convolution_pointwise_.binary`` exists and matched
            conv + residual add + ReLU written in place into the residual.
    """

    onednn: bool
    cpu_capability: str
    avx512: bool
    onednn_bf16: bool
    pointwise_conv: bool
    fused_conv_relu: bool
    fused_conv_add_relu: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _probe(fn, expected) -> bool:
    """Whether ``fn()`` runs and returns ``expected`` (float tolerance): a private op that is missing, refuses this
    CPU or computes something else counts as unavailable."""
    try:
        with torch.inference_mode():
            out = fn()
            return bool(torch.allclose(out.float(), expected().float(), rtol=2e-2, atol=2e-2))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


def _probe_ops(dtype: torch.dtype) -> tuple[bool, bool, bool]:
    """(pointwise_conv, fused_conv_relu, fused_conv_add_relu) for ``dtype``, each probed once on tiny channels-last
    tensors."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 5, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w1 = torch.randn(4, 8, 1, 1, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(4, 8, 3, 3, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w8 = torch.randn(8, 8, 3, 3, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    b = torch.randn(4, generator=gen).to(dtype)
    b8 = torch.randn(8, generator=gen).to(dtype)
    pointwise = _probe(lambda: torch.mkldnn_convolution(x, w1, b, [0, 0], [1, 1], [1, 1], 1),
                       lambda: F.conv2d(x.float(), w1.float(), b.float()))
    fused = _probe(
        lambda: torch.ops.mkldnn._convolution_pointwise(x, w3, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], ""),
        lambda: F.relu(F.conv2d(x.float(), w3.float(), b.float(), 2, 1)),
    )

    def add_in_place():
        residual = x.clone()
        out = torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, w8, b8, [1, 1], [1, 1], [1, 1], 1, "add",
                                                             1.0, "relu", [], "")
        if out.data_ptr() != residual.data_ptr():
            raise RuntimeError("not written in place")
        return out

    added = _probe(add_in_place, lambda: F.relu(F.conv2d(x.float(), w8.float(), b8.float(), 1, 1) + x.float()))
    return pointwise, fused, added


_capabilities: Capabilities | None = None


def capabilities() -> Capabilities:
    """What this CPU and torch build support, found once per process (cached).

    oneDNN's bf16 support is read with the check torch's own bf16 convolution uses
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``), so ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 machine
    reports what an AVX2-only CPU would; each private op is then probed once on tiny tensors.
    """
    global _capabilities
    if _capabilities is None:
        _capabilities = _detect()
    return _capabilities


def _detect() -> Capabilities:
    onednn = torch.backends.mkldnn.is_available()
    cpu_capability = torch.backends.cpu.get_cpu_capability()
    bf16 = False
    if onednn:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            bf16 = bool(check()) if check is not None else False
        except RuntimeError:
            bf16 = False
    pointwise, fused, added = _probe_ops(torch.float32) if onednn else (False, False, False)
    if bf16:  # the documented check says yes; the probe confirms the ops really run bf16 here
        bf16 = all(_probe_ops(torch.bfloat16))
    return Capabilities(onednn=onednn, cpu_capability=cpu_capability, avx512=cpu_capability.startswith("AVX512"),
                        onednn_bf16=bf16, pointwise_conv=pointwise, fused_conv_relu=fused,
                        fused_conv_add_relu=added)


def _onednn_dtype(dtype: torch.dtype, caps: Capabilities) -> bool:
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and caps.onednn_bf16


def layer_plan(layer: nn.Module, name: str, decide: Callable[[Capabilities], Any]) -> Any:
    """What ``decide(capabilities())`` says for ``layer`` (which kernel it may use), or ``None`` with the fast paths
    switched off. Decided at the layer's first use and kept on it (a plain attribute: no parameter, buffer or
    state-dict entry); decided again only after :func:`set_fast_paths` or a change of the detected capabilities.

    Args:
        layer (`nn.Module`): the layer the decision belongs to.
        name (`str`): which decision (a layer can hold several).
        decide (`Callable`): the decision from the capabilities (called only with the fast paths on).
    """
    caps = _capabilities if _capabilities is not None else capabilities()
    plans = layer.__dict__.setdefault("_fast_paths_plans", {})
    cached = plans.get(name)
    if cached is not None and cached[0] == _generation and cached[1] is caps:
        return cached[2]
    value = decide(caps) if _enabled else None
    plans[name] = (_generation, caps, value)
    return value


def active(x: torch.Tensor, layer: nn.Module | None = None) -> bool:
    """Whether ``x`` takes the channels-last inference path: fast paths on, a CPU tensor of a dtype oneDNN runs
    here (float32; bfloat16 where native), autograd off, not being compiled (inductor picks its own layouts).

    Args:
        x (`torch.Tensor`): a block's input.
        layer (`nn.Module`, *optional*): the layer asking; the switch and capabilities are then its plan
            (:func:`layer_plan`), read once, instead of the process-wide setting.
    """
    if torch.compiler.is_compiling():  # first: dynamo must not trace the capability probes or the plans
        return False
    if layer is not None:
        caps = layer_plan(layer, "onednn", lambda found: found if found.onednn else None)
    else:
        caps = capabilities() if _enabled and capabilities().onednn else None
    return (
        caps is not None
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.enabled  # the user's own switch for oneDNN
        and _onednn_dtype(x.dtype, caps)
    )


def inference_layout(x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """``x`` in the layout the blocks run in: channels-last on the inference path, unchanged otherwise.

    Args:
        x (`torch.Tensor`): a [B, C, H, W] map.
        layer (`nn.Module`, *optional*): the layer asking (see :func:`active`).
    """
    return x.contiguous(memory_format=torch.channels_last) if active(x, layer) else x


def _pointwise_eligible(conv: nn.Conv2d, caps: Capabilities) -> bool:
    return (caps.pointwise_conv and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def conv2d(conv: nn.Conv2d, x: torch.Tensor, stride: int = 1, padding: Sequence[int] | None = None
           ) -> torch.Tensor:
    """``conv(x)``, or ``conv(x)[..., ::stride, ::stride]`` computed strided (zero padding) for ``stride > 1``.

    A 1x1 conv of a channels-last inference map runs on oneDNN (``torch.mkldnn_convolution``) when the probe
    found it working; everything else is ``nn.Conv2d``'s own computation.

    Args:
        conv (`nn.Conv2d`): the convolution.
        x (`torch.Tensor`): its [B, C, H, W] input.
        stride (`int`, defaults to 1): compute only every ``stride``-th output pixel (zero-padded convs).
        padding (`(int, int)`, *optional*): with ``stride > 1``, the zero padding (rows, columns) instead of the
            conv's own; the caller then needs the weights resident (:func:`resident`).
    """
    if _emulated_bf16(x, conv):
        # ATen's own bf16 convolution without oneDNN's bf16 is a naive loop (dinov2-s14 at 4x4 tokens under the AVX2
        # limit: 28.6 s against 0.51 s in float32): convolve in float32 and round the output once (closer to exact).
        if stride != 1 and not resident(x, conv):  # offloaded weights: through the module's call, then subsampled
            return conv(x)[..., ::stride, ::stride]
        weight, bias = conv.weight.float(), None if conv.bias is None else conv.bias.float()
        if conv.padding_mode != "zeros":
            return conv._conv_forward(x.float(), weight, bias).to(x.dtype)[..., ::stride, ::stride]
        conv_stride = (stride, stride) if stride != 1 else conv.stride
        conv_padding = conv.padding if padding is None or stride == 1 else tuple(padding)
        return F.conv2d(x.float(), weight, bias, conv_stride, conv_padding, conv.dilation, conv.groups).to(x.dtype)
    if stride != 1:
        if padding is None and not resident(x, conv):  # offloaded weights arrive only through the module's call
            return conv(x)[..., ::stride, ::stride]
        conv_padding = conv.padding if padding is None else tuple(padding)
        return F.conv2d(x, conv.weight, conv.bias, stride, conv_padding, conv.dilation, conv.groups)
    if (
        x.dtype == conv.weight.dtype
        and x.is_contiguous(memory_format=torch.channels_last)
        and active(x, conv)
        and layer_plan(conv, "pointwise", lambda caps: _pointwise_eligible(conv, caps))
    ):
        weight = conv.weight.contiguous(memory_format=torch.channels_last)
        return torch.mkldnn_convolution(x, weight, conv.bias, [0, 0], [1, 1], [1, 1], 1)
    return conv._conv_forward(x, conv.weight, conv.bias)


def conv_norm_relu(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module, relu: nn.Module, stride: int = 1,
                   padding: Sequence[int] | None = None) -> torch.Tensor:
    """``relu(norm(conv(x)))`` (the conv strided by ``stride``), as one oneDNN kernel when it can be.

    Fused when ``x`` is on the inference path, the norm is an eval-mode BatchNorm (folded into the conv's weight)
    and the fused op passed its probe; otherwise the three modules run one after the other.

    Args:
        x (`torch.Tensor`): the [B, C, H, W] input.
        conv (`nn.Conv2d`): the 3x3 convolution (no bias when fused).
        norm (`nn.Module`): its norm (``nn.BatchNorm2d`` or the channel LayerNorm).
        relu (`nn.Module`): the activation.
        stride (`int`, defaults to 1): compute only every ``stride``-th output pixel.
        padding (`(int, int)`, *optional*): with ``stride > 1``, the zero padding instead of the conv's own (see
            :func:`conv2d`).
    """
    if (
        not norm.training
        and x.dtype == conv.weight.dtype
        and active(x, conv)
        and layer_plan(conv, "conv_bn_relu", lambda caps: caps.fused_conv_relu and isinstance(norm, nn.BatchNorm2d)
                       and norm.running_var is not None and conv.bias is None and conv.padding_mode == "zeros")
        and resident(x, conv, norm)
    ):
        weight, bias = _folded_conv_bn(conv, norm, x.dtype)
        strides = [stride, stride] if stride != 1 else list(conv.stride)
        paddings = list(conv.padding) if padding is None or stride == 1 else list(padding)
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, paddings, strides, list(conv.dilation), conv.groups, "relu", [], ""
        )
    return relu(norm(conv(x) if stride == 1 else conv2d(conv, x, stride, padding)))


def resident(x: torch.Tensor, *modules: nn.Module) -> bool:
    """Whether the modules' own parameters and buffers are on ``x``'s device. Under accelerate's sequential CPU
    offload they wait on the meta device until the module itself is called (its hook loads them): a fast path that
    reads a module's weights instead of calling it must check this first and call the module otherwise.

    Args:
        x (`torch.Tensor`): the input about to be combined with the weights.
        *modules (`nn.Module`): the modules whose weights the fast path would read.
    """
    return all(t.device == x.device for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))


def _emulated_bf16(x: torch.Tensor, layer: nn.Module) -> bool:
    """A bf16 CPU tensor where oneDNN has no native bf16: its convolutions run in float32 (fast paths on)."""
    return (x.dtype == torch.bfloat16 and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and bool(layer_plan(layer, "emulated_bf16", lambda caps: not caps.onednn_bf16)))


def cached_weights(conv: nn.Conv2d, name: str, sources: Sequence[torch.Tensor], key: tuple,
                   prepare: Callable[[], Any]) -> Any:
    """``prepare()`` (a kernel's form of the conv's weights), kept on the conv until one of ``sources`` changes.

    An in-place update (load_state_dict, an optimiser step) bumps a tensor's version, and ``.to()`` / assignment
    gives it new storage: either makes a new entry. The cache holds the source tensors, so none of them can be
    freed and its address reused by a new tensor while the entry exists. Weights made under
    ``torch.inference_mode`` (a model built or converted there) are inference tensors with no version counter: an
    in-place change could not be seen, so they are prepared afresh on every call.

    Args:
        conv (`nn.Conv2d`): the layer the entry is kept on (a plain attribute: no parameter, buffer or state dict).
        name (`str`): which prepared form (a conv can hold several).
        sources (`Sequence[torch.Tensor]`): the tensors the form is computed from.
        key (`tuple`): anything else it depends on (dtype, eps, ...).
        prepare (`Callable`): computes the form.
    """
    sources = tuple(t.detach() for t in sources)
    if any(t.is_inference() for t in sources):
        return prepare()
    full_key = (*key, *((t.data_ptr(), t._version) for t in sources))
    cache = conv.__dict__.setdefault("_fast_paths_weights", {})
    cached = cache.get(name)
    if cached is not None and cached[0] == full_key:
        return cached[1]
    prepared = prepare()
    cache[name] = (full_key, prepared, sources)
    return prepared


def prepared_weights(module: nn.Module) -> Iterator[torch.Tensor]:
    """The kernel forms of the weights cached on ``module`` and its children (:func:`cached_weights`): the tensors
    the fused ops read instead of the parameters, e.g. to tell which model an op's weight belongs to."""
    for child in module.modules():
        for _, prepared, _ in child.__dict__.get("_fast_paths_weights", {}).values():
            yield from (t for t in (prepared if isinstance(prepared, tuple) else (prepared,))
                        if isinstance(t, torch.Tensor))


def _folded_conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's weight with the eval BatchNorm folded in (channels-last) and the bias it leaves, in ``dtype``
    (cached: :func:`cached_weights`)."""

    def fold():
        scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)  # per output channel, float32
        weight = (conv.weight.float() * scale[:, None, None, None]).to(dtype)
        bias = (norm.bias.float() - norm.running_mean.float() * scale).to(dtype)
        return weight.contiguous(memory_format=torch.channels_last), bias

    sources = (conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var)
    return cached_weights(conv, "folded_bn", sources, (dtype, norm.eps), fold)


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       layer: nn.Module | None = None) -> torch.Tensor | None:
    """The channel LayerNorm of a channels-last inference map as one ``F.layer_norm`` over the innermost axis
    (float32 statistics, result in ``x``'s dtype); ``None`` when ``x`` is not on that path.

    Args:
        x (`torch.Tensor`): the [B, C, H, W] map.
        weight (`torch.Tensor`), bias (`torch.Tensor`): the per-channel affine parameters.
        eps (`float`): added to the variance.
        layer (`nn.Module`, *optional*): the norm layer asking (see :func:`active`).
    """
    pixels_channels = x.permute(0, 2, 3, 1)  # [B, H, W, C]: contiguous for a channels-last map
    if not (pixels_channels.is_contiguous() and active(x, layer)):
        return None
    y = F.layer_norm(pixels_channels.float(), (x.shape[1],), weight.float(), bias.float(), eps)
    return y.to(x.dtype).permute(0, 3, 1, 2)


def concat_channels(parts: Sequence[torch.Tensor], layer: nn.Module | None = None) -> torch.Tensor:
    """``torch.cat(parts, dim=1)``, written straight into a channels-last map on the inference path (a plain cat of
    mixed layouts gives a contiguous map that the next conv block would copy again).

    Args:
        parts (`Sequence[torch.Tensor]`): [B, C_i, H, W] maps of one batch and size.
        layer (`nn.Module`, *optional*): the layer asking (see :func:`active`).
    """
    if not active(parts[0], layer):
        return torch.cat(list(parts), dim=1)
    b, _, h, w = parts[0].shape
    out = torch.empty(b, sum(p.shape[1] for p in parts), h, w, dtype=parts[0].dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    pixels = out.permute(0, 2, 3, 1).view(b, h * w, out.shape[1])  # [B, HW, C_total]: the same memory
    c0 = 0
    for part in parts:
        c1 = c0 + part.shape[1]
        if part.is_contiguous() and part.shape[1] > 1:
            # A contiguous (channels-first) part is a [C, HW] matrix per image: PyTorch's blocked 2-D transpose
            # into a contiguous [HW, C] is several times faster than a strided copy into the interleaved slice.
            for i in range(b):
                pixels[i, :, c0:c1] = part[i].view(part.shape[1], h * w).t().contiguous()
        else:
            out[:, c0:c1].copy_(part)  # channels innermost on both sides
        c0 = c1
    return out


# --- TAEF2's kernels -------------------------------------------------------------------------------------------------
# oneDNN kernels through torch's private entry points (the ones inductor's CPU fusion emits): conv + ReLU as one kernel,
# a residual block's last conv + residual add + ReLU written in place into the residual, and nearest 2x upsample + 3x3
# conv computed as a sub-pixel conv. Callers check fused_convs_active first and resident() for the layers they read.


def fused_convs_active(x: torch.Tensor, layer: nn.Module | None = None) -> bool:
    """Whether ``x`` may run on the fused conv kernels below: :func:`active` and both fused oneDNN ops passed their
    probes.

    Args:
        x (`torch.Tensor`): the input of the layers.
        layer (`nn.Module`, *optional*): the model asking (its plan: :func:`layer_plan`).
    """
    return active(x, layer) and bool(
        layer_plan(layer, "fused_convs", lambda caps: caps.fused_conv_relu and caps.fused_conv_add_relu)
        if layer is not None else _enabled and capabilities().fused_conv_relu and capabilities().fused_conv_add_relu
    )


def _conv_weights(conv: nn.Conv2d, dtype: torch.dtype, subpixel: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv's weight in the kernels' form (channels-last, ``dtype``; for ``subpixel`` the four 2x2 phase kernels
    of :func:`subpixel_weight`) and its bias (cached: :func:`cached_weights`)."""

    def prepare():
        weight = subpixel_weight(conv.weight.detach().float()) if subpixel else conv.weight.detach().float()
        bias = None if conv.bias is None else conv.bias.detach().float()
        if subpixel and bias is not None:
            bias = bias.repeat(4)
        return weight.to(dtype).contiguous(memory_format=torch.channels_last), None if bias is None else bias.to(dtype)

    sources = tuple(t for t in (conv.weight, conv.bias) if t is not None)
    return cached_weights(conv, "subpixel" if subpixel else "conv", sources, (dtype,), prepare)


def conv_relu(x: torch.Tensor, conv: nn.Conv2d, relu: bool) -> torch.Tensor:
    """``conv(x)``, followed by a ReLU when ``relu``, as one oneDNN kernel (``x`` channels-last, zero padding).

    Args:
        x (`torch.Tensor`): the [B, C, H, W] channels-last input.
        conv (`nn.Conv2d`): the convolution.
        relu (`bool`): apply the ReLU.
    """
    weight, bias = _conv_weights(conv, x.dtype, subpixel=False)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), 1, "relu" if relu else "none", [], "")


def conv_add_relu_(residual: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``relu(conv(x) + residual)`` written in place into ``residual`` (a 3x3, stride-1 conv), one oneDNN kernel.

    Args:
        residual (`torch.Tensor`): the channels-last tensor added and overwritten (no one else may hold it).
        x (`torch.Tensor`): the channels-last conv input.
        conv (`nn.Conv2d`): the convolution.
    """
    weight, bias = _conv_weights(conv, x.dtype, subpixel=False)
    return torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "add",
                                                          1.0, "relu", [], "")


# Output phase a (row parity) of "nearest 2x upsample, then 3x3 conv" reads low-resolution rows i-1, i (a = 0) or
# i, i+1 (a = 1): the 3x3 taps fold into 2x2 taps. Row r of the 2x2 kernel sums these 3x3 rows:
_PHASE_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> [4 * C_out, C_in, 2, 2]: phase (a, b) of the upsampled conv as a 2x2 conv of the
    low-resolution map (phase index 2a + b). 4 taps per output pixel instead of 9, and no upsampled copy.

    Args:
        weight (`torch.Tensor`): the 3x3 conv's weight.
    """
    phases = []
    for a in (0, 1):
        for b in (0, 1):
            rows = [weight[:, :, list(_PHASE_TAPS[a][r])].sum(2, keepdim=True) for r in (0, 1)]
            kernel = torch.cat(rows, 2)
            phases.append(torch.cat([kernel[..., list(_PHASE_TAPS[b][c])].sum(3, keepdim=True) for c in (0, 1)], 3))
    return torch.cat(phases)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(upsample_nearest_2x(x))`` (a 3x3, stride-1, zero-padded conv) as one 2x2 conv to 4 phases of ``C_out``
    channels, interleaved into place.

    Args:
        x (`torch.Tensor`): the channels-last low-resolution input.
        conv (`nn.Conv2d`): the 3x3 conv after the upsample.
    """
    weight, bias = _conv_weights(conv, x.dtype, subpixel=True)
    phases = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
    b, _, h, w = x.shape  # phases: [B, 4C, h+1, w+1]
    c = conv.out_channels
    out = torch.empty(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    # Channels-last memory of out is [B, h, 2, w, 2, C] and that of phases [B, h+1, w+1, 4, C]: phase (a, b) of
    # output pixel (2i+a, 2j+b) is the 2x2 conv at padded position (i+a, j+b).
    out_view = out.permute(0, 2, 3, 1).view(b, h, 2, w, 2, c)
    phase_view = phases.permute(0, 2, 3, 1).view(b, h + 1, w + 1, 4, c)
    for a in (0, 1):
        for p in (0, 1):
            out_view[:, :, a, :, p].copy_(phase_view[:, a:a + h, p:p + w, 2 * a + p])
    return out


def describe() -> str:
    """One line for logs and benchmark records: the switch and what was detected."""
    caps = capabilities()
    found = ", ".join(f"{k}={v}" for k, v in caps.as_dict().items())
    return f"fast paths {'on' if _enabled else 'off'} ({ENV_VAR}); {found}"
