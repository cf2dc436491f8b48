"""Mixed precision on NPUs: Lightning's ``MixedPrecision`` with autocast on the ``npu`` device.

Lightning builds ``MixedPrecision(precision, device="cuda")`` for every accelerator but CPU and
MPS, so ``precision: bf16-mixed`` on an NPU would autocast nothing. The NPU strategies (and the
NPU accelerator, for any other strategy) rebuild such a plugin for the ``npu`` device, with
torch_npu's ``GradScaler`` for ``16-mixed``.
"""

from __future__ import annotations

from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from segfm.accelerators import runtime


def npu_precision(plugin: Precision) -> Precision:
    """The plugin, with a mixed-precision one moved onto the ``npu`` device.

    Args:
        plugin: Any precision plugin; only a plain ``MixedPrecision`` for another device changes.

    Returns:
        ``MixedPrecision(plugin.precision, device="npu")`` (with torch_npu's gradient scaler for
        ``16-mixed``) or the plugin unchanged.
    """
    if type(plugin) is not MixedPrecision or plugin.device == "npu":
        return plugin
    scaler = None
    if plugin.precision == "16-mixed":
        scaler = runtime.require_torch_npu().npu.amp.GradScaler()
    return MixedPrecision(plugin.precision, device="npu", scaler=scaler)
