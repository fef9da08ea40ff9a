"""``StructuredDiffusionPipeline``: the public API, over the torch reference or a built engine set.

    from sd_struct_rt import StructuredDiffusionPipeline

    pipe = StructuredDiffusionPipeline.from_pretrained("tiny")         # torch; a folder or hub id too
    pipe = StructuredDiffusionPipeline.from_engines("engines/tiny")    # a set from sdrt build-engine
    out = pipe("a red car and a white sheep", seed=7, num_inference_steps=30)
    out.save(0, "car.png")                                              # PNG with its metadata

A pipeline object is for one thread at a time (its tokenizer keeps per-call state); the server
(``serve.batcher``) serialises the stages that use it.

A call goes through three steps, in flow order, and every caller (the API, the CLI, the
server's batcher, ``sdrt bench``) takes the same ones:

1. ``check_inputs``: every input, engine profile included, checked once and completed with its
   defaults, before any compute (a ``Request``; its scheduler is built here, once);
2. ``prepare``: structure, conditioning, seeded generators, latents and the ``DenoisingRun``
   (a ``Prepared``);
3. the denoising loop, ``predict_noise`` once per step (the server's batcher makes these calls
   for many requests at once), then ``outputs``: decode and metadata.

Each stage is also a method of its own (``structure``, ``condition``, ``predict_noise``,
``decode``), so ``sdrt bench`` can time them. Bad input raises ``InputError`` (a ``ValueError``)
whose message is one line naming the parameter.
"""

from __future__ import annotations

import contextlib
import copy
import json
import numbers
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from . import __version__, inputs
from .attention import AttentionRecorder
from .attention_maps import named_maps
from .backends import AttentionRecording, Networks, OpenOptions
from .binding import BINDINGS, BindingMethod
from .conditioning import Conditioning, build_conditioning
from .contract import ModelFacts
from .errors import InputError, UserError
from .families import Family
from .image import png_bytes, save_png, to_pil
from .manifest import Manifest
from .modes import DEFAULT_MAX_LEVELS, MAX_LEVELS, MODES, Mode, mode_named, role_for
from .sampling import DenoisingRun, Progress, initial_latents, seeded_generators, to_uint8
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name
from .structure import analyse
from .structure.parsers import PARSERS, Parser, make_parser
from .structure.spans import StructuredPrompt, StructureWarning, capped, quoted_list

# What a call with no steps or guidance uses when the model folder records none (SD's own).
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE_SCALE = 7.5
PromptInput = str | StructuredPrompt | Sequence[str | StructuredPrompt]


@dataclass
class PipelineOutput:
    """The images of one call, in prompt order, and the metadata each one's PNG records."""

    images: list[Image.Image]
    metadata: list[dict[str, str]]
    # with attention_maps=True: per image, named heatmaps (``attention_maps.named_maps``)
    attention: list[dict[str, Any]] | None = None
    attention_downsampling: tuple[int, ...] | None = None  # the cross-attention layers the maps average

    def save(self, index: int, path: str | Path) -> Path:
        """Write image ``index`` as a PNG with its metadata; the file appears only when complete."""
        path = Path(path)
        save_png(self.images[index], path, self.metadata[index])
        return path

    def png(self, index: int) -> bytes:
        """Image ``index`` as PNG bytes with its metadata, as ``save`` writes it."""
        return png_bytes(self.images[index], self.metadata[index])


@dataclass(frozen=True)
class Request:
    """Every input of one call, checked and completed with its defaults (step 1's result)."""

    prompts: tuple[str | StructuredPrompt, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    width: int
    height: int
    mode: str
    parser: Parser | None  # None: plain, no structure and no binding
    max_levels: int
    scheduler: str  # a name of schedulers.SCHEDULERS, or the class name of the folder's own
    role: str  # the UNet role that serves ``mode`` on this pipeline
    # The scheduler, built once to check the steps; each run takes a copy (multistep ones keep state).
    sampler: Any = field(compare=False, repr=False)
    # With attention maps: the cross-attention layers they average, by downsampling; None: no maps.
    attention_maps: tuple[int, ...] | None = None
    binding: BindingMethod | None = None  # a text-side binding method (SPEC 3.7)


@dataclass
class Prepared:
    """Everything one checked request needs to run (step 2's result): its structure and conditioning,
    and its sampling state, whose latents come from the prompts' own seeded generators."""

    request: Request
    structured: list[StructuredPrompt]
    conditioning: Conditioning
    run: DenoisingRun
    recorder: AttentionRecorder | None = None  # with attention maps


@dataclass(frozen=True)
class EngineSet:
    folder: Path
    manifest: Manifest


@dataclass
class StructuredDiffusionPipeline:
    networks: Networks
    tokenizers: tuple  # the family's, in its order (the first one's tokens are what spans count)
    scheduler: Any
    family: Family
    facts: ModelFacts
    model_id: str
    engine_set: EngineSet | None = None
    _parsers: dict[str, Parser] = field(default_factory=dict, repr=False)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str = "tiny", *, device: str = "auto",
                        precision: str = "fp32") -> "StructuredDiffusionPipeline":
        """The torch reference over ``model``: ``tiny``, a diffusers-format folder or a hub id.

        ``device`` is ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``; ``precision``
        is ``fp32``, or ``fp16`` on CUDA.
        """
        from .backends import entry
        from .families import family_named
        from .model import load_model

        model = inputs.path_text(model, "model", "an embedded model's name, a model folder or a hub id")
        inputs.name_of(device, "device", "auto, cpu or cuda")
        inputs.name_of(precision, "precision", "fp32 or fp16")
        loaded = load_model(model)
        family = family_named(loaded.facts.family)
        networks = entry("torch").load().open_model(loaded, family, device, precision)
        return cls(networks, loaded.tokenizers, loaded.scheduler, family, loaded.facts, loaded.model_id)

    @classmethod
    def from_engines(cls, folder: str | Path, *, model: str | None = None, backend: str | None = None,
                     device: str = "auto", cuda_graphs: bool = False) -> "StructuredDiffusionPipeline":
        """A built engine set, after its manifest and every file's hash check out.

        ``model`` and ``backend``, when given, are what the set must have been built from and
        for; ``cuda_graphs`` replays TensorRT engines from CUDA graphs.
        """
        from .backends import engine_backend
        from .families import family_named
        from .manifest import expect, read_manifest, rebuild_command, verify_files

        folder = Path(inputs.path_text(folder, "folder", "an engine set's folder"))
        inputs.name_or_none(model, "model", "the model id the set was built from")
        inputs.name_or_none(backend, "backend", "a backend's name")
        inputs.name_of(device, "device", "auto, cpu or cuda")
        cuda_graphs = inputs.switch(cuda_graphs, "cuda_graphs")
        manifest = read_manifest(folder)
        if model is not None:
            expect(manifest, folder, model_id=model)
        if backend is not None and backend != manifest.backend:
            raise UserError(f"{folder} holds {manifest.backend} engines, not {backend}; rebuild with: "
                            f"{rebuild_command(manifest, folder, backend=backend)}")
        verify_files(manifest, folder)
        family = family_named(manifest.model_facts.family)
        files = {component: folder / name for component, name in manifest.engine_files.items()}
        networks = engine_backend(manifest.backend).open(
            files, family.networks(manifest.model_facts, manifest.mode), manifest.mode,
            OpenOptions(device=device, cuda_graphs=cuda_graphs), manifest.precision, manifest.profile)
        return cls(networks, family.load_tokenizers(folder), _scheduler_of(folder), family, manifest.model_facts,
                   manifest.model_id, EngineSet(folder, manifest))

    # --- what it offers ----------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer whose tokens phrase spans count."""
        return self.tokenizers[0]

    @property
    def backend(self) -> str:
        """The backend as PNG metadata names it: ``torch-cpu``, ``onnxruntime-cpu``, ``tensorrt``."""
        return self.networks.label

    @property
    def default_size(self) -> int:
        """The image side when none is asked for: the model's native one, clamped into an engine
        set's size range, so that a request with no size always runs."""
        if self.engine_set is None:
            return self.facts.default_size
        low, high = self.engine_set.manifest.profile.size
        return min(max(self.facts.default_size, low), high)

    @property
    def drawing_defaults(self) -> dict[str, Any]:
        """Steps and guidance scale when a call gives none: what the model folder records
        (``sdrt_defaults.json``), else SD's usual 50 and 7.5."""
        steps, guidance = self.facts.default_steps, self.facts.default_guidance_scale
        return {"num_inference_steps": DEFAULT_STEPS if steps is None else steps,
                "guidance_scale": DEFAULT_GUIDANCE_SCALE if guidance is None else guidance}

    @property
    def max_levels(self) -> int:
        """Most levels per prompt, the full prompt included: the engine profile's, or ``MAX_LEVELS``."""
        return self.engine_set.manifest.profile.levels if self.engine_set else MAX_LEVELS

    def __call__(self, prompt: PromptInput, *, seed: int | Sequence[int] = 0,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | Sequence[str] = "", width: int | None = None, height: int | None = None,
                 mode: str = "values", parser: str | Parser | None = None, phrases: Sequence[str] | None = None,
                 trees: Sequence[str] | None = None, max_levels: int = DEFAULT_MAX_LEVELS,
                 scheduler: str | None = None, attention_maps: bool = False,
                 attention_downsampling: Sequence[int] | None = None, binding: str | None = None,
                 progress: Progress | None = None) -> PipelineOutput:
        """Generate one image per prompt; a list of prompts is one batch, one denoising loop.

        A prompt may also be a ``StructuredPrompt`` that ``structure`` (or ``sd_struct_rt.structure.
        analyse``) made earlier: its phrases are used as they are, and ``parser`` only names them.

        ``seed``: an int (prompt ``i`` gets ``seed + i``) or one per prompt. ``num_inference_steps``
        and ``guidance_scale``: by default the model folder's (``drawing_defaults``), else 50 and
        7.5. ``mode``: ``values`` (the paper's default), ``keys`` (its conjunction mode), ``plain``
        (ordinary SD) or ``composable`` (Composable Diffusion over the phrases: one conditional
        UNet row per phrase and one for the full prompt, their guidance summed).
        ``parser``: ``spacy``, ``stanza``, ``scene-graph``, ``tree`` or a parser object; by default ``tree`` when
        ``phrases`` or ``trees`` (bracketed, one per sentence) are given, else ``spacy``.
        ``max_levels`` caps the levels per prompt, the full prompt included; extra phrases
        are dropped with a warning. ``scheduler``: one of ``schedulers.SCHEDULERS`` (``pndm``,
        ``ddim``, ``euler``, ``euler-a``, ``dpm++2m``, ``dpm++2m-karras``, ``unipc``, ``lms``),
        by default the model folder's own. ``attention_maps`` (torch reference only) also returns,
        per image, where each token and phrase looked (``PipelineOutput.attention``), averaged over
        every cross-attention layer, or with ``attention_downsampling`` only over the layers whose
        grid is the latent grid shrunk by one of those factors (``cross_attention_downsampling``).
        ``binding``: a text-side binding method (``magnet`` or ``tome``, ``binding.BINDINGS``) that
        edits the full prompt's text states around the parse's attribute-object pairs; it combines
        with every mode and adds no UNet rows.
        ``progress(done, total)`` is called after each denoising step the caller asked for.
        """
        request = self.check_inputs(prompt, seed=seed, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, negative_prompt=negative_prompt, width=width,
                                    height=height, mode=mode, parser=parser, phrases=phrases, trees=trees,
                                    max_levels=max_levels, scheduler=scheduler, attention_maps=attention_maps,
                                    attention_downsampling=attention_downsampling, binding=binding)
        return self.generate(self.prepare(request, progress))

    def check_attention_downsampling(self, mode: str, downsampling: Sequence[int] | None,
                                     name: str = "attention_downsampling") -> tuple[int, ...]:
        """The cross-attention layers attention maps average, by downsampling; all of them for ``None``.
        ``name`` is what the refusal calls the argument."""
        available = self.recording_unet(mode).cross_attention_downsampling()  # refuses engines first
        if downsampling is None:
            return available
        chosen = tuple(downsampling) if isinstance(downsampling, (list, tuple)) else (downsampling,)
        if not chosen or any(not isinstance(factor, numbers.Integral) or isinstance(factor, bool)
                             or factor not in available for factor in chosen):
            raise InputError(f"must be among {', '.join(map(str, available))} (this model's cross-attention "
                             f"layers), not {', '.join(map(repr, chosen)) or 'nothing'}", parameter=name)
        return tuple(int(factor) for factor in chosen)

    def recording_unet(self, mode: str) -> AttentionRecording:
        """The UNet of ``mode`` that records its attention, where the backend has one (the torch
        reference; engines do not expose theirs). The recorder reads one conditional row per
        prompt, which composable mode does not have."""
        chosen = mode_named(mode)
        if chosen.row_per_phrase:
            raise InputError(f"attention maps need one conditional row per prompt; mode {mode!r} has one per "
                             "phrase: use values, keys or plain", parameter="mode", leads=False)
        recording = self.networks.attention.get(self.role_for(chosen))
        if recording is None:
            raise InputError("attention maps need the torch reference (StructuredDiffusionPipeline.from_pretrained); "
                             f"the {self.backend} engines do not expose their attention")
        return recording

    # --- 1. inputs ---------------------------------------------------------------------------

    def check_inputs(self, prompt: PromptInput, *, seed: int | Sequence[int] = 0,
                     num_inference_steps: int | None = None, guidance_scale: float | None = None,
                     negative_prompt: str | Sequence[str] = "", width: int | None = None,
                     height: int | None = None, mode: str = "values", parser: str | Parser | None = None,
                     phrases: Sequence[str] | None = None, trees: Sequence[str] | None = None,
                     max_levels: int = DEFAULT_MAX_LEVELS, scheduler: str | None = None,
                     attention_maps: bool = False, attention_downsampling: Sequence[int] | None = None,
                     binding: str | None = None) -> Request:
        """Check every input (cheap: no parsing, no network) and fill in the defaults."""
        inputs.name_or_none(scheduler, "scheduler", f"one of {', '.join(SCHEDULERS)}")
        inputs.name_or_none(binding, "binding", f"one of {', '.join(BINDINGS)}")
        if binding is not None and binding not in BINDINGS:
            raise InputError(f"must be one of {', '.join(BINDINGS)} or None, not {binding!r}", parameter="binding")
        if parser is not None and not isinstance(parser, str) and not callable(getattr(parser, "phrases", None)):
            raise InputError(f"must be one of {', '.join(PARSERS)}, a parser object (with phrases(prompt)) "
                             f"or None, not {inputs.shown(parser)}", parameter="parser")
        inputs.strings_or_none(phrases, "phrases")
        inputs.strings_or_none(trees, "trees")
        attention_maps = inputs.switch(attention_maps, "attention_maps")
        num_inference_steps = self.drawing_defaults["num_inference_steps"] if num_inference_steps is None \
            else num_inference_steps
        guidance_scale = self.drawing_defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        single = isinstance(prompt, (str, StructuredPrompt))
        prompts = _texts(prompt, "prompt", StructuredPrompt)
        if not prompts:
            raise InputError("is an empty list; give at least one prompt", parameter="prompt")
        for index, text in enumerate(prompts):
            name = "the prompt" if single else f"prompt {index}"
            try:
                if isinstance(text, StructuredPrompt):
                    inputs.nonempty(text.prompt, name)
                    self._check_pairs(text, name)
                else:
                    prompts[index] = inputs.prompt(text, name)
            except InputError as error:  # said as the caller says it ("prompt 2"); the field is the prompt
                raise InputError(str(error), parameter="prompt", leads=False) from None
        negatives = [inputs.text(text, "negative_prompt") for text in _texts(negative_prompt, "negative_prompt")]
        if isinstance(negative_prompt, str):
            negatives = negatives * len(prompts)
        elif len(negatives) != len(prompts):
            raise InputError(f"has {len(negatives)} entries for {len(prompts)} prompts; "
                             "give one per prompt or a single string", parameter="negative_prompt")
        seeds = self._seeds(seed, len(prompts))
        chosen = mode_named(mode)
        role = self.role_for(chosen)
        width = self.default_size if width is None else inputs.image_side(width, "width")
        height = self.default_size if height is None else inputs.image_side(height, "height")
        sampler = make_scheduler(scheduler, self.scheduler)
        request = Request(prompts=tuple(prompts), negative_prompts=tuple(negatives), seeds=seeds,
                          steps=self._steps(num_inference_steps, sampler), scheduler=scheduler_name(sampler),
                          guidance_scale=inputs.guidance(guidance_scale),
                          width=width, height=height, mode=mode,
                          parser=self._parser(parser, phrases, trees) if chosen.uses_structure or binding else None,
                          binding=None if binding is None else BINDINGS[binding],
                          max_levels=min(inputs.whole_number(max_levels, "max_levels", 1, MAX_LEVELS),
                                         self.max_levels), role=role, sampler=sampler)
        self.check_engine_profile(request)
        if attention_maps:
            request = replace(request, attention_maps=self.check_attention_downsampling(mode, attention_downsampling))
        elif attention_downsampling is not None:
            raise InputError("goes with attention_maps=True", parameter="attention_downsampling")
        return request

    def _check_pairs(self, prompt: StructuredPrompt, name: str) -> None:
        """A caller's own pairs must be token spans the text encoder reads."""
        readable = self.facts.tokens - 2
        for pair in prompt.pairs:
            for part in (pair.object, *pair.attributes):
                if not 0 <= part.start < part.end <= readable:
                    raise InputError(f"{name}: pair part {part.text!r} spans tokens [{part.start}, {part.end}); a "
                                     f"part must lie within [0, {readable})", parameter="prompt", leads=False)

    def check_engine_profile(self, request: Request) -> None:
        """Refuse a batch or size the engine set was not built for, with the rebuild that fits it."""
        if self.engine_set is None:
            return
        from .manifest import rebuild_command

        profile, step = self.engine_set.manifest.profile, self.facts.size_step
        batch = len(request.prompts)
        wider = profile.widened(batch, request.width, request.height, step)
        profile.check(batch, request.width, request.height, step,
                      rebuild=rebuild_command(self.engine_set.manifest, self.engine_set.folder, **wider))

    @staticmethod
    def _steps(steps: object, scheduler) -> int:
        """Steps ``scheduler`` can take: its timesteps must stay inside its training range."""
        steps = inputs.steps(steps)
        limit = scheduler.config.num_train_timesteps

        def fits(count: int) -> bool:
            try:
                scheduler.set_timesteps(count)
            except ValueError:
                return False
            return bool(((scheduler.timesteps >= 0) & (scheduler.timesteps < limit)).all())

        if not fits(steps):
            most = next((count for count in range(min(steps, limit), 0, -1) if fits(count)), 1)
            raise InputError(f"{steps} is more than {scheduler_name(scheduler)} with this model can take; "
                             f"use at most {most}", parameter="num_inference_steps")
        return steps

    def _seeds(self, seed: int | Sequence[int], count: int) -> tuple[int, ...]:
        if isinstance(seed, (list, tuple)):
            if len(seed) != count:
                raise InputError(f"has {len(seed)} entries for {count} prompts; give one per prompt or one int",
                                 parameter="seed")
            return tuple(inputs.seed(value) for value in seed)
        first = inputs.seed(seed)
        if first + count - 1 > inputs.MAX_SEED:
            raise InputError(f"{first} leaves no room for {count} prompts (prompt i gets seed + i)", parameter="seed")
        return tuple(first + index for index in range(count))

    def _parser(self, name: str | Parser | None, phrases: Sequence[str] | None,
                trees: Sequence[str] | None) -> Parser:
        phrases = [inputs.text(text, "phrases") for text in _texts(phrases or [], "phrases")]
        trees = [inputs.text(text, "trees", inputs.MAX_TREE_CHARACTERS) for text in _texts(trees or [], "trees")]
        if name is not None and not isinstance(name, str):
            if phrases or trees:
                raise InputError("phrases and trees go with parser='tree', not with a parser object",
                                 parameter="parser", leads=False)
            return name
        name = name or ("tree" if phrases or trees else "spacy")
        if name not in PARSERS:
            raise InputError(f"must be one of {', '.join(PARSERS)} or a parser object, not {name!r}",
                             parameter="parser")
        if name != "tree":
            if phrases or trees:
                raise InputError(f"phrases and trees go with parser='tree', not parser={name!r}", parameter="parser",
                                 leads=False)
            return self._parsers.setdefault(name, make_parser(name))
        return make_parser("tree", trees, phrases)

    def role_for(self, mode: Mode) -> str:
        """The role of the UNet that serves ``mode``: single-level modes take any (SPEC P1), see ``modes``."""
        role = role_for(mode, self.networks.unets)
        if role in self.networks.unets:
            return role
        if self.engine_set is not None:
            from .manifest import expect

            expect(self.engine_set.manifest, self.engine_set.folder, mode=role)
        raise InputError(f"{mode.name!r} is not served by this pipeline's {self.backend} UNet", parameter="mode")

    # --- 2. prepare: the stages before the UNet ----------------------------------------------

    def prepare(self, request: Request, progress: Progress | None = None,
                structured: list[StructuredPrompt] | None = None) -> Prepared:
        """Everything ``request`` needs before its first UNet call: its structure (``structured``, when
        the caller made it already), conditioning, and a sampling state whose latents come from one
        seeded CPU generator per prompt (which also feeds ancestral samplers)."""
        structured = self.structure(request) if structured is None else structured
        conditioning = self.condition(structured, request)
        generators = seeded_generators(list(request.seeds))
        run = self.denoising_run(request, self.initial_latents(request, generators), conditioning, generators,
                                 progress)
        recorder = None if request.attention_maps is None else AttentionRecorder(
            *run.latents.shape[2:], request.attention_maps)
        return Prepared(request, structured, conditioning, run, recorder)

    def structure(self, request: Request) -> list[StructuredPrompt]:
        """Each prompt's levels, at most ``max_levels`` of them (one warning per prompt for the rest)."""
        return [capped(prompt if isinstance(prompt, StructuredPrompt) else self._analysed(prompt, request),
                       request.max_levels) for prompt in request.prompts]

    def _analysed(self, prompt: str, request: Request) -> StructuredPrompt:
        structured = analyse(prompt, request.parser, self.tokenizer, pairs=request.binding is not None)
        if MODES[request.mode].uses_structure:
            return structured
        return StructuredPrompt(structured.prompt, (), (), structured.pairs)  # plain: the binding's pairs only

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All ``texts`` encoded, in as many calls as the text encoder's engine profile needs (a binding
        method's extra texts can outnumber what a set was built to encode at once)."""
        accepted = getattr(self.networks.text_encoder, "accepted", None)
        most = min(shape.max[0] for shape in accepted.values()) if accepted else len(texts)
        parts = [self.family.encode_texts(self.networks.text_encoder, self.tokenizers, texts[start:start + most],
                                          self.facts) for start in range(0, len(texts), max(most, 1))]
        if len(parts) == 1:
            return parts[0]
        return (torch.cat([states for states, _ in parts]),
                None if parts[0][1] is None else torch.cat([pooled for _, pooled in parts]))

    def condition(self, structured: list[StructuredPrompt], request: Request) -> Conditioning:
        if MODES[request.mode].uses_structure:
            alone = list(dict.fromkeys(prompt.prompt for prompt in structured if not prompt.spans))
            if alone:
                warnings.warn(f"mode {request.mode!r}: {_which_have(alone, len(structured))} no phrase, so "
                              f"{'they are' if len(alone) > 1 else 'it is'} generated as plain", StructureWarning,
                              stacklevel=2)
        if request.binding is not None:
            unpaired = list(dict.fromkeys(prompt.prompt for prompt in structured if not prompt.pairs))
            if unpaired:
                warnings.warn(f"binding {request.binding.name!r}: {_which_have(unpaired, len(structured))} no "
                              "attribute-object pair, so the binding leaves it unchanged", StructureWarning,
                              stacklevel=2)
        return build_conditioning(self.encode_texts, structured, list(request.negative_prompts), request.mode,
                                  request.binding, self._token_count)

    def _token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def initial_latents(self, request: Request, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        generators = generators or seeded_generators(list(request.seeds))
        return initial_latents(generators, request.height, request.width, self.facts.latent_channels,
                               self.facts.vae_scale_factor)

    def denoising_run(self, request: Request, latents: torch.Tensor, conditioning: Conditioning,
                      generators: list[torch.Generator] | None = None,
                      progress: Progress | None = None) -> DenoisingRun:
        """The sampling state of ``request``, on a copy of the scheduler its inputs were checked with."""
        return DenoisingRun(copy.deepcopy(request.sampler), latents, request.steps, request.guidance_scale,
                            generators, progress, conditioning.conditional_rows)

    # --- 3. the loop: one UNet call per step, then the images ---------------------------------

    def generate(self, prepared: Prepared) -> PipelineOutput:
        """Denoise a prepared request to the end and decode it."""
        self._denoise(prepared.run, prepared.conditioning, prepared.request.role, prepared.recorder)
        return self.outputs([prepared])[0]

    def denoise(self, conditioning: Conditioning, latents: torch.Tensor, request: Request,
                progress: Progress | None = None, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """The denoised latents of ``request`` from ``latents``."""
        run = self.denoising_run(request, latents, conditioning, generators, progress)
        self._denoise(run, conditioning, request.role)
        return run.latents

    def _denoise(self, run: DenoisingRun, conditioning: Conditioning, role: str,
                 recorder: AttentionRecorder | None = None) -> None:
        with contextlib.nullcontext() if recorder is None else self.networks.attention[role].recording(recorder):
            while not run.finished:
                run.advance(self.predict_noise(*run.model_input(), conditioning, role))

    def predict_noise(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
                      role: str) -> torch.Tensor:
        """The UNet of ``role`` (a ``Request.role``, or a mode's name) on every row: unconditional rows
        first, then conditional. An engine set takes ``unet_rows`` rows a call (composable prompts can
        need more), so a longer batch runs as calls of the most rows, and a last call short of the
        least is filled up with copies of its last row, whose outputs are dropped: rows are
        independent, so no row's result changes."""
        if role not in self.networks.unets:
            role = self.role_for(mode_named(role))
        unet = self.networks.unets[role]
        rows = sample.shape[0]
        least, most = self.unet_rows or (1, rows)
        if rows <= most:
            return _only_output(unet(**self.family.unet_inputs(sample, timestep, conditioning, role, self.facts)))
        parts = []
        for start in range(0, rows, most):
            index = torch.arange(start, min(start + most, rows))
            taken = torch.cat([index, index[-1:].repeat(max(0, least - len(index)))])
            noise = _only_output(unet(**self.family.unet_inputs(sample[taken], timestep[taken],
                                                                conditioning.rows(taken), role, self.facts)))
            parts.append(noise[:len(index)])
        return torch.cat(parts)

    @property
    def unet_rows(self) -> tuple[int, int] | None:
        """Least and most UNet rows in one call: an engine profile's (two per prompt), or None."""
        if self.engine_set is None:
            return None
        low, high = self.engine_set.manifest.profile.batch
        return 2 * low, 2 * high

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` uint8 images on the CPU."""
        vae = self.networks.vae_decoder
        return to_uint8(_only_output(vae(**{vae.contract.input_names[0]: latents})))

    def outputs(self, finished: Sequence[Prepared]) -> list[PipelineOutput]:
        """The images of requests whose runs are finished, decoded in one VAE call, with their metadata."""
        images = self.decode(torch.cat([prepared.run.latents for prepared in finished]))
        results, start = [], 0
        for prepared in finished:
            request, count = prepared.request, len(prepared.structured)
            metadata = [self.metadata(request, prompt, request.negative_prompts[i], request.seeds[i])
                        for i, prompt in enumerate(prepared.structured)]
            output = PipelineOutput([to_pil(image) for image in images[start:start + count]], metadata)
            if prepared.recorder is not None:
                output.attention = [named_maps(maps, prompt, self.tokenizer)
                                    for maps, prompt in zip(prepared.recorder.maps(), prepared.structured)]
                output.attention_downsampling = tuple(sorted(prepared.recorder.recorded))
            results.append(output)
            start += count
        return results

    def metadata(self, request: Request, prompt: StructuredPrompt, negative_prompt: str, seed: int) -> dict[str, str]:
        return {
            "prompt": prompt.prompt,
            "negative_prompt": negative_prompt,
            "seed": str(seed),
            "steps": str(request.steps),
            "guidance": str(request.guidance_scale),
            "scheduler": request.scheduler,
            "size": f"{request.width}x{request.height}",
            "model": self.model_id,
            "backend": self.backend,
            "mode": request.mode,
            "parser": request.parser.name if request.parser else "none",
            "binding": request.binding.name if request.binding else "none",
            "phrases": json.dumps([{"text": s.text, "span": [s.start, s.end]} for s in prompt.spans]),
            "dropped_phrases": json.dumps(list(prompt.dropped)),
            "max_levels": str(request.max_levels),
            "backend_version": self.networks.version,
            "precision": self.networks.precision,
            **({"engine_set": self.engine_set.manifest.digest()} if self.engine_set else {}),
            "sd_struct_rt_version": __version__,
        }


def _which_have(prompts: list[str], batch: int) -> str:
    """The subject of a warning about some of a batch's prompts: "the prompt has", "'a cat' has"..."""
    if batch == 1:
        return "the prompt has"
    return f"{quoted_list(prompts)} {'have' if len(prompts) > 1 else 'has'}"


def _texts(value: Any, name: str, *also: type) -> list:
    kinds = (str, *also)
    texts = [value] if isinstance(value, kinds) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(text, kinds) for text in texts):
        raise InputError(f"must be a string or a list of strings, not {type(value).__name__}", parameter=name)
    return list(texts)


def _only_output(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    (output,) = outputs.values()
    return output


def _scheduler_of(folder: Path):
    import diffusers

    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_config(config)
