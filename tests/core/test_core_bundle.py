"""bundle.HOOKS says which addon acts in which hook: it must match the addons' code."""

from __future__ import annotations

import mitmproxy.addons.next_layer  # noqa: F401 - registers the next_layer hook
import mitmproxy.proxy.layers.dns  # noqa: F401
import mitmproxy.proxy.layers.http  # noqa: F401
import mitmproxy.proxy.layers.tcp  # noqa: F401
import mitmproxy.proxy.layers.udp  # noqa: F401
import mitmproxy.proxy.layers.websocket  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from egress_gateway.bundle import HOOKS, make_addons
from mitmproxy import hooks


def implemented(addon) -> set[str]:
    names = set(hooks.all_hooks) | {"load"}
    return {h for h in names if callable(getattr(addon, h, None))}


def test_hook_table_matches_every_addon():
    addons = make_addons()
    assert [type(a).__name__ for a in addons] == list(HOOKS)
    for addon in addons:
        assert implemented(addon) == set(HOOKS[type(addon).__name__]), type(addon).__name__


def test_every_addon_reaches_its_peers_by_reference():
    addons = make_addons()
    by = {type(a).__name__: a for a in addons}
    core = by["Core"]
    assert by["Shutdown"].approvals is by["Approvals"] and by["Shutdown"].recorder is by["Recorder"]
    assert by["Shutdown"].redactor is by["Redactor"] and by["Finished"].shutdown is by["Shutdown"]
    assert by["Approvals"].redactor is by["Redactor"]
    assert by["Session"].connections is core.connections
    assert all(getattr(a, "core", core) is core for a in addons)


def test_hooks_mitmproxy_calls_synchronously_are_not_async():
    """mitmproxy calls load, configure and done synchronously when a script is (un)loaded or an
    option changes, and raises for an ``async def`` handler: the unload of a broken edit would
    abort and the reload path would break. A done that must wait returns a coroutine instead."""
    import inspect

    for addon in make_addons():
        for hook in ("load", "configure", "done"):
            fn = getattr(addon, hook, None)
            assert fn is None or not inspect.iscoroutinefunction(fn), \
                f"{type(addon).__name__}.{hook} is async"
