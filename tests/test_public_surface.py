"""``__all__`` is the contract between corral's packages.

The rule, checked over every module of ``corral/`` (parsed with ``ast``, nothing imported):

- A package is ``corral.<pkg>`` (a directory with ``__init__.py``). Inside it, modules import
  each other freely.
- From outside ``<pkg>``, ``from corral.<pkg> import name`` and
  ``from corral.<pkg>.<module...> import name`` are allowed only if ``name`` is in
  ``corral.<pkg>.__all__`` (the package's ``__init__.py``, read as a literal list), or if
  ``<module>`` itself is listed there (a public submodule: its own ``__all__`` is re-exported)
  and ``name`` is in that module's ``__all__``. Importing a submodule by name
  (``from corral.<pkg> import module``) counts the same way.
- A top-level module ``corral/<mod>.py`` (``errors``, ``paths``, ``_frames``...) is shared
  infrastructure: a name imported from it must be in its own ``__all__``.
- Imports under ``if TYPE_CHECKING:`` follow the same rule (a type in a signature is part of
  the contract too).

``KNOWN`` lists accepted violations (none now); the test fails on any violation not listed,
and on a listed one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "corral"

# (importing module, imported module, name): none left. A new violation fails the test; export
# the name from the owning package (or list its module as a public submodule) instead.
KNOWN: set[tuple[str, str, str]] = set()


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _all(path: Path) -> frozenset[str] | None:
    if not path.exists():
        return None
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, (ast.List, ast.Tuple)), path
            return frozenset(ast.literal_eval(value))
    return None


def _package(module: str, root: Path = ROOT) -> str | None:
    """``corral.<pkg>`` if ``module`` is in a subpackage, else None (a top-level module)."""
    parts = module.split(".")
    if len(parts) >= 2 and (root / parts[1] / "__init__.py").exists():
        return f"corral.{parts[1]}"
    return None


def violations(root: Path = ROOT) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        importer = _module_name(path, root)
        home = _package(importer, root)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            target = node.module
            if target != "corral" and not target.startswith("corral."):
                continue
            pkg = _package(target, root)
            for alias in node.names:
                name = alias.name
                if pkg is None:  # a top-level module (or corral itself)
                    if target == "corral":
                        continue
                    exported = _all(root / f"{target.split('.')[1]}.py")
                    if exported is None or name not in exported:
                        found.add((importer, target, name))
                    continue
                if pkg == home:
                    continue
                exported = _all(root / pkg.split(".")[1] / "__init__.py") or frozenset()
                if name in exported:
                    continue
                parts = target.split(".")
                if len(parts) >= 3 and parts[2] in exported:  # a public submodule
                    own = _all(root.joinpath(*parts[1:]).with_suffix(".py"))
                    if own is not None and name in own:
                        continue
                found.add((importer, target, name))
    return found


def test_cross_package_imports_use_only_public_names() -> None:
    found = violations()
    new = sorted(found - KNOWN)
    assert not new, "imports of names outside the package's __all__:\n" + "\n".join(
        f"  {a} imports {n} from {b}" for a, b, n in new)
    fixed = sorted(KNOWN - found)
    assert not fixed, "fixed, remove from KNOWN:\n" + "\n".join(map(str, fixed))


def test_the_rule_on_a_small_tree(tmp_path: Path) -> None:
    """The checker is not vacuous: on a tree built here, exactly the wrong arrows are found."""
    root = tmp_path / "corral"
    files = {
        "errors.py": '__all__ = ["CorralError"]\nclass CorralError(Exception): ...\n',
        "a/__init__.py": '__all__ = ["pub", "open_mod"]\n',
        "a/m.py": '__all__ = ["pub", "priv"]\npub = priv = 1\n',
        "a/open_mod.py": '__all__ = ["shared"]\nshared = hidden = 1\n',
        "a/inner.py": "from corral.a.m import priv\n",  # same package: free
        "b/__init__.py": "__all__ = []\n",
        "b/x.py": (
            "from corral.a import pub\n"  # public
            "from corral.a.m import pub as p2, priv\n"  # priv is not in corral.a.__all__
            "from corral.a.open_mod import shared, hidden\n"  # public module: its __all__
            "from corral.errors import CorralError, _secret\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from corral.a.m import priv as again\n"
        ),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert violations(root) == {
        ("corral.b.x", "corral.a.m", "priv"),
        ("corral.b.x", "corral.a.open_mod", "hidden"),
        ("corral.b.x", "corral.errors", "_secret"),
    }
