"""The device option: resolution, clear errors without a GPU, and step inputs through the host-buffer path."""

from __future__ import annotations

import pytest
import torch

from pagoda.device import resolve_device, to_device


def test_resolution():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when torch sees no GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(spec):
    with pytest.raises(RuntimeError, match=r"needs an NVIDIA GPU, but torch sees none"):
        resolve_device(spec)


def test_step_inputs_on_cpu_take_the_same_path():
    t = to_device([[1, 2], [3, 4]], torch.int64, torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [[1, 2], [3, 4]]
    assert to_device([], torch.int64, torch.device("cpu")).shape == (0,)

