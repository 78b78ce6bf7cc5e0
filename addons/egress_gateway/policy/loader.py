"""Reading a policy file: YAML without duplicate keys, validation, one line per problem.

`load_policy(path)` returns a `Policy` or raises `PolicyError` listing every problem as
``FILE: egress.allow[3].host: '*' matches everything; name a domain``. There are no defaults to
fall back to: unknown keys are errors, and a broken file is never half-applied.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from egress_gateway.policy.model import Policy


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see policies/README.md for the format)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "literal_error" or kind.endswith("_type") or kind.endswith("_parsing"):
        msg += f" (got {err.get('input')!r})"
    return msg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML text; raise PolicyError naming `source` in each problem."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([f"{source}: {where}invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: the policy must be a YAML mapping with 'version: 1'"])
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        problems = [f"{source}: {_loc(err['loc'])}: {_message(err)}" for err in e.errors()]
        raise PolicyError(problems) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{p}: cannot read policy: {e}"]) from None
    return parse_policy(text, str(p))
