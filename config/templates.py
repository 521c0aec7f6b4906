"""Reply templates: `{variable}` placeholders, checked when the file is loaded."""

from __future__ import annotations

import string
from collections.abc import Mapping

# The variables a template may use; later features add theirs here.
TEMPLATE_VARIABLES: frozenset[str] = frozenset({"name", "broker", "provider", "next_open"})


class TemplateError(ValueError):
    pass


def check_template(template: str, allowed: frozenset[str] = TEMPLATE_VARIABLES) -> None:
    """Raise TemplateError unless every placeholder is a plain, known variable."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"malformed template: {exc}") from None
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in allowed:
            known = ", ".join(sorted("{" + v + "}" for v in allowed))
            raise TemplateError(f"unknown variable {{{field}}}; known: {known}")
        if spec or conversion:
            raise TemplateError(f"variable {{{field}}} takes no format or conversion")


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill a checked template. Values are inserted as-is, never re-interpreted."""
    out: list[str] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(values.get(field, ""))
    return "".join(out)
