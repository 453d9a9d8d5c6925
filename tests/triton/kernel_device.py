"""Where the Triton kernel tests run: compiled on CUDA when a GPU is present, else the interpreter on CPU."""

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
