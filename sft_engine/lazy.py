"""Names a package exports but imports on first use (PEP 562 module ``__getattr__``).

Why: ``import sft_engine`` must stay cheap for a service that only needs the client,
and the CLI reads ``sft_engine.finetune``'s option lists without paying for torch.
Each package keeps a table "public name → module that defines it" and gets its
``__getattr__`` / ``__dir__`` from here; the one ``importlib`` call is on purpose: the
table is data, so the import happens when a name is first read, not when the package is.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, str], namespace: MutableMapping[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose ``namespace`` is its ``globals()``.

    ``table`` maps each lazy name to its module, absolute or relative to ``package``
    (".writer"). A name is imported once: its value is then stored in ``namespace``, so
    later reads are plain attribute reads that never reach ``__getattr__`` again.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(table))

    return __getattr__, __dir__
