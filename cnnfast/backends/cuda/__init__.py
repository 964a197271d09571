"""The CUDA backends: ``cupy_backend`` (a GPU, through CuPy and NVRTC) and
``emu_backend`` (the CPU emulator, ``cuda-emu``) run the kernels of ``kernels/*.cu``
with the launch code of ``conv_launch`` and ``pool_launch``; ``common`` holds what
those two share, ``emu/`` the emulator."""
