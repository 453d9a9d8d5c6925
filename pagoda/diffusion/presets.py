"""Named samplers: a solver plus a schedule kind, as the apps that coined the names define them.

| name            | solver                                                    | schedule                        |
| UniPC AYS       | UniPC order 2, bh2, corrector on, lower-order final       | Align Your Steps (SD1.5 table)  |
| UniPC Trailing  | the same UniPC                                            | trailing timesteps              |
| DDIM Trailing   | DDIM, η = 0, last step to ᾱ = 1 (σ = 0)                   | trailing timesteps              |
| DPM++ 2M Karras | DPM-Solver++(2M)                                          | Karras, ρ = 7                   |
| Euler A         | Euler ancestral, η = 1                                    | linspace timesteps              |

Every schedule ends at σ = 0, so the last step returns the model's x̂0.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.diffusion.noise_schedule import NoiseSchedule
from pagoda.diffusion.schedule import Schedule, make_schedule
from pagoda.diffusion.solvers import DDIM, DPMSolverPP2M, EulerAncestral, Solver, UniPC


@dataclass(frozen=True)
class Preset:
    name: str
    solver: Solver
    schedule_kind: str
    ays_model: str = "sd15"  # which AYS table, for schedule_kind == "ays"

    def schedule(self, noise: NoiseSchedule, num_steps: int) -> Schedule:
        return make_schedule(self.schedule_kind, noise, num_steps, self.ays_model)


_UNIPC = UniPC(order=2, variant="bh2", use_corrector=True, lower_order_final=True)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("UniPC AYS", _UNIPC, "ays"),
        Preset("UniPC Trailing", _UNIPC, "trailing"),
        Preset("DDIM Trailing", DDIM(eta=0.0), "trailing"),
        Preset("DPM++ 2M Karras", DPMSolverPP2M(), "karras"),
        Preset("Euler A", EulerAncestral(eta=1.0), "linspace"),
    )
}


def _key(name: str) -> str:
    return "".join(name.lower().split()).replace("_", "").replace("-", "")


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by name, ignoring case, spaces, '-' and '_' ("unipc-ays" finds "UniPC AYS")."""
    if isinstance(name, Preset):
        return name
    for preset in PRESETS.values():
        if _key(preset.name) == _key(name):
            return preset
    raise ValueError(f"unknown sampler {name!r}; choose one of {list(PRESETS)}")
