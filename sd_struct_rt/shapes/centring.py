"""Does the shape word look at its shape? Attention maps against the scorer's detections.

For a one-object prompt ("a red circle"), the heat centroid (``attention_maps.heat_centroid``)
of the shape word's token map is *centred* on the object when it lies within the object's
equivalent radius (the radius of a disc of the detected area) of the detected centroid. Only
images the scorer judges exact count: elsewhere there is no single object to be centred on.

The map averages every step and, by default, the model's finest cross-attention layers only
(8x8 on the shapes model). Its 4x4 bottleneck layers have cells of 16 pixels, larger than most
objects, and do not locate them; averaged in, they pulled the centroids of all-layer maps off
(``layers="all"`` and ``"coarsest"`` measure those).

The baseline is the same test for a fixed guess, the centre of the image: objects are placed
anywhere, so a map that ignored the image would score about that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..attention_maps import heat_centroid
from .scorer import detect, judge
from .world import parse_caption


@dataclass(frozen=True)
class CentringTrial:
    prompt: str
    seed: int
    judged: bool  # the image holds exactly the prompt's object
    centred: bool | None
    centre_guess_centred: bool | None
    distance: float | None  # heat centroid to object centroid, pixels
    radius: float | None


def _within(point: tuple[float, float], centre: tuple[float, float], radius: float) -> bool:
    return math.dist(point, centre) <= radius


LAYER_CHOICES = ("finest", "coarsest", "all")


def measure_centring(pipe, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 8,
                     layers: str = "finest", **arguments: Any) -> list[CentringTrial]:
    """One trial per one-object prompt and seed, on ``pipe`` (the torch reference), with maps of
    the ``finest`` cross-attention layers, the ``coarsest`` or ``all``; ``arguments`` go to the
    pipeline."""
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, not {layers!r}")
    available = pipe.check_attention_downsampling(arguments.get("mode", "values"), None)
    downsampling = {"finest": (min(available),), "coarsest": (max(available),), "all": None}[layers]
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    for prompt, _ in jobs:
        if len(parse_caption(prompt)) != 1:
            raise ValueError(f"centring needs one-object prompts, not {prompt!r}")
    trials = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        output = pipe([prompt for prompt, _ in batch], seed=[seed for _, seed in batch], attention_maps=True,
                      attention_downsampling=downsampling, **arguments)
        for (prompt, seed), image, maps in zip(batch, output.images, output.attention):
            detections = detect(image)
            if not judge(prompt, detections).exact:
                trials.append(CentringTrial(prompt, seed, False, None, None, None, None))
                continue
            (found,) = detections
            shape = parse_caption(prompt)[0][1]
            (heat,) = [heat for name, heat in maps.items() if name.startswith("token ") and name.endswith(f" {shape}")]
            centroid = heat_centroid(heat, image.size)
            radius = math.sqrt(found.area / math.pi)
            centre = (image.size[0] / 2, image.size[1] / 2)
            trials.append(CentringTrial(prompt, seed, True, _within(centroid, found.centroid, radius),
                                        _within(centre, found.centroid, radius),
                                        round(math.dist(centroid, found.centroid), 2), round(radius, 2)))
    return trials


def centring_summary(trials: Sequence[CentringTrial]) -> dict[str, Any]:
    from ..evaluation import wilson_interval

    judged = [trial for trial in trials if trial.judged]
    centred = sum(bool(trial.centred) for trial in judged)
    guessed = sum(bool(trial.centre_guess_centred) for trial in judged)
    low, high = wilson_interval(centred, len(judged))
    return {"images": len(trials), "judged": len(judged), "centred": centred,
            "centred_rate": round(centred / len(judged), 4) if judged else None,
            "ci95": [round(low, 4), round(high, 4)],
            "centre_guess_rate": round(guessed / len(judged), 4) if judged else None,
            "trials": [asdict(trial) for trial in trials]}
