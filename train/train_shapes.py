"""Train the ``shapes`` model: Stable Diffusion 1.x's architecture, from scratch, on the coloured-shapes world.

    python train/train_shapes.py --out runs/shapes [--minutes-budget 44] [--seed 0]

Three networks, as in SD 1.x, small enough for a 2-core CPU and a 16 MB folder:

* an ``AutoencoderKL`` with three blocks (scale 4: 64x64 images, 16x16x4 latents), trained
  first on its own (reconstruction of the posterior mean, kept small by an L2 penalty), then
  frozen;
* a ``CLIPTextModel`` (2 layers, width 64) reading the real CLIP BPE tokenizer;
* a ``UNet2DConditionModel`` with three blocks (size step 16) and cross-attention at 8x8,
  4x4 and in the middle, trained jointly with the text encoder on pre-encoded latents with
  SD's epsilon objective and noise schedule (the scheduler config shipped with ``tiny``).

Each phase runs a fixed number of steps (``--vae-steps``, ``--unet-steps``) and its learning
rate follows the steps alone, so nothing depends on the clock: with the same ``--seed``,
``--threads``, torch version and CPU, a rerun writes bit-identical weights. The defaults took
42 minutes on a 2-core CPU. ``--minutes-budget`` is a guard, not the schedule: on a machine
too slow to reach the caps in time, training stops there, unannealed, and the log and a warning
say the run is not the recipe's.

The folder written to ``--out`` is a diffusers-format SD 1.x folder (fp16 safetensors, loaded
in float32) and ``training_log.json``: the recipe, the loss curve with wall times, and each
phase's duration.
"""

from __future__ import annotations

import os

# The machine is shared: idle OpenMP threads that spin, rather than sleep, stall every
# parallel op about tenfold whenever another process holds one of the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from sd_struct_rt.cli.options import Terminated, checked, install_signal_handlers, positive_int  # noqa: E402
from sd_struct_rt.files import clear_stale_staging, os_error_line, remove_entry, staging_path  # noqa: E402
from sd_struct_rt.inputs import whole_number  # noqa: E402
from sd_struct_rt.model import DRAWING_DEFAULTS_NAME  # noqa: E402
from sd_struct_rt.shapes import scorer, world  # noqa: E402
from sd_struct_rt.text import token_ids  # noqa: E402
from sd_struct_rt.vocab import write_tokenizer_folder  # noqa: E402

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": world.IMAGE_SIZE,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    # No attention in the VAE: flat shapes need no global context, and it would cost time.
    "mid_block_add_attention": False,
}
# The tiny model's text encoder: its 49408 x 64 token table (the real CLIP vocabulary) is
# already 6.3 MB in fp16, most of the 16 MB the folder may take.
TEXT_CONFIG = json.loads((resources.files("sd_struct_rt") / "models/tiny/text_encoder/config.json").read_text())
UNET_CONFIG = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64, 64],
    "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": TEXT_CONFIG["hidden_size"],
    "attention_head_dim": 4,
    # Attention at 16x16 (256 tokens) would cost more than the rest of the UNet on a CPU; at
    # 8x8 a latent pixel covers 8x8 image pixels, finer than the smallest shape (14 px).
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.995
WARMUP_STEPS = 100
# Quality rose with steps across the time-bounded runs (3,477: 65%, 4,062: 77%, 4,444: 87%
# held-out binding), so the cap is as high as the slowest idle day seen on this 2-core machine
# still reaches inside the guard: 0.57 s a step, 42 minutes in all, 5% to spare.
UNET_STEPS = 4000
LOG_EVERY = 25
# What the end takes after the last UNet step: the EMA copy, the fp16 check, writing the folder.
SAVE_RESERVE_S = 20.0
# What the folder records for callers that give no guidance or steps: the shapes models draw
# their prompts at 2-3 and blotches at SD's usual 7.5.
DRAWING_DEFAULTS = {"guidance_scale": 3.0, "num_inference_steps": 30}


def tiny_file(name: str) -> bytes:
    return (resources.files("sd_struct_rt") / "models" / "tiny" / name).read_bytes()


class Phase:
    """One training phase's step count and learning rate, which depend on nothing but the steps."""

    def __init__(self, name: str, max_steps: int, peak_lr: float, deadline: float):
        self.name, self.max_steps, self.peak_lr, self.deadline = name, max_steps, peak_lr, deadline
        self.start, self.step = time.monotonic(), 0

    def running(self) -> bool:
        return self.step < self.max_steps and time.monotonic() < self.deadline

    @property
    def learning_rate(self) -> float:
        """Linear warm-up, then a cosine down to a tenth of the peak at the end of the phase."""
        warmup = min(1.0, (self.step + 1) / WARMUP_STEPS)
        return self.peak_lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * self.step / self.max_steps)))

    def end_facts(self) -> dict:
        if self.step < self.max_steps:
            print(f"warning: the time budget ran out after {self.step} of {self.max_steps} {self.name} steps; "
                  "these weights are not the recipe's and will not reproduce", file=sys.stderr, flush=True)
        return {"steps": self.step, "reached_cap": self.step == self.max_steps}


class Log:
    def __init__(self, recipe: dict):
        self.recipe, self.curve, self.phases, self.notes, self.start = recipe, [], {}, {}, time.monotonic()
        self._losses: list[float] = []

    def loss(self, phase: Phase, value: float) -> None:
        self._losses.append(value)
        if phase.step % LOG_EVERY == 0:
            entry = {"phase": phase.name, "step": phase.step, "loss": float(np.mean(self._losses)),
                     "lr": phase.learning_rate, "wall_s": round(time.monotonic() - self.start, 1)}
            self.curve.append(entry)
            self._losses = []
            print(json.dumps(entry), flush=True)

    def end_phase(self, name: str, started: float, **facts) -> None:
        self._losses = []
        self.phases[name] = {"seconds": round(time.monotonic() - started, 1), **facts}
        print(json.dumps({name: self.phases[name]}), flush=True)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"recipe": self.recipe, "phases": self.phases, "notes": self.notes,
                                    "total_seconds": round(time.monotonic() - self.start, 1),
                                    "curve": self.curve}, indent=1) + "\n")


def generate_data(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng, split="train") for _ in range(count)]
    return np.stack([world.render(scene) for scene in scenes]), [world.caption(scene) for scene in scenes]


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, seed: int, count: int = 200) -> float:
    """Share of fresh scenes that the scorer still reads exactly after the VAE's round trip."""
    rng = np.random.default_rng([seed, 1])
    scenes = [world.sample_scene(rng, split="any") for _ in range(count)]
    images = to_model_range(np.stack([world.render(scene) for scene in scenes]))
    decoded = vae.decode(vae.encode(images).latent_dist.mean).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return sum(scorer.score_image(world.caption(scene), image).exact
               for scene, image in zip(scenes, pixels)) / count


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in ``[-1, 1]``, the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def train_vae(images: np.ndarray, deadline: float, args, log: Log, generator: torch.Generator) -> AutoencoderKL:
    """A regularised autoencoder: the posterior mean is decoded, and kept small by an L2 penalty.

    Decoding posterior samples, as SD does, hid the colours for hundreds of steps: the
    untrained encoder's standard deviation is about 1, so the decoder first learns to paint
    the average colour (pilot, 2 minutes: 24% of reconstructions read back exactly against
    97.5% from the mean). The UNet is trained on the means alone.
    """
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, fused=True)
    phase = Phase("vae", args.vae_steps, args.vae_lr, deadline)
    while phase.running():
        rows = torch.randint(len(images), (args.vae_batch,), generator=generator)
        batch = to_model_range(images[rows.numpy()])
        latents = vae.encode(batch).latent_dist.mean
        loss = F.mse_loss(vae.decode(latents).sample, batch) + args.latent_penalty * latents.pow(2).mean()
        set_learning_rate(optimizer, phase.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        phase.step += 1
        log.loss(phase, loss.item())
    vae.eval().requires_grad_(False)
    log.end_phase("vae", phase.start, **phase.end_facts(), batch=args.vae_batch,
                  reconstruction_exact=reconstruction_accuracy(vae, args.seed))
    return vae


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, log: Log) -> torch.Tensor:
    """Every image's latent (posterior mean), scaled to unit variance as SD's ``scaling_factor`` does."""
    started = time.monotonic()
    latents = torch.cat([vae.encode(to_model_range(images[first:first + 256])).latent_dist.mean
                         for first in range(0, len(images), 256)])
    scaling = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    log.end_phase("encode", started, images=len(images), scaling_factor=scaling)
    return latents * scaling


def train_unet(latents, ids, empty, text_encoder, deadline, args, log, generator, train_text_encoder: bool):
    """SD's epsilon objective on ``latents`` captioned by ``ids``; the text encoder learns too, or stays frozen.

    Returns the EMA copies of the UNet and, when it trained, of the text encoder.
    """
    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    networks = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder} if train_text_encoder
                                   else {"unet": unet})
    text_encoder.requires_grad_(train_text_encoder)
    ema = AveragedModel(networks, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    optimizer = torch.optim.AdamW(networks.parameters(), lr=args.unet_lr, weight_decay=0.0, fused=True)

    alphas_cumprod = noise_schedule().alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_weight = snr.clamp(max=MIN_SNR_GAMMA) / snr  # min-SNR-5: easy, nearly clean steps count less
    phase = Phase("unet", args.unet_steps, args.unet_lr, deadline)
    while phase.running():
        rows = torch.randint(len(latents), (args.unet_batch,), generator=generator)
        noise = torch.randn(latents[rows].shape, generator=generator)
        timesteps = torch.randint(len(alphas_cumprod), (args.unet_batch,), generator=generator)
        signal = alphas_cumprod[timesteps].sqrt()[:, None, None, None]
        noisy = signal * latents[rows] + (1 - signal ** 2).sqrt() * noise
        batch_ids = ids[rows].clone()
        # Empty captions teach the unconditional prediction that classifier-free guidance needs.
        batch_ids[torch.rand(args.unet_batch, generator=generator) < CAPTION_DROPOUT] = empty
        with torch.set_grad_enabled(train_text_encoder):
            states = text_encoder(batch_ids).last_hidden_state
        prediction = unet(noisy, timesteps, states).sample
        per_row = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_row * loss_weight[timesteps]).mean()
        set_learning_rate(optimizer, phase.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(networks.parameters(), 1.0)
        optimizer.step()
        ema.update_parameters(networks)
        phase.step += 1
        log.loss(phase, loss.item())
    log.end_phase("unet", phase.start, **phase.end_facts(), batch=args.unet_batch,
                  text_encoder="trained" if train_text_encoder else "frozen")
    return ema.module["unet"].eval(), (ema.module["text_encoder"].eval() if train_text_encoder else text_encoder)


def new_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_CONFIG.items()
                                           if k not in ("architectures", "model_type")}))


def noise_schedule() -> PNDMScheduler:
    return PNDMScheduler.from_config(json.loads(tiny_file("scheduler/scheduler_config.json")))


@torch.no_grad()
def fp16_rounding_error(unet: UNet2DConditionModel, latents: torch.Tensor, generator: torch.Generator) -> float:
    """Relative change of the noise prediction when the weights are rounded to fp16, as shipped."""
    rounded = UNet2DConditionModel.from_config(unet.config)
    rounded.load_state_dict({name: value.half().float() for name, value in unet.state_dict().items()})
    sample = latents[:16] + torch.randn(latents[:16].shape, generator=generator)
    timesteps = torch.randint(1000, (16,), generator=generator)
    states = torch.randn(16, 77, TEXT_CONFIG["hidden_size"], generator=generator)
    reference = unet(sample, timesteps, states).sample
    return float((rounded.eval()(sample, timesteps, states).sample - reference).norm() / reference.norm())


def save_folder(out: Path, vae, unet, text_encoder) -> None:
    """Everything of the SD 1.x folder but the tokenizer, which training already wrote there."""
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_bytes(tiny_file("model_index.json"))
    (out / "scheduler" / "scheduler_config.json").write_bytes(tiny_file("scheduler/scheduler_config.json"))
    # diffusers loads fp16 weights into its float32 modules; transformers follows the config's
    # dtype, so the text encoder's config (written from the float32 module) keeps float32.
    vae.half().save_pretrained(out / "vae")
    unet.half().save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder",
                                 state_dict={k: v.half() for k, v in text_encoder.state_dict().items()})
    write_drawing_defaults(out)


def write_drawing_defaults(out: Path) -> None:
    (out / DRAWING_DEFAULTS_NAME).write_text(json.dumps(DRAWING_DEFAULTS, indent=1) + "\n")


class OneLineParser(argparse.ArgumentParser):
    """A bad option is one line (not the usage block) and exit 2, before any work."""

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)  # our checks name the flag themselves
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(flag: str, upper: int):
    """A whole number from 1 to ``upper``: a count of scenes, threads or rows in a batch."""
    return positive_int(flag, upper)


def number(flag: str, low: float, upper: float, low_included: bool = False):
    """A finite number above ``low`` (or from it, ``low_included``) and at most ``upper``; nan and inf refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, not {text!r}") from None
        above = value >= low if low_included else value > low
        if not math.isfinite(value) or not above or value > upper:
            bound = f"{'from' if low_included else 'above'} {low:g} up to {upper:g}"
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number {bound}, not {text}")
        return value
    return parse


def seed_option(text: str) -> int:
    return checked(int, lambda value, name: whole_number(value, name, 0, 2**63 - 1), "--seed", "a whole number")(text)


def recipe_parser(description: str, minutes_budget: float) -> argparse.ArgumentParser:
    """The options every shapes recipe has: where, which seed, how long at most, how much data,
    the UNet phase and the threads. Each is checked here, so a bad one stops the run before any work."""
    parser = OneLineParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    parser.add_argument("--seed", type=seed_option, default=0)
    parser.add_argument("--minutes-budget", type=number("--minutes-budget", 0, 10**6), default=minutes_budget,
                        help="a guard: stop early (and warn) if the steps do not fit in this wall time")
    parser.add_argument("--scenes", type=count("--scenes", 10**6), default=20000,
                        help="training images rendered and encoded")
    parser.add_argument("--unet-steps", type=positive_int("--unet-steps", 10**6), default=UNET_STEPS)
    parser.add_argument("--unet-batch", type=count("--unet-batch", 4096), default=64)
    parser.add_argument("--unet-lr", type=number("--unet-lr", 0, 10), default=1e-3)
    parser.add_argument("--threads", type=count("--threads", 1024), default=2)
    return parser


def main() -> None:
    parser = recipe_parser(__doc__.split("\n\n")[0], minutes_budget=44.5)
    parser.add_argument("--vae-steps", type=positive_int("--vae-steps", 10**6), default=600)
    parser.add_argument("--vae-batch", type=count("--vae-batch", 4096), default=16)
    parser.add_argument("--vae-lr", type=number("--vae-lr", 0, 10), default=2e-3)
    parser.add_argument("--latent-penalty", type=number("--latent-penalty", 0, 10**6, low_included=True),
                        default=1e-5, help="weight of the mean squared latent")
    run_staged(parser, train, "train_shapes")


def run_staged(parser: argparse.ArgumentParser, train_into, name: str) -> None:
    """Parse the arguments and run ``train_into(staged_folder, args)``; the folder becomes ``--out``
    only when complete, and a signal or an error leaves neither it nor its staging behind."""
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} already exists; give a new folder")
    install_signal_handlers()  # SIGTERM unwinds like Ctrl-C, so the staged folder is removed either way
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_staging(args.out)  # left by a run that was killed outright
        staged = staging_path(args.out, "folder")
        try:
            train_into(staged, args)
            staged.rename(args.out)
        except BaseException:
            remove_entry(staged)
            raise
    except KeyboardInterrupt as interruption:
        terminated = isinstance(interruption, Terminated)
        print(f"{name}: {'terminated' if terminated else 'interrupted'}; nothing was written to {args.out}",
              file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except OSError as error:
        sys.exit(f"{name}: error: {os_error_line(error, 'write the model folder', args.out)}")


def train(out: Path, args) -> None:
    """Everything into ``out``, a staging folder that becomes ``--out`` only when complete."""
    start = time.monotonic()
    deadline = start + args.minutes_budget * 60 - SAVE_RESERVE_S
    torch.set_num_threads(args.threads)
    recipe = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "torch": torch.__version__,
              "vae_config": VAE_CONFIG, "unet_config": UNET_CONFIG, "text_config": TEXT_CONFIG,
              "caption_dropout": CAPTION_DROPOUT, "min_snr_gamma": MIN_SNR_GAMMA,
              "ema_decay": EMA_DECAY, "warmup_steps": WARMUP_STEPS, "held_out_pairs": sorted(world.HELD_OUT_PAIRS)}
    log = Log(recipe)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.monotonic()
    images, captions = generate_data(args.scenes, args.seed)
    log.end_phase("data", started, scenes=len(images), two_object=sum(" and " in c for c in captions))
    torch.manual_seed(args.seed)
    vae = train_vae(images, deadline, args, log, generator)
    latents = encode_latents(vae, images, log)
    write_tokenizer_folder(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    torch.manual_seed(args.seed + 1)
    text_encoder = new_text_encoder()
    unet, text_encoder = train_unet(latents, token_ids(tokenizer, captions), token_ids(tokenizer, [""])[0],
                                    text_encoder, deadline, args, log, generator, train_text_encoder=True)
    log.notes["fp16_rounding_relative_error"] = fp16_rounding_error(unet, latents, generator)
    started = time.monotonic()
    save_folder(out, vae, unet, text_encoder)
    log.end_phase("save", started)
    log.write(out / "training_log.json")


if __name__ == "__main__":
    main()
