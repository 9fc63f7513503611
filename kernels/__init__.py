"""Triton kernels for the elementwise work between denoiser calls (installed as ``fastinv.kernels``).

Empty until the kernels issue lands: nothing here pretends to be implemented.
"""
