"""Chat template tests: SmolLM2's own template against plain Jinja, and the sandbox."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from lowbit.core.chat import CHATML_TEMPLATE, ChatTemplate
from lowbit.core.errors import ChatTemplateError
from lowbit.core.tokenizer import Tokenizer

pytest_plugins = ("tests._gguf_meta",)

CONVERSATION = [
    {"role": "system", "content": "You are terse. Answer in French."},
    {"role": "user", "content": "Hello! Ça va?"},
    {"role": "assistant", "content": "Oui, ça va. 😀"},
    {"role": "user", "content": "Count:\n1 2 3"},
]


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="module")
def smollm2_template(smollm2_metadata: dict[str, Any], smollm2_tok: Tokenizer) -> ChatTemplate:
    return ChatTemplate.from_gguf_metadata(smollm2_metadata, smollm2_tok)


def _plain_jinja(source: str, **context: Any) -> str:
    # Independent reference: Jinja without the sandbox or any Lowbit set-up.
    return jinja2.Environment().from_string(source).render(**context)


def test_smollm2_template_matches_plain_jinja(smollm2_metadata: dict[str, Any], smollm2_template) -> None:
    source = smollm2_metadata["tokenizer.chat_template"]
    assert smollm2_template.source == source
    assert smollm2_template.bos_token == "<|im_start|>" and smollm2_template.eos_token == "<|im_end|>"
    for gen in (True, False):
        got = smollm2_template.render(CONVERSATION, add_generation_prompt=gen)
        want = _plain_jinja(
            source,
            messages=CONVERSATION,
            add_generation_prompt=gen,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
        )
        assert got == want


def test_smollm2_template_writes_chatml(smollm2_template: ChatTemplate) -> None:
    expected = (
        "<|im_start|>system\nYou are terse. Answer in French.<|im_end|>\n"
        "<|im_start|>user\nHello! Ça va?<|im_end|>\n"
        "<|im_start|>assistant\nOui, ça va. 😀<|im_end|>\n"
        "<|im_start|>user\nCount:\n1 2 3<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert smollm2_template.render(CONVERSATION) == expected
    assert smollm2_template.render(CONVERSATION, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_adds_default_system_prompt(smollm2_template: ChatTemplate) -> None:
    got = smollm2_template.render([{"role": "user", "content": "hi"}])
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_rendered_prompt_tokenizes_with_single_special_tokens(
    smollm2_template: ChatTemplate, smollm2_tok: Tokenizer
) -> None:
    ids = smollm2_tok.encode(smollm2_template.render(CONVERSATION), add_bos=None)
    assert ids.count(1) == 5  # one <|im_start|> per turn plus the generation prompt
    assert ids.count(2) == 4  # one <|im_end|> per turn
    assert ids[0] == 1


def test_missing_template_and_fallback(smollm2_metadata: dict[str, Any]) -> None:
    meta = {k: v for k, v in smollm2_metadata.items() if k != "tokenizer.chat_template"}
    tok = Tokenizer.from_gguf_metadata(meta)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.from_gguf_metadata(meta, tok)
    fallback = ChatTemplate.from_gguf_metadata(meta, tok, allow_fallback=True)
    assert fallback.source == CHATML_TEMPLATE
    assert fallback.render([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ChatTemplateError, match="tool_use"):
        ChatTemplate.from_gguf_metadata(meta, tok, name="tool_use")


def test_bos_and_eos_tokens_reach_the_template() -> None:
    tmpl = ChatTemplate(
        "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", bos_token="<s>", eos_token="</s>"
    )
    assert tmpl.render([{"role": "user", "content": "x"}]) == "<s>x</s>"


def test_raise_exception_becomes_chat_template_error() -> None:
    source = (
        "{% for m in messages %}\n"
        "{% if m['role'] == 'system' %}\n"
        "{{ raise_exception('System role not supported') }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    )
    tmpl = ChatTemplate(source)
    assert tmpl.render([{"role": "user", "content": "ok"}], add_generation_prompt=False) == ""
    with pytest.raises(ChatTemplateError, match="System role not supported") as info:
        tmpl.render([{"role": "system", "content": "x"}])
    assert "line 3" in str(info.value)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ChatTemplateError, match="line 2"):
        ChatTemplate("{% for m in messages %}\n{{ m.content }\n{% endfor %}")


def test_undefined_error_names_the_line() -> None:
    with pytest.raises(ChatTemplateError, match=r"line 2.*undefined"):
        ChatTemplate("ok\n{{ no_such_thing.attribute }}").render([])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__len__ }}",
        "{% set _ = messages.append({'role': 'x'}) %}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_sandbox_refuses_unsafe_access(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="unsafe"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_hugging_face_environment_features() -> None:
    tmpl = ChatTemplate(
        "{% for m in messages %}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "    {% generation %}{{ m | tojson }}{% endgeneration %}\n"
        "{% endfor %}\n"
        "{{ strftime_now('%Y') | length }}|{{ tools is none }}|{{ custom }}"
    )
    messages = [{"role": "user", "content": "naïve 😀 <b>"}, {"role": "a", "content": "b"}, {"role": "c"}]
    out = tmpl.render(messages, custom="extra")
    # lstrip_blocks drops the indentation before a block tag and trim_blocks the newline
    # after one; tojson keeps non-ASCII text and HTML characters as they are.
    assert out == '{"role": "user", "content": "naïve 😀 <b>"}{"role": "a", "content": "b"}4|True|extra'
    plain = jinja2.Environment().from_string("{% if true %}\n  x{% endif %}\n")
    assert ChatTemplate("{% if true %}\n  x{% endif %}\n").render([]) == "  x" != plain.render()


def test_type_errors_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="line 1"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "x"}])
