"""The price table: USD per million tokens by provider and model, shipped as ``prices.json``
(dated) and overridable from a file of the same shape (``load_prices(override)``).

Invariants:
- Prices are held as whole micro-dollars per million tokens; a cost is rounded *up* to a whole
  micro-dollar, so a charge is never below the list price.
- A model matches its table entry exactly, or as that entry plus a dated-snapshot suffix
  (``-20250929``, ``-2024-08-06``, ``-latest``). Anything else (``gpt-4o-audio-preview``) is
  unknown and priced as its provider's dearest: the element-wise maximum of every entry, so an
  unknown or mistyped model can never be metered cheaper than any known one.
- An override file only changes the entries it names; a bad value (negative, not a number,
  a bool) is an error naming the file and key, never a silent zero.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from corral.spend.usage import MICRO, Tokens

__all__ = ["Price", "PriceError", "PriceTable", "load_prices"]

PROVIDERS = ("anthropic", "openai")
_SNAPSHOT = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)")
_KINDS = ("input", "output", "cache_write", "cache_read")
_LIMIT_USD = Decimal(1_000_000)  # per million tokens: far above any real price, below nonsense


class PriceError(ValueError):
    """A price table or override that cannot be used."""


class Price(NamedTuple):
    """Micro-dollars per million tokens of each kind, and the model's token limits."""

    input: int
    output: int
    cache_write: int
    cache_read: int
    context: int
    max_output: int

    def cost(self, tokens: Tokens) -> int:
        """Micro-dollars, rounded up."""
        total = (tokens.input * self.input + tokens.output * self.output
                 + tokens.cache_write * self.cache_write + tokens.cache_read * self.cache_read)
        return -(-total // 1_000_000)


def _money(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PriceError(f"{where}: expected a price in USD per million tokens, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PriceError(f"{where}: not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0 or amount > _LIMIT_USD:
        raise PriceError(f"{where}: {value!r} is outside 0-{_LIMIT_USD} USD per million tokens")
    micro: Decimal = amount * MICRO
    return int(micro.to_integral_value(rounding=ROUND_CEILING))


def _count(where: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000_000:
        return int(value)
    raise PriceError(f"{where}: expected a positive whole number of tokens, got {value!r}")


def _price(where: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise PriceError(f"{where}: expected a mapping of {', '.join(_KINDS)}, context, "
                         "max_output")
    unknown = set(entry) - {*_KINDS, "context", "max_output"}
    if unknown:
        raise PriceError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    missing = [k for k in (*_KINDS, "context", "max_output") if k not in entry]
    if missing:
        raise PriceError(f"{where}: missing {missing[0]!r}")
    money = [_money(f"{where}.{k}", entry[k]) for k in _KINDS]
    return Price(money[0], money[1], money[2], money[3],
                 context=_count(f"{where}.context", entry["context"]),
                 max_output=_count(f"{where}.max_output", entry["max_output"]))


class PriceTable:
    """Prices by provider and model, plus the endpoints each provider's rules pass for free."""

    def __init__(self, date: str, models: dict[str, dict[str, Price]],
                 free: dict[str, tuple[str, ...]]) -> None:
        self.date = date
        self.models = models
        self.free = free
        self._dearest = {
            provider: Price(*(max(p[i] for p in table.values()) for i in range(6)))
            for provider, table in models.items() if table
        }

    def price(self, provider: str, model: str) -> tuple[Price, bool]:
        """The price of ``model`` and whether it is known (False: the provider's dearest)."""
        table = self.models.get(provider, {})
        found = table.get(model)
        if found is None:
            for name in sorted(table, key=len, reverse=True):
                if model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name):]):
                    found = table[name]
                    break
        if found is not None:
            return found, True
        return self._dearest[provider], False

    def is_free(self, provider: str, method: str, path: str) -> bool:
        """``path`` without its query; ``*`` in a listed endpoint matches one whole segment."""
        parts = path.split("/")
        for endpoint in self.free.get(provider, ()):
            want_method, _, want_path = endpoint.partition(" ")
            want = want_path.split("/")
            if want_method == method and len(want) == len(parts) and all(
                    w == p or (w == "*" and p not in ("", ".", ".."))
                    for w, p in zip(want, parts, strict=True)):
                return True
        return False


def _merge(into: dict[str, Any], data: Any, source: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
        raise PriceError(f"{source}: expected a mapping with 'providers:' (see corral/spend/"
                         "prices.json)")
    if "date" in data:
        into["date"] = str(data["date"])
    for provider, section in data["providers"].items():
        if provider not in PROVIDERS:
            raise PriceError(f"{source}: providers.{provider}: unknown provider (one of "
                             f"{', '.join(PROVIDERS)})")
        if not isinstance(section, dict):
            raise PriceError(f"{source}: providers.{provider}: expected a mapping")
        where = f"{source}: providers.{provider}"
        for name, entry in (section.get("models") or {}).items():
            into["models"][provider][str(name)] = _price(f"{where}.models.{name}", entry)
        free = section.get("free")
        if free is not None:
            if not isinstance(free, list) or not all(
                    isinstance(e, str) and re.fullmatch(r"[A-Z]+ /\S*", e) for e in free):
                raise PriceError(f"{where}.free: expected a list like ['GET /v1/models']")
            into["free"][provider] = tuple(free)


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with ``override`` (JSON or YAML of the same shape) applied on top."""
    acc: dict[str, Any] = {"date": "", "models": {p: {} for p in PROVIDERS},
                           "free": {p: () for p in PROVIDERS}}
    shipped = resources.files("corral.spend").joinpath("prices.json").read_text("utf-8")
    _merge(acc, json.loads(shipped), "corral/spend/prices.json")
    if override is not None:
        import yaml  # only when there is an override: the proxy's start-up stays light

        try:
            data = yaml.safe_load(override.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise PriceError(f"{override}: cannot read: {err}") from None
        _merge(acc, data, str(override))
    return PriceTable(acc["date"], acc["models"], acc["free"])
