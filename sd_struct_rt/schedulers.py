"""Samplers by name, all from diffusers, each built from the model folder's scheduler config.

The scheduler runs on the host, around whatever backend runs the UNet, so one engine set serves
every sampler here. Timesteps reach the UNet exactly as the scheduler gives them (float32 per row,
SPEC 5): Euler and DPM++ with Karras sigmas produce fractional ones.
"""

from __future__ import annotations

import inspect
from typing import Any

from .errors import InputError

# name -> (diffusers class, config overrides on top of the model folder's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS, SD 1.x's own and the paper's
    "ddim": ("DDIMScheduler", {}),
    # The k-diffusion samplers space their steps as k-diffusion does (and as their classes default
    # to); an SD 1.x folder's PNDM config says "leading", which would put them on whole timesteps.
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                       "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {"timestep_spacing": "linspace"}),
}


def scheduler_name(scheduler) -> str:
    """Our name of a scheduler object, or its class name for one we do not list."""
    class_name = type(scheduler).__name__
    for name, (listed, overrides) in SCHEDULERS.items():
        if listed == class_name and all(scheduler.config.get(key) == value for key, value in overrides.items()):
            return name
    return class_name


def make_scheduler(name: str | None, folder_scheduler):
    """Scheduler ``name`` configured like ``folder_scheduler`` (the model's own when ``name`` is None)."""
    import diffusers

    if name is None:
        return type(folder_scheduler).from_config(folder_scheduler.config)
    if name not in SCHEDULERS:
        raise InputError(f"must be one of {', '.join(SCHEDULERS)}, not {name!r}", parameter="scheduler")
    class_name, overrides = SCHEDULERS[name]
    try:
        scheduler_class = getattr(diffusers, class_name)
    except ImportError as error:  # LMS needs scipy
        raise InputError(f"{name!r} needs a library that is not installed ({str(error).strip()[:80]})",
                         parameter="scheduler") from None
    # Keys of the folder's scheduler that this class does not take are left out, not warned about.
    accepted = inspect.signature(scheduler_class.__init__).parameters
    config = {key: value for key, value in folder_scheduler.config.items() if key in accepted}
    return scheduler_class.from_config({**config, **overrides})


def draws_noise(scheduler) -> bool:
    """Whether ``step`` takes a generator (ancestral and stochastic samplers)."""
    return "generator" in inspect.signature(scheduler.step).parameters
