"""The bundled digits model: committed weights load, sample through the engine, draw recognisable digits."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pagoda.cli import image as image_cli
from pagoda.diffusion.digits import WEIGHTS_DIR
from pagoda.diffusion.digits.classifier import DigitsClassifier
from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny 8x8 forwards: threading only adds overhead, and badly so on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe() -> ImagePipeline:
    return ImagePipeline.from_pretrained(WEIGHTS_DIR, max_batch_size=64)


@pytest.fixture(scope="module")
def classifier() -> DigitsClassifier:
    return DigitsClassifier()


def test_committed_weights_are_small_and_use_sd_noise():
    weights = os.path.join(WEIGHTS_DIR, "unet", "diffusion_pytorch_model.safetensors")
    assert os.path.getsize(weights) < 8 * 2**20
    with open(os.path.join(WEIGHTS_DIR, "scheduler", "scheduler_config.json")) as f:
        cfg = json.load(f)
    assert (cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"],
            cfg["prediction_type"]) == ("scaled_linear", 0.00085, 0.012, 1000, "epsilon")


def test_samples_through_the_engine(pipe):
    x = pipe.generate_samples([None] * 3, [0, 1, 2], GenerationOptions("UniPC AYS", 10))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert pipe.engine.stats.forwards >= 10
    again = pipe.generate_samples([None], [1], GenerationOptions("UniPC AYS", 10))
    torch.testing.assert_close(again[0], x[1])  # per-request seeds: batch-independent


def test_cli_default_model_writes_a_grid(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    image_cli.add_arguments(parser)
    out = tmp_path / "digits.png"
    args = parser.parse_args(["--sampler", "UniPC AYS", "--steps", "10", "--n", "64", "-o", str(out)])
    assert image_cli.run(args) == 0
    assert Image.open(out).size == (8 * 32, 8 * 32)  # 64 digits of 8x8, enlarged x4, on an 8x8 grid
    assert "64 image(s) 32x32, UniPC AYS, 10 steps" in capsys.readouterr().out


def test_samples_are_recognised_far_more_often_than_noise(pipe, classifier):
    n = 64
    samples = pipe.generate_samples([None] * n, list(range(n)), GenerationOptions("UniPC AYS", 10))
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    got, floor = classifier.confident_share(samples), classifier.confident_share(noise)
    # measured: 66% of samples vs 19% of noise; real digits are 99.5%
    assert got >= 0.5 and got >= 2.5 * floor, (got, floor)
    assert classifier.frechet_distance(samples) < 0.25 * classifier.frechet_distance(noise)
    # unconditional samples cover the classes rather than collapsing onto one
    assert len(set(classifier.probabilities(samples).argmax(1).tolist())) >= 8


def test_a_digit_prompt_picks_the_class(pipe, classifier):
    x = pipe.generate_samples(["3"] * 16, list(range(16)), GenerationOptions("DPM++ 2M Karras", 10))
    assert np.mean(classifier.probabilities(x).argmax(1) == 3) >= 0.6  # measured 14/16
