"""Triton backend: registers torch.ops.mnv3_triton.* when Triton can run here.

Importing this package never requires Triton. AVAILABLE says whether the ops are registered;
UNAVAILABLE_REASON says why not. Triton runs on CUDA tensors, or on CPU tensors when
TRITON_INTERPRET=1 is set (that is how machines without a GPU test it).
"""
AVAILABLE = False
UNAVAILABLE_REASON = "the Triton backend is not implemented yet"
