"""Hand-written Triton kernels for inference, each beside an eager function of the same meaning.

Every entry point runs its kernel where Triton can (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``, which is how the tests check the kernels without a GPU) and the eager
reference otherwise, so callers never branch on the device.
"""

from ._triton import interpreting, kernels_run_on, triton_available
from .dwconv import activate_, conv_padding, dwconv_act_squeeze, dwconv_act_squeeze_reference
from .gate import gate_in_weights, gated_pointwise, gated_pointwise_reference

__all__ = [
    "activate_",
    "conv_padding",
    "dwconv_act_squeeze",
    "dwconv_act_squeeze_reference",
    "gate_in_weights",
    "gated_pointwise",
    "gated_pointwise_reference",
    "interpreting",
    "kernels_run_on",
    "triton_available",
]
