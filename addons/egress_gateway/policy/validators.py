"""Small validators shared by the policy sections."""

from __future__ import annotations

from collections.abc import Callable


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
