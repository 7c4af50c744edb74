"""A/B compare: one prompt answered greedily by two models, and where their answers part.

Both answers are greedy (temperature 0), so every difference comes from the models,
not from sampling. The models run one after the other, so only one is in memory at a
time. Up to the first differing token the answers are the same text; after it, each
model continues from a different context, so everything from there on is shown as
diverged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import CancelToken, Engine, GenerationDone, GenerationStats, TokenEvent
from .errors import CancelledError
from .model import Model
from .sampling import SamplingParams

ProgressFn = Callable[..., None]


@dataclass(frozen=True)
class Answer:
    path: str
    name: str
    token_ids: list[int]
    pieces: list[str]  # the text of each token, in order (may be "" inside a UTF-8 character)
    stats: GenerationStats

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Comparison:
    a: Answer
    b: Answer
    diverge_at: int  # index of the first token that differs; the shorter length if one is a prefix

    @property
    def identical(self) -> bool:
        return self.a.pieces == self.b.pieces


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Index of the first position where the sequences differ (the shorter length if none)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def answer(
    path: str | Path,
    messages: Sequence[Mapping[str, str]],
    *,
    max_tokens: int = 128,
    cancel: CancelToken | None = None,
    on_token: Callable[[int], None] | None = None,
    **load: Any,
) -> Answer:
    """Load a model (``load``: options of :meth:`Model.load`), answer greedily, and free it."""
    with Model.load(path, **load) as model:
        engine = Engine(model)
        ids = engine.encode_prompt(engine.render_chat(messages))
        token_ids: list[int] = []
        pieces: list[str] = []
        for ev in engine.generate(
            ids, params=SamplingParams(temperature=0.0), max_tokens=max_tokens, cancel=cancel
        ):
            if isinstance(ev, TokenEvent):
                token_ids.append(ev.token_id)
                pieces.append(ev.text)
                if on_token is not None:
                    on_token(len(token_ids))
            elif isinstance(ev, GenerationDone):
                if ev.stats.finish_reason == "cancelled":
                    raise CancelledError("the comparison was cancelled")
                name = str(model.file.metadata.get("general.name", Path(path).stem))
                return Answer(str(path), name, token_ids, pieces, ev.stats)
    raise CancelledError("the comparison ended early")  # pragma: no cover


def compare_models(
    path_a: str | Path,
    path_b: str | Path,
    messages: Sequence[Mapping[str, str]],
    *,
    max_tokens: int = 128,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    **load: Any,
) -> Comparison:
    """Answer with model A, then model B (both loaded with ``load``, options of
    :meth:`Model.load`), and find where the answers part."""
    results = []
    for k, path in enumerate((path_a, path_b)):
        label = "A" if k == 0 else "B"

        def tick(n: int, k: int = k, label: str = label) -> None:
            if progress is not None:
                progress("generate", k * max_tokens + n, 2 * max_tokens, f"Model {label}: {n} tokens")

        if progress is not None:
            progress("load", k * max_tokens, 2 * max_tokens, f"Loading model {label}: {Path(path).name}")
        results.append(answer(path, messages, max_tokens=max_tokens, cancel=cancel, on_token=tick, **load))
    a, b = results
    # token texts, not ids: they compare across two vocabularies too
    return Comparison(a, b, first_divergence(a.pieces, b.pieces))
