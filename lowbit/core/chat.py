"""Chat templates: the model's Jinja template turns a conversation into prompt text.

Templates come from the model and are untrusted, so they run in Jinja's immutable
sandbox, set up the way Hugging Face ``transformers`` sets it up (the templates are
written against that).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from lowbit.core.errors import ChatTemplateError

if TYPE_CHECKING:
    from lowbit.core.tokenizer import Tokenizer

__all__ = ["CHATML_TEMPLATE", "ChatTemplate"]

# Used only when asked to, for models that ship no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Jinja's name for templates made from a string; it tags the template's traceback frames.
_TEMPLATE_FILENAME = "<template>"


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: marks assistant text for training
    masks in ``transformers``; for inference it just renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters and non-ASCII text; templates expect
    # plain json.dumps output with the text left readable.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on, from Jinja's rewritten traceback."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = lineno
    return line


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, but an unsafe attribute is an error at once.

    Jinja returns an undefined value that prints as an empty string, which would hide
    an attack (or a broken template) in the prompt.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")


def _make_environment() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template.

    Attributes:
        source: The Jinja source.
        bos_token: Text passed to the template as ``bos_token``.
        eos_token: Text passed to the template as ``eos_token``.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        """Compile a template.

        Args:
            source: Jinja source of the template.
            bos_token: Text of the model's BOS token, for templates that write it.
            eos_token: Text of the model's EOS token.

        Raises:
            ChatTemplateError: The source is not valid Jinja; the message names the line.
        """
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _make_environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"chat template syntax error on line {exc.lineno}: {exc.message}"
            ) from exc

    @classmethod
    def from_gguf_metadata(
        cls,
        meta: Mapping[str, Any],
        tokenizer: Tokenizer,
        *,
        name: str | None = None,
        allow_fallback: bool = False,
    ) -> ChatTemplate:
        """The template stored in a GGUF file, else the one that came with the tokenizer.

        Args:
            meta: The file's metadata as plain values.
            tokenizer: The model's tokenizer; it supplies the BOS and EOS texts.
            name: A named template (``tokenizer.chat_template.<name>``, e.g. ``tool_use``)
                instead of the default one.
            allow_fallback: Use a plain ChatML template when the file has none.

        Returns:
            The compiled template.

        Raises:
            ChatTemplateError: The file has no such template and ``allow_fallback`` is False,
                or the template is not valid Jinja.
        """
        key = "tokenizer.chat_template" if name is None else f"tokenizer.chat_template.{name}"
        source = meta.get(key)
        if name is None and not source:
            # A tokenizer loaded from a Hugging Face folder may bring the template instead.
            source = tokenizer.chat_template
        if not isinstance(source, str) or not source.strip():
            source = None
        return cls._for_tokenizer(source, tokenizer, allow_fallback=allow_fallback, what=key)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, *, allow_fallback: bool = False) -> ChatTemplate:
        """The template that came with a tokenizer (e.g. from ``tokenizer_config.json``).

        Args:
            tokenizer: The model's tokenizer.
            allow_fallback: Use a plain ChatML template when there is none.

        Returns:
            The compiled template.

        Raises:
            ChatTemplateError: There is no template and ``allow_fallback`` is False, or the
                template is not valid Jinja.
        """
        return cls._for_tokenizer(
            tokenizer.chat_template, tokenizer, allow_fallback=allow_fallback, what="chat_template"
        )

    @classmethod
    def _for_tokenizer(
        cls, source: str | None, tokenizer: Tokenizer, *, allow_fallback: bool, what: str
    ) -> ChatTemplate:
        if source is None:
            if not allow_fallback:
                raise ChatTemplateError(f"the model has no chat template ({what} is missing)")
            source = CHATML_TEMPLATE
        bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
        eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
        return cls(source, bos_token=bos, eos_token=eos)

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Write a conversation as prompt text.

        Args:
            messages: The turns, each with ``role`` and ``content`` (and whatever else the
                template reads, such as ``tool_calls``).
            add_generation_prompt: End with the opening of an assistant turn.
            **extra: More template variables (``tools``, ``documents``, ``enable_thinking``...).

        Returns:
            The prompt text. It may start with the BOS text; encode it with ``add_bos`` left
            to the tokenizer, which does not double a leading BOS.

        Raises:
            ChatTemplateError: The template raised an error, used an undefined value, broke a
                sandbox rule or failed otherwise; the message names the line where known.
        """
        context: dict[str, Any] = {"tools": None, "documents": None, **extra}
        context.update(
            messages=[dict(m) for m in messages],
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt,
        )
        try:
            return self._template.render(context)
        except ChatTemplateError as exc:
            line = _template_line(exc)
            where = f" (chat template line {line})" if line else ""
            raise ChatTemplateError(f"{exc}{where}") from exc
        except (
            jinja2.TemplateError,
            TypeError,
            ValueError,
            LookupError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            line = _template_line(exc)
            where = f" on line {line}" if line else ""
            kind = "refused an unsafe operation" if isinstance(exc, SecurityError) else "failed"
            raise ChatTemplateError(f"chat template {kind}{where}: {exc}") from exc
