"""Small validators shared by the policy sections."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

from egress_gateway.net import urlpath


def named_list(item: type, what: str):
    """A field type: a list of `item` entries whose names are unique."""
    return Annotated[list[item], AfterValidator(unique_names(what))]


def unique_names(what: str) -> Callable[[list], list]:
    """A list validator: every item's ``name`` is used once (`what` names the items in errors)."""

    def check(items: list) -> list:
        seen: set[str] = set()
        for item in items:
            if item.name in seen:
                raise ValueError(f"{what} name {item.name!r} is used twice")
            seen.add(item.name)
        return items

    return check


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,31}$")


def entry_name(v: str, what: str) -> str:
    """The name of a policy entry: 1-64 letters, digits, '_', '.', '-' (shown in logs and refusals)."""
    if not _NAME.match(v):
        raise ValueError(f"{v!r}: a {what} name is 1-64 letters, digits, '_', '.' or '-'")
    return v


def http_methods(v: list[str] | None) -> list[str] | None:
    """HTTP method names, upper-cased (None: any method)."""
    if v is None:
        return None
    out = []
    for m in v:
        u = str(m).strip().upper()
        if not _METHOD.match(u):
            raise ValueError(f"{m!r} is not an HTTP method")
        out.append(u)
    return out


def optional_path_glob(v: str | None) -> str | None:
    return None if v is None else urlpath.validate_path_glob(v)


#: A field type: HTTP methods (None: any), upper-cased.
Methods = Annotated[list[str] | None, AfterValidator(http_methods)]
#: A field type: a path glob of `net.urlpath` (None: any path).
PathGlobText = Annotated[str | None, AfterValidator(optional_path_glob)]
