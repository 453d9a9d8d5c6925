"""Real (tiny, random) diffusers models: Pagoda's pipeline against diffusers' pipeline, and batching."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusion_refs import rel_err

from pagoda.diffusion import scheduler
from pagoda.diffusion.engine import DiffusionEngine, ImageRequest
from pagoda.diffusion.model import UNetModel
from pagoda.diffusion.noise_schedule import NoiseSchedule
from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline
from pagoda.diffusion.tiny import build_tiny_text_to_image, build_tiny_unconditional


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> str:
    return build_tiny_text_to_image(str(tmp_path_factory.mktemp("tiny-sd")), seed=1)


@pytest.fixture(scope="module")
def uncond_dir(tmp_path_factory) -> str:
    return build_tiny_unconditional(str(tmp_path_factory.mktemp("tiny-uncond")), seed=2)


@pytest.fixture(scope="module")
def pagoda_pipe(sd_dir) -> ImagePipeline:
    return ImagePipeline.from_pretrained(sd_dir)


@pytest.fixture(scope="module")
def diffusers_pipe(sd_dir) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


REFERENCES = {
    "UniPC Trailing": lambda cfg: UniPCMultistepScheduler.from_config(cfg, timestep_spacing="trailing"),
    "DDIM Trailing": lambda cfg: DDIMScheduler.from_config(cfg, timestep_spacing="trailing",
                                                         set_alpha_to_one=True, steps_offset=0),
    "DPM++ 2M Karras": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True),
    # diffusers cannot run AYS with UniPC itself; its pipeline runs our drop-in scheduler instead
    "UniPC AYS": lambda cfg: scheduler("UniPC AYS", cfg),
}


@pytest.mark.parametrize("sampler", list(REFERENCES))
def test_text_to_image_matches_diffusers_pipeline(pagoda_pipe, diffusers_pipe, sampler):
    diffusers_pipe.scheduler = REFERENCES[sampler](dict(diffusers_pipe.scheduler.config))
    theirs = diffusers_pipe("a red apple", num_inference_steps=10, guidance_scale=5.0,
                            generator=torch.Generator().manual_seed(11), output_type="latent").images
    ours = pagoda_pipe.generate_samples(["a red apple"], [11], GenerationOptions(sampler, 10, 5.0))
    assert rel_err(ours, theirs) < 1e-4


def test_decoded_images_match_diffusers(pagoda_pipe, diffusers_pipe):
    diffusers_pipe.scheduler = scheduler("UniPC AYS", diffusers_pipe.scheduler.config)
    theirs = diffusers_pipe("a boat", num_inference_steps=6, generator=torch.Generator().manual_seed(3),
                            output_type="np").images[0]
    ours = pagoda_pipe.generate(["a boat"], seeds=[3], sampler="UniPC AYS", steps=6)[0]
    assert ours.size == (16, 16)
    import numpy as np

    diff = np.abs(np.asarray(ours).astype(np.float64) - np.round(theirs * 255))
    assert diff.max() <= 1  # uint8 rounding only


def test_unconditional_unet_matches_a_diffusers_ddim_loop(uncond_dir):
    pipe = ImagePipeline.from_pretrained(uncond_dir)
    ours = pipe.generate_samples([None], [4], GenerationOptions("DDIM Trailing", 8))
    unet = UNet2DModel.from_pretrained(uncond_dir + "/unet")
    ref = DDIMScheduler.from_pretrained(uncond_dir + "/scheduler", timestep_spacing="trailing",
                                        set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(8)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(x, t).sample, t, x).prev_sample
    assert rel_err(ours, x) < 1e-4
    images = pipe.decode(ours)
    assert images[0].size == (16, 16) and images[0].mode == "RGB"


def _mixed_requests(shape):
    return [
        ImageRequest("a", shape, "UniPC AYS", 10, seed=1),
        ImageRequest("b", shape, "DDIM Trailing", 4, seed=2),
        ImageRequest("c", shape, "Euler A", 7, seed=3),
        ImageRequest("d", shape, "DPM++ 2M Karras", 5, seed=4),
        ImageRequest("e", shape, "UniPC Trailing", 6, seed=1),
    ]


def test_batched_engine_equals_one_at_a_time(uncond_dir):
    unet = UNet2DModel.from_pretrained(uncond_dir + "/unet").eval()
    model = UNetModel(unet, NoiseSchedule.stable_diffusion())
    shape = (3, 16, 16)
    solo = {}
    for r in _mixed_requests(shape):
        solo.update(DiffusionEngine(model, max_batch_size=1).generate([r]))

    engine = DiffusionEngine(model, max_batch_size=4)
    reqs = _mixed_requests(shape)
    for r in reqs[:3]:
        engine.add_request(r)
    results = {}
    for _ in range(2):  # the last two join mid-flight
        results.update(engine.step())
    for r in reqs[3:]:
        engine.add_request(r)
    while engine.has_unfinished():
        results.update(engine.step())

    assert set(results) == set(solo)
    for k in solo:
        assert rel_err(results[k], solo[k]) < 1e-5, k
    # total forwards: fewer than the 32 a one-at-a-time run needs; some steps carried 4 requests
    assert engine.stats.rows == 10 + 4 + 7 + 5 + 6
    assert engine.stats.forwards < engine.stats.rows and max(engine.stats.batch_sizes) == 4
    # same seed, different sampler -> different image; same everything -> same image
    assert rel_err(results["a"], results["e"]) > 1e-4
    again = DiffusionEngine(model).generate([ImageRequest("a", shape, "UniPC AYS", 10, seed=1)])
    assert torch.equal(again["a"], solo["a"])


def test_engine_rejects_bad_sampler_and_steps(uncond_dir):
    unet = UNet2DModel.from_pretrained(uncond_dir + "/unet")
    engine = DiffusionEngine(UNetModel(unet, NoiseSchedule.stable_diffusion()))
    with pytest.raises(ValueError, match="unknown sampler"):
        engine.add_request(ImageRequest("x", (3, 16, 16), "Heun Magic", 10))
    with pytest.raises(ValueError):
        engine.add_request(ImageRequest("x", (3, 16, 16), "UniPC AYS", 0))
