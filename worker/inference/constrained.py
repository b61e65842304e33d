"""Constrained decoding: the tokens a row may pick next, so its text follows a grammar.

OpenAI's `response_format` (json_object, json_schema) and a forced tool call (tool_choice
"required" or a named function) become an xgrammar grammar, compiled once per request
against the model's vocabulary. Each row of the decode batch that has one keeps its own
GrammarMatcher: before the row's token is picked, the matcher's bitmask sets every token
the grammar forbids to -inf in that row's logits; after, the matcher advances by the token.
Rows without a grammar are not touched, so constrained and free rows share one forward.

Why xgrammar: a token bitmask per row is exactly what a per-row sampler needs (outlines
builds a whole logits processor, lm-format-enforcer walks the tokenizer's prefix tree in
Python per step); it compiles JSON schemas in C++, is maintained by the MLC team and is what
vLLM and SGLang use by default. A schema keyword it would not enforce is refused with a 400
before decoding, never silently ignored.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from worker.inference.predictors import PredictionInputError

# keywords that only describe: allowed anywhere
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
# keywords xgrammar's JSON schema converter enforces
_ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "$ref",
        "$defs",
        "definitions",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minProperties",
        "maxProperties",
        "patternProperties",
    }
)
# string formats xgrammar turns into a grammar
FORMATS = frozenset(
    {"email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri"}
)
# keywords whose value is a map of names to schemas, or a list / one schema
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "prefixItems"})
_SCHEMA_ONES = frozenset({"items", "additionalProperties"})


def check_schema(schema: Any, where: str) -> None:
    """Refuse a JSON schema with a keyword the decoder would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise PredictionInputError(
            f"{where} must be a JSON schema object; got {type(schema).__name__}",
            param=where,
            code="invalid_schema",
        )
    for key, value in schema.items():
        path = f"{where}.{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            raise PredictionInputError(
                f"{path}: the JSON schema keyword {key!r} cannot be enforced by constrained "
                f"decoding; remove it. Enforced keywords: {', '.join(sorted(_ENFORCED))}",
                param=path,
                code="unsupported_schema",
            )
        if key == "format" and value not in FORMATS:
            raise PredictionInputError(
                f"{path}: the string format {value!r} cannot be enforced; use one of "
                f"{', '.join(sorted(FORMATS))} or a pattern",
                param=path,
                code="unsupported_schema",
            )
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                check_schema(sub, f"{path}.{name}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                check_schema(sub, f"{path}.{index}")
        elif key in _SCHEMA_ONES:
            check_schema(value, path)


class Grammars:
    """Compiles grammars for one tokenizer (the compiler indexes its vocabulary once)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: Sequence[int]) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos) or None
        )
        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)

    def response_format(self, response_format: Mapping[str, Any]) -> Any:
        """The compiled grammar of OpenAI's response_format (json_object or json_schema)."""
        kind = response_format.get("type")
        if kind == "json_object":
            # an object, as OpenAI's JSON mode promises (the built-in JSON grammar also takes
            # arrays and scalars), with any members
            return self.compiler.compile_json_schema(
                '{"type": "object"}', any_whitespace=False, strict_mode=False
            )
        schema = response_format["json_schema"]["schema"]
        where = "parameters.response_format.json_schema.schema"
        check_schema(schema, where)
        return self._compile(
            lambda: self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=True
            ),
            where,
        )

    def tool_call(self, prefix: str, schema: Mapping[str, Any], suffix: str, where: str) -> Any:
        """A grammar for exactly one tool call: prefix, a JSON object of schema, suffix."""
        import xgrammar as xgr

        check_schema(schema, where)

        def build() -> Any:
            parts = [xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)]
            if prefix:
                parts.insert(0, xgr.Grammar.from_ebnf(f"root ::= {json.dumps(prefix)}"))
            if suffix:
                parts.append(xgr.Grammar.from_ebnf(f"root ::= {json.dumps(suffix)}"))
            return self.compiler.compile_grammar(xgr.Grammar.concat(*parts))

        return self._compile(build, where)

    @staticmethod
    def _compile(build: Any, where: str) -> Any:
        try:
            return build()
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise PredictionInputError(
                f"{where} cannot be enforced by constrained decoding: {reason}",
                param=where,
                code="unsupported_schema",
            ) from exc


_grammars: weakref.WeakKeyDictionary[Any, Grammars] = weakref.WeakKeyDictionary()
_grammars_lock = threading.Lock()


def grammars_for(tokenizer: Any, vocab_size: int, eos: Sequence[int]) -> Grammars:
    """The tokenizer's grammar compiler, made on first use and kept while the tokenizer lives."""
    with _grammars_lock:
        found = _grammars.get(tokenizer)
        if found is None or found.vocab_size != vocab_size:
            found = Grammars(tokenizer, vocab_size, eos)
            _grammars[tokenizer] = found
        return found


class RowConstraint:
    """One row's place in its grammar."""

    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled)

    def accept(self, token: int) -> bool:
        """Advance by the chosen token; False if the grammar forbids it (a bug upstream)."""
        return bool(self.matcher.accept_token(token))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_terminated())


def mask(logits: torch.Tensor, rows: Sequence[RowConstraint | None]) -> torch.Tensor:
    """logits [rows, vocab] (float32) with the tokens each constrained row's grammar forbids
    at -inf; rows without a constraint keep theirs. Returns a new tensor."""
    import xgrammar as xgr

    constrained = [i for i, row in enumerate(rows) if row is not None]
    if not constrained:
        return logits
    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[-1])
    for i in constrained:
        row = rows[i]
        assert row is not None
        row.matcher.fill_next_token_bitmask(bitmask, i)
    masked = logits.clone()
    # xgrammar's own CPU kernel on the CPU; on an accelerator its plain-torch path, which
    # needs no kernel compiled at run time (the triton one is untested here)
    backend: Literal["auto", "torch_native"] = (
        "auto" if masked.device.type == "cpu" else "torch_native"
    )
    xgr.apply_token_bitmask_inplace(
        masked,
        bitmask.to(masked.device),
        vocab_size=logits.shape[-1],
        indices=constrained,
        backend=backend,
    )
    return masked
