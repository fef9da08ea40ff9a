"""Train the ``shapes-clip`` model: the shapes world conditioned as Stable Diffusion is, on a frozen CLIP.

    python train/train_shapes_clip.py --out runs/shapes-clip [--seed 0]

SD's UNet reads a text encoder that was trained elsewhere, contrastively, on web image-caption
pairs, and then frozen; such encoders behave much like bags of words. The ``shapes`` model's
text encoder instead learns jointly with its UNet, and learns to bind. This recipe rebuilds SD's
text side in the shapes world, in three phases:

1. **Contrastive pretraining of a small CLIP.** The text tower is the ``shapes`` model's
   ``CLIPTextModel`` (2 layers, width 64, causal, the real CLIP BPE tokenizer), pooled at the
   first end-of-text token and projected, as CLIP does; the image tower is a four-layer CNN.
   The loss is CLIP's symmetric InfoNCE over random batches with a learned temperature, and no
   hard negatives. Captions are drawn fresh for every row, with the flaws of web alt-text
   (``CAPTION_MIX``): two objects named in either order, or only the larger one (saliency
   bias), or without their colours; single objects sometimes without their colour.
2. **A binding probe of that CLIP** (ARO's attribution test in this world): on two-object
   scenes, does it score the true caption above the caption with the two colours swapped?
   Measured on the fp16-rounded text tower that ships, for seen and held-out pairs.
3. **The UNet**, the ``shapes`` configuration, trained with SD's objective on the frozen text
   tower's ``last_hidden_state`` of the full world captions (10% dropped to the empty prompt).
   The ``shapes`` model's VAE is reused as it ships; so are its latent scaling and scheduler.

Each phase runs a fixed number of steps, learning rates follow the steps alone, and every
random draw comes from the seed: with the same arguments, threads, torch version and CPU, a
rerun writes bit-identical weights. ``--minutes-budget`` is a guard, as in ``train_shapes.py``.

The folder is a diffusers-format SD 1.x folder (fp16 safetensors), with ``sdrt_defaults.json``
(the guidance and steps it draws best at) and ``training_log.json``, which holds the recipe,
the loss curves, the probe and each phase's duration.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_shapes.py

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

import train_shapes as recipe  # noqa: E402  (train/ is the script's own folder, first on sys.path)
from sd_struct_rt.cli.options import positive_int  # noqa: E402
from sd_struct_rt.evaluation import wilson_interval  # noqa: E402
from sd_struct_rt.shapes import world  # noqa: E402
from sd_struct_rt.text import token_ids  # noqa: E402
from sd_struct_rt.vocab import write_tokenizer_folder  # noqa: E402

# What a two-object scene's caption says, as a share of draws. Alt-text names what is salient
# and skips attributes (Gurung, Hoffmann and Brox, arXiv 2507.07985); the order of the objects
# says nothing about the picture. Recipes tried, with their probe figures, are in the README.
CAPTION_MIX = {
    "both": 0.2,  # "a blue square and a red circle", the two objects in random order
    "larger_only": 0.4,  # "a red circle": only the larger object (the first drawn when sizes tie)
    "both_without_colours": 0.25,  # "a square and a circle", random order
    "larger_without_colour": 0.15,  # "a circle"
}
# A single object's caption drops its colour this often ("a circle").
SINGLE_WITHOUT_COLOUR = 0.25
# Captions are at most 10 BPE tokens; the tower is causal and pooled at the first end-of-text
# token, so positions after it change neither the loss nor any gradient and need not be run.
CLIP_CONTEXT = 16
CLIP_EMBED = 64
PROBE_SCENES = 600  # per split
# A world of 146 distinct captions puts a scene's colour-swapped twin into most batches of 256,
# a hard negative that web-scale batches almost never hold; at 64 that happens a quarter as often.
CLIP_BATCH = 64
SHAPES_VAE = resources.files("sd_struct_rt") / "models" / "shapes" / "vae"


class ImageTower(torch.nn.Module):
    """Four stride-2 convolutions (64 -> 4 pixels) and a linear head into CLIP's joint space."""

    def __init__(self, embed: int = CLIP_EMBED):
        super().__init__()
        layers, channels = [], 3
        for width in (16, 32, 64, 64):
            layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1), torch.nn.GroupNorm(8, width),
                       torch.nn.SiLU()]
            channels = width
        self.features = torch.nn.Sequential(*layers, torch.nn.Flatten())
        self.head = torch.nn.Linear(channels * 4 * 4, embed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class Clip(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_projection = torch.nn.Linear(text_encoder.config.hidden_size, CLIP_EMBED, bias=False)
        self.image_tower = ImageTower()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_encoder(ids[:, :CLIP_CONTEXT]).pooler_output  # the first end-of-text token's state
        return F.normalize(self.text_projection(pooled), dim=-1)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=math.log(100)).exp()  # CLIP's cap on the temperature
        logits = scale * self.image_embeddings(images) @ self.text_embeddings(ids).T
        labels = torch.arange(len(ids))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _larger_first(scene: world.Scene) -> list[world.SceneObject]:
    return sorted(scene.objects, key=lambda obj: -obj.geometry.half_size)


def _named(objects, with_colour: bool) -> str:
    return " and ".join(f"a {obj.colour} {obj.shape}" if with_colour else f"a {obj.shape}" for obj in objects)


def web_caption(scene: world.Scene, rng: np.random.Generator, mix: dict[str, float]) -> str:
    """One alt-text-like caption of ``scene``, drawn from ``mix`` (single objects: ``SINGLE_WITHOUT_COLOUR``)."""
    if len(scene.objects) == 1:
        return _named(scene.objects, with_colour=rng.random() >= SINGLE_WITHOUT_COLOUR)
    kind = list(mix)[int(rng.choice(len(mix), p=list(mix.values())))]
    shuffled = [scene.objects[int(i)] for i in rng.permutation(2)]
    larger = _larger_first(scene)[:1]
    return {"both": lambda: _named(shuffled, True), "larger_only": lambda: _named(larger, True),
            "both_without_colours": lambda: _named(shuffled, False),
            "larger_without_colour": lambda: _named(larger, False)}[kind]()


class CaptionIds:
    """Token ids of captions, each tokenized once: the caption space is small, the steps many."""

    def __init__(self, tokenizer):
        self.tokenizer, self.known = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({caption for caption in captions if caption not in self.known})
        if missing:
            self.known.update(zip(missing, token_ids(self.tokenizer, missing)))
        return torch.stack([self.known[caption] for caption in captions])


def pretrain_clip(images, scenes, tokenizer, deadline, args, log, generator) -> Clip:
    torch.manual_seed(args.seed + 1)
    clip = Clip(recipe.new_text_encoder())
    optimizer = torch.optim.AdamW(clip.parameters(), lr=args.clip_lr, weight_decay=0.1, fused=True)
    rng = np.random.default_rng([args.seed, 3])
    ids_of = CaptionIds(tokenizer)
    phase = recipe.Phase("clip", args.clip_steps, args.clip_lr, deadline)
    while phase.running():
        rows = torch.randint(len(images), (args.clip_batch,), generator=generator).numpy()
        ids = ids_of([web_caption(scenes[row], rng, args.caption_mix) for row in rows])
        loss = clip.loss(recipe.to_model_range(images[rows]), ids)
        recipe.set_learning_rate(optimizer, phase.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        phase.step += 1
        log.loss(phase, loss.item())
    log.end_phase("clip", phase.start, **phase.end_facts(), batch=args.clip_batch,
                  temperature=round(1 / clip.logit_scale.clamp(max=math.log(100)).exp().item(), 5),
                  distinct_captions=len(ids_of.known))
    return clip.eval().requires_grad_(False)


def swapped_colours(scene: world.Scene) -> str:
    first, second = scene.objects
    return world.caption_of([(second.colour, first.shape), (first.colour, second.shape)])


@torch.no_grad()
def binding_probe(clip: Clip, tokenizer, seed: int, scenes_per_split: int = PROBE_SCENES) -> dict:
    """Share of two-object scenes whose true caption outscores its colour-swapped twin, per split."""
    figures = {}
    for index, split in enumerate(("train", "held_out")):
        rng = np.random.default_rng([seed, 4, index])
        scenes = [world.sample_scene(rng, object_count=2, split=split) for _ in range(scenes_per_split)]
        image_embeddings = clip.image_embeddings(recipe.to_model_range(np.stack([world.render(s) for s in scenes])))
        true = (image_embeddings * clip.text_embeddings(
            token_ids(tokenizer, [world.caption(s) for s in scenes]))).sum(-1)
        swapped = (image_embeddings * clip.text_embeddings(
            token_ids(tokenizer, [swapped_colours(s) for s in scenes]))).sum(-1)
        wins, ties = int((true > swapped).sum()), int((true == swapped).sum())
        low, high = wilson_interval(wins, scenes_per_split)
        figures["seen" if split == "train" else "held_out"] = {
            "scenes": scenes_per_split, "true_caption_preferred": wins, "ties": ties,
            "accuracy": round(wins / scenes_per_split, 4), "ci95": [round(low, 4), round(high, 4)]}
    return figures


def round_to_fp16(module: torch.nn.Module) -> None:
    """The weights as the folder will hold them, so that the probe and the UNet see the shipped tower."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter.half().float())


def load_shapes_vae(images: np.ndarray, log: recipe.Log) -> tuple[AutoencoderKL, torch.Tensor]:
    started = time.monotonic()
    vae = AutoencoderKL.from_pretrained(SHAPES_VAE).eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(recipe.to_model_range(images[first:first + 256])).latent_dist.mean
                             for first in range(0, len(images), 256)])
    log.end_phase("encode", started, images=len(images), vae="shapes", scaling_factor=vae.config.scaling_factor)
    return vae, latents * vae.config.scaling_factor


def save_folder(out: Path, unet, text_encoder) -> None:
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_bytes(recipe.tiny_file("model_index.json"))
    (out / "scheduler" / "scheduler_config.json").write_bytes(recipe.tiny_file("scheduler/scheduler_config.json"))
    (out / "vae").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (out / "vae" / name).write_bytes((SHAPES_VAE / name).read_bytes())
    unet.half().save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder",
                                 state_dict={k: v.half() for k, v in text_encoder.state_dict().items()})
    recipe.write_drawing_defaults(out)


def train(out: Path, args) -> None:
    start = time.monotonic()
    deadline = start + args.minutes_budget * 60 - recipe.SAVE_RESERVE_S
    torch.set_num_threads(args.threads)
    log = recipe.Log({**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "torch": torch.__version__, "unet_config": recipe.UNET_CONFIG, "text_config": recipe.TEXT_CONFIG,
                      "single_without_colour": SINGLE_WITHOUT_COLOUR, "clip_context": CLIP_CONTEXT,
                      "caption_dropout": recipe.CAPTION_DROPOUT, "min_snr_gamma": recipe.MIN_SNR_GAMMA,
                      "ema_decay": recipe.EMA_DECAY, "warmup_steps": recipe.WARMUP_STEPS,
                      "held_out_pairs": sorted(world.HELD_OUT_PAIRS)})
    generator = torch.Generator().manual_seed(args.seed)

    started = time.monotonic()
    rng = np.random.default_rng(args.seed)
    scenes = [world.sample_scene(rng, split="train") for _ in range(args.scenes)]
    images = np.stack([world.render(scene) for scene in scenes])
    log.end_phase("data", started, scenes=len(scenes), two_object=sum(len(s.objects) == 2 for s in scenes))
    write_tokenizer_folder(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")

    clip = pretrain_clip(images, scenes, tokenizer, deadline, args, log, generator)
    round_to_fp16(clip.text_encoder)
    started = time.monotonic()
    log.notes["binding_probe"] = binding_probe(clip, tokenizer, args.seed)
    log.end_phase("probe", started)
    print(json.dumps({"binding_probe": log.notes["binding_probe"]}), flush=True)
    if args.probe_only:
        log.write(out / "training_log.json")
        return

    _, latents = load_shapes_vae(images, log)
    captions = [world.caption(scene) for scene in scenes]
    unet, text_encoder = recipe.train_unet(latents, token_ids(tokenizer, captions), token_ids(tokenizer, [""])[0],
                                           clip.text_encoder, deadline, args, log, generator,
                                           train_text_encoder=False)
    log.notes["fp16_rounding_relative_error"] = recipe.fp16_rounding_error(unet, latents, generator)
    started = time.monotonic()
    save_folder(out, unet, text_encoder)
    log.end_phase("save", started)
    log.write(out / "training_log.json")


def caption_mix(text: str) -> dict[str, float]:
    """``both=0.4,larger_only=0.3,...``: every kind of ``CAPTION_MIX``, shares summing to 1."""
    try:
        mix = {key.strip(): float(value) for key, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--caption-mix must look like {format_mix(CAPTION_MIX)}") from None
    if set(mix) != set(CAPTION_MIX) or min(mix.values()) < 0 or not math.isclose(sum(mix.values()), 1.0):
        raise argparse.ArgumentTypeError(f"--caption-mix needs each of {', '.join(CAPTION_MIX)} once, "
                                         "non-negative shares summing to 1")
    return {key: mix[key] for key in CAPTION_MIX}


def format_mix(mix: dict[str, float]) -> str:
    return ",".join(f"{key}={value}" for key, value in mix.items())


def main() -> None:
    parser = recipe.recipe_parser(__doc__.split("\n\n")[0], minutes_budget=58.0)
    parser.add_argument("--caption-mix", type=caption_mix, default=CAPTION_MIX,
                        help=f"shares of two-object caption kinds for the CLIP (default {format_mix(CAPTION_MIX)})")
    parser.add_argument("--clip-steps", type=positive_int("--clip-steps", 10**6), default=1500)
    parser.add_argument("--clip-batch", type=recipe.count("--clip-batch", 4096), default=CLIP_BATCH)
    parser.add_argument("--clip-lr", type=recipe.number("--clip-lr", 0, 10), default=1e-3)
    parser.add_argument("--probe-only", action="store_true",
                        help="stop after the CLIP's binding probe (to try caption mixes); the folder then holds "
                             "only the tokenizer and the log")
    recipe.run_staged(parser, train, "train_shapes_clip")


if __name__ == "__main__":
    main()
