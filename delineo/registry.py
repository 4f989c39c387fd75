"""Named component registries: the experiment file refers to networks, losses, optimisers and
schedules by name, and plugins add names with a decorator or a ``delineo.plugins`` entry point.

A component spec is ``{"name": <registered name>, <parameters>}``. Parameters are checked
against the builder's signature when the experiment file is loaded, so a misspelled parameter
is reported with the closest valid name before any training starts.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from importlib.metadata import entry_points
from typing import Any, Callable

from delineo.errors import ConfigError

log = logging.getLogger(__name__)


def closest(name: str, options) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry:
    """Maps names to builders (functions or classes) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None, *aliases: str) -> Callable[[Callable], Callable]:
        def decorator(builder: Callable) -> Callable:
            for key in (name or builder.__name__, *aliases):
                key = key.lower()
                if key in self._builders and self._builders[key] is not builder:
                    raise ValueError(f"{self.kind} '{key}' is already registered")
                self._builders[key] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._builders)

    def get(self, name: str, where: str = "") -> Callable[..., Any]:
        load_plugins()
        key = str(name).lower()
        if key not in self._builders:
            at = f" at {where}" if where else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{at}{closest(key, self._builders)}; "
                f"known: {', '.join(sorted(self._builders))}."
            )
        return self._builders[key]

    def check(self, spec: dict[str, Any], where: str = "", extra: tuple[str, ...] = ()) -> None:
        """Raise :class:`ConfigError` if ``spec`` names an unknown builder or parameter.

        ``extra`` lists parameters that Delineo passes itself (e.g. ``in_channels``).
        """
        if "name" not in spec:
            raise ConfigError(f"{where or self.kind}: missing 'name' (one of {', '.join(self.names())}).")
        builder = self.get(spec["name"], where)
        params = _parameters(builder)
        if params is None:  # builder takes **kwargs: nothing to check
            return
        for key in spec:
            if key == "name" or key in params:
                continue
            valid = [p for p in params if p not in extra]
            raise ConfigError(
                f"unknown parameter '{key}' for {self.kind} '{spec['name']}' at {where}.{key}"
                f"{closest(key, valid)}; valid: {', '.join(valid)}."
            )

    def build(self, spec: dict[str, Any] | str, where: str = "", **passed: Any) -> Any:
        """Build the component named in ``spec`` with its parameters plus ``passed`` ones."""
        if isinstance(spec, str):
            spec = {"name": spec}
        self.check(spec, where, extra=tuple(passed))
        builder = self.get(spec["name"], where)
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        params = _parameters(builder)
        for key, value in passed.items():
            if params is None or key in params:
                kwargs.setdefault(key, value)
        try:
            return builder(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cannot build {self.kind} '{spec['name']}' at {where}: {exc}") from exc


def _parameters(builder: Callable) -> list[str] | None:
    target = builder.__init__ if inspect.isclass(builder) else builder
    sig = inspect.signature(target)
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL,):
            names.append(p.name)
    return names


MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")

_plugins_loaded = False


def load_plugins() -> None:
    """Import the built-in components and every ``delineo.plugins`` entry point, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import delineo.losses  # noqa: F401  (registers built-in components)
    import delineo.models  # noqa: F401
    import delineo.train.optim  # noqa: F401

    for ep in entry_points(group="delineo.plugins"):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not break Delineo
            log.warning("plugin %s failed to load: %s", ep.name, exc)
