"""``sdrt eval``: binding success per mode, over prompts x seeds, with intervals and paired tests.

Every prompt is generated with the same seeds in every mode, so modes are compared image for
image (same starting noise). A ``Scorer`` judges each image; the built-in ``shapes`` scorer
knows the shapes world, and a user with real weights plugs in their own (``--scorer
package.module:Name``, any object with ``name`` and ``score(prompt, image) -> Score``).

Per mode: the success rate with its 95% Wilson interval and the count of each outcome. Per
pair of modes (each against the first): McNemar's exact test on the discordant images.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from PIL import Image

from .errors import InputError, UserError
from .modes import setting_parts

BUILT_IN_SCORERS = {"shapes": "sd_struct_rt.shapes.scorer:ShapesScorer"}
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Score:
    success: bool  # the prompt's binding is right (what the rates count)
    outcome: str  # a short name of what was seen, e.g. "exact", "colour_swap"
    details: dict = field(default_factory=dict)


class Scorer(Protocol):
    """Judges images. It may also define ``check(prompt)``, raising ``InputError`` for a prompt
    it cannot judge; ``evaluate`` calls it on every prompt before the first image is made."""

    name: str

    def score(self, prompt: str, image: Image.Image) -> Score: ...


def load_scorer(spec: str) -> Scorer:
    """``shapes`` or ``package.module:Name`` (a class, instantiated without arguments, or an object).

    The user's module failing (on import, in ``__init__``) is one line naming it, with the
    exception's type and message."""
    path = BUILT_IN_SCORERS.get(spec, spec)
    module_name, _, attribute = path.partition(":")
    if not attribute or not module_name:
        raise InputError(f"scorer must be one of {', '.join(BUILT_IN_SCORERS)} or package.module:Name, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # the user's code: any exception at all
        missing = getattr(error, "name", None) or ""
        if isinstance(error, ImportError) and (module_name == missing or module_name.startswith(missing + ".")):
            raise InputError(f"cannot load scorer {spec!r} ({type(error).__name__}: {error})") from None
        failure = user_failure(error, f"module {module_name} failed on import")
        raise InputError(f"cannot load scorer {spec!r}: {failure}") from None
    try:
        found = getattr(module, attribute)
    except AttributeError as error:
        raise InputError(f"cannot load scorer {spec!r} ({type(error).__name__}: {error})") from None
    except (Exception, SystemExit) as error:
        raise InputError(f"cannot load scorer {spec!r}: {user_failure(error, f'{module_name}.{attribute} failed')}") \
            from None
    try:
        scorer = found() if isinstance(found, type) else found
    except (Exception, SystemExit) as error:
        raise InputError(f"cannot load scorer {spec!r}: {user_failure(error, f'{module_name}.{attribute}() failed')}") \
            from None
    if not callable(getattr(scorer, "score", None)):
        raise InputError(f"scorer {spec!r} has no score(prompt, image) method")
    return scorer


def user_failure(error: BaseException, what: str) -> str:
    """``what`` the user's code did, with the exception's type and the first line of its message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{what} ({type(error).__name__}{': ' + message[:300] if message else ''})"


def scorer_label(scorer: Any) -> str:
    """The user's scorer as its module and class name, for messages about its failures."""
    kind = scorer if isinstance(scorer, type) else type(scorer)
    return f"{kind.__module__}.{kind.__qualname__}"


def checked_score(scorer: Scorer, prompt: str, image: Image.Image, where: str) -> Score:
    """``scorer.score`` on one image; what it raises or returns instead of a Score is one line
    naming the scorer and the image."""
    try:
        score = scorer.score(prompt, image)
    except (Exception, SystemExit) as error:
        raise UserError(f"scorer {scorer_label(scorer)}: {user_failure(error, f'score() failed on {where}')}") \
            from None
    if not hasattr(score, "success") or not hasattr(score, "outcome"):
        raise UserError(f"scorer {scorer_label(scorer)}: score() returned {type(score).__name__} on {where}, "
                        "not a Score(success, outcome, details)")
    if not isinstance(score.outcome, str):
        raise UserError(f"scorer {scorer_label(scorer)}: score() returned an outcome of type "
                        f"{type(score.outcome).__name__} on {where}; give a short string")
    details = getattr(score, "details", None)
    if details is not None and not isinstance(details, dict):
        raise UserError(f"scorer {scorer_label(scorer)}: score() returned details of type "
                        f"{type(details).__name__} on {where}; give a dict")
    return score


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound near 0 and 1, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    spread = Z_95 * math.sqrt(rate * (1 - rate) / trials + Z_95 ** 2 / (4 * trials ** 2))
    centre = rate + Z_95 ** 2 / (2 * trials)
    scale = 1 + Z_95 ** 2 / trials
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def mcnemar(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial test at 1/2)."""
    from scipy.stats import binomtest

    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(binomtest(only_second, discordant, 0.5).pvalue)


@dataclass
class Trial:
    prompt: str
    seed: int
    mode: str
    success: bool | None  # None when no scorer judged it
    outcome: str | None
    details: dict


def summarise(trials: Sequence[Trial], modes: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"modes": {}, "paired": {}}
    judged = [trial for trial in trials if trial.success is not None]
    for mode in modes:
        mine = [trial for trial in judged if trial.mode == mode]
        successes = sum(trial.success for trial in mine)
        low, high = wilson_interval(successes, len(mine))
        outcomes: dict[str, int] = {}
        for trial in mine:
            outcomes[trial.outcome] = outcomes.get(trial.outcome, 0) + 1
        summary["modes"][mode] = {"images": len(mine), "successes": successes,
                                  "success_rate": round(successes / len(mine), 4) if mine else None,
                                  "ci95": [round(low, 4), round(high, 4)], "outcomes": outcomes}
    baseline = modes[0]
    by_key = {(trial.prompt, trial.seed, trial.mode): trial.success for trial in judged}
    for mode in modes[1:]:
        keys = [(prompt, seed) for prompt, seed, trial_mode in by_key if trial_mode == baseline
                and (prompt, seed, mode) in by_key]
        only_baseline = sum(by_key[(p, s, baseline)] and not by_key[(p, s, mode)] for p, s in keys)
        only_mode = sum(by_key[(p, s, mode)] and not by_key[(p, s, baseline)] for p, s in keys)
        summary["paired"][f"{mode}_vs_{baseline}"] = {
            "pairs": len(keys), f"only_{baseline}": only_baseline, f"only_{mode}": only_mode,
            "difference": round((only_mode - only_baseline) / len(keys), 4) if keys else None,
            "mcnemar_p": round(mcnemar(only_baseline, only_mode), 6)}
    return summary


def evaluate(pipe, prompts: Sequence[str], seeds: Sequence[int], modes: Sequence[str], scorer: Scorer | None,
             batch_size: int = 8, keep_images: bool = True, on_batch: Callable[[int, int], None] | None = None,
             **arguments: Any) -> tuple[list[Trial], dict[tuple[str, int, str], Image.Image]]:
    """Every prompt x seed in every mode; ``arguments`` go to the pipeline (steps, guidance...)."""
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    batches = [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
    check_prompt = getattr(scorer, "check", None)
    for prompt in prompts if callable(check_prompt) else ():
        try:
            check_prompt(prompt)
        except UserError:
            raise
        except (Exception, SystemExit) as error:
            raise UserError(f"scorer {scorer_label(scorer)}: "
                            f"{user_failure(error, f'check() failed on the prompt {prompt!r}')}") from None
    requests = {(mode, index): pipe.check_inputs([prompt for prompt, _ in batch], seed=[seed for _, seed in batch],
                                                  mode=setting_parts(mode)[0], binding=setting_parts(mode)[1],
                                                  **arguments)
                for mode in modes for index, batch in enumerate(batches)}  # every input checked before the first image
    trials, images = [], {}
    total, done = len(jobs) * len(modes), 0
    for mode in modes:
        for index, batch in enumerate(batches):
            output = pipe.generate(pipe.prepare(requests[mode, index]))
            for (prompt, seed), image in zip(batch, output.images):
                score = None if scorer is None else checked_score(
                    scorer, prompt, image, f"the image of {prompt!r}, seed {seed}, mode {mode}")
                trials.append(Trial(prompt, seed, mode, None if score is None else bool(score.success),
                                    None if score is None else score.outcome,
                                    {} if score is None else dict(getattr(score, "details", None) or {})))
                if keep_images:
                    images[(prompt, seed, mode)] = image
            done += len(batch)
            if on_batch is not None:
                on_batch(done, total)
    return trials, images


def report(trials: Sequence[Trial], modes: Sequence[str], scorer: Scorer | None, context: dict) -> dict:
    return {**context, "scorer": getattr(scorer, "name", None), "modes": list(modes),
            "summary": summarise(trials, modes) if scorer is not None else None,
            "trials": [asdict(trial) for trial in trials]}
