"""Text conditioning (SPEC section 3): keys, stacked levels and the level mask of a batch.

Rows are laid out as diffusers does for classifier-free guidance: the unconditional rows of
every prompt first, then the conditional ones. Rows may hold different numbers of levels;
shorter ones are zero-padded and masked (SPEC P3, P4). In ``composable`` mode (SPEC 3.6) a
prompt has one conditional row per component instead (its full prompt, then each phrase),
each a single level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .binding import BindingMethod, EncodedTexts
from .modes import KEYS, MODES
from .structure.spans import PhraseSpan, StructuredPrompt

# texts -> their [M, T, D] embeddings and, for families whose UNet reads them, pooled [M, P] ones
TextEncoder = Callable[[list[str]], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass
class Conditioning:
    """What the UNet reads besides latents and timesteps, with the names of SPEC 5.

    ``level_states`` are the stacked levels; the UNet engine takes them under the name of the
    role they play, ``value_states`` or ``key_states`` (the family maps them).
    """

    encoder_hidden_states: torch.Tensor  # [N, T, D]: keys in values mode, the value context in keys mode
    level_states: torch.Tensor  # [N, L, T, D]
    level_mask: torch.Tensor  # [N, L], float 1/0
    pooled: torch.Tensor | None = None  # [N, P]: the whole prompt's (or negative's) pooled embedding (SDXL)
    # Conditional rows of each prompt, in order (composable mode); None: one each.
    conditional_rows: tuple[int, ...] | None = None

    @property
    def levels_per_row(self) -> list[int]:
        return [int(count) for count in self.level_mask.sum(dim=1)]

    def rows(self, index: torch.Tensor) -> "Conditioning":
        """The UNet rows ``index`` alone, for a call split to fit an engine's batch."""
        return Conditioning(self.encoder_hidden_states[index], self.level_states[index], self.level_mask[index],
                            None if self.pooled is None else self.pooled[index])


def aligned(full: torch.Tensor, phrase: torch.Tensor, span: PhraseSpan) -> torch.Tensor:
    """``full`` with positions ``s+1..e`` replaced by the phrase's own positions ``1..e-s``."""
    out = full.clone()
    out[span.start + 1:span.end + 1] = phrase[1:span.end - span.start + 1]
    return out


def merged(full: torch.Tensor, phrases: list[torch.Tensor], spans: tuple[PhraseSpan, ...]) -> torch.Tensor:
    """Every phrase written into one copy of ``full`` in order, inner phrases last (keys mode)."""
    out = full.clone()
    for phrase, span in zip(phrases, spans):
        out[span.start + 1:span.end + 1] = phrase[1:span.end - span.start + 1]
    return out


def build_conditioning(encoder: TextEncoder, prompts: list[StructuredPrompt], negative_prompts: list[str],
                       mode: str, binding: BindingMethod | None = None,
                       count_tokens: Callable[[str], int] | None = None) -> Conditioning:
    """Encode every string of the batch in one text-encoder call and stack the levels.

    Every span of every prompt becomes a level (the structure stage caps them, ``capped``).
    Pooled embeddings, where the family has them, come from the whole prompt only, except in
    ``composable`` mode, where each component is a prompt of its own. A ``binding`` method edits
    every full-prompt sequence (SPEC 3.7); ``count_tokens`` then tells it where texts end.
    """
    chosen = MODES[mode]
    spans = [p.spans if chosen.uses_structure else () for p in prompts]
    texts = list(negative_prompts) + [p.prompt for p in prompts]
    texts += [span.text for row in spans for span in row]
    extra = list(dict.fromkeys(text for p in prompts for text in binding.texts(p))) if binding else []
    embeddings, pooled = encoder(texts + extra)
    count = len(prompts)
    if binding is not None:
        encoded = EncodedTexts(dict(zip(extra, embeddings[len(texts):])),
                               {text: count_tokens(text) for text in extra + [p.prompt for p in prompts]},
                               embeddings.shape[1])
        embeddings, pooled = embeddings[:len(texts)], None if pooled is None else pooled[:len(texts)]

    def bound(states: torch.Tensor, prompt: StructuredPrompt) -> torch.Tensor:
        return states if binding is None else binding.apply(states, prompt, encoded)
    unconditional, full = embeddings[:count], embeddings[count:2 * count]
    phrase_embeddings, cursor = [], 2 * count
    for row in spans:
        phrase_embeddings.append(list(embeddings[cursor:cursor + len(row)]))
        cursor += len(row)
    if chosen.row_per_phrase:
        components = torch.cat([unconditional, torch.stack([bound(e0, p) for e0, p in zip(full, prompts)]),
                                embeddings[2 * count:]])
        return _composable(components, pooled, count, [len(row) for row in spans])

    # encoder_hidden_states is the key context in values mode and the value context in keys mode.
    contexts, level_rows = list(unconditional), [[u] for u in unconditional]
    for e0, row, phrases, prompt in zip(full, spans, phrase_embeddings, prompts):
        first = bound(e0, prompt)
        contexts.append(bound(merged(e0, phrases, row), prompt) if chosen.role is KEYS else first)
        level_rows.append([first] + [bound(aligned(e0, n, span), prompt) for n, span in zip(phrases, row)])
    levels = max(len(row) for row in level_rows)
    # Stay on the text encoder's device: the UNet reads these at every step.
    stacked = embeddings.new_zeros(len(level_rows), levels, *embeddings.shape[1:])
    mask = embeddings.new_zeros(len(level_rows), levels)
    for i, row in enumerate(level_rows):
        stacked[i, :len(row)] = torch.stack(row)
        mask[i, :len(row)] = 1
    return Conditioning(torch.stack(contexts), stacked, mask, None if pooled is None else pooled[:2 * count])


def _composable(embeddings: torch.Tensor, pooled: torch.Tensor | None, count: int,
                phrase_counts: list[int]) -> Conditioning:
    """Rows: the unconditional ones, then per prompt its full prompt and each phrase, each encoded
    on its own (not aligned into the prompt) and each the single level of its row."""
    order, cursor = list(range(count)), 2 * count
    for prompt, phrases in enumerate(phrase_counts):
        order += [count + prompt, *range(cursor, cursor + phrases)]
        cursor += phrases
    rows = embeddings[order]
    return Conditioning(rows, rows[:, None], rows.new_ones(len(order), 1), None if pooled is None else pooled[order],
                        tuple(1 + phrases for phrases in phrase_counts))


def stack_rows(parts: list[Conditioning]) -> Conditioning:
    """The rows of several conditionings in one, levels zero-padded and masked to the longest
    (SPEC P3, P4): what one UNet call over several requests reads."""
    if len(parts) == 1:
        return parts[0]
    levels = max(part.level_states.shape[1] for part in parts)

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        missing = levels - tensor.shape[1]
        return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], missing, *tensor.shape[2:])], dim=1) \
            if missing else tensor

    return Conditioning(torch.cat([part.encoder_hidden_states for part in parts]),
                        torch.cat([padded(part.level_states) for part in parts]),
                        torch.cat([padded(part.level_mask) for part in parts]),
                        None if parts[0].pooled is None else torch.cat([part.pooled for part in parts]))
