"""Turn a ``--method`` value into a :class:`~locbench.methods.base.Method` class.

Three spellings are accepted, tried in this order:

* a registered short name (``dgl``): ``METHODS.get(name)``;
* ``path/to/file.py:ClassName``: the file is imported as a module of its own (it need not be
  inside a package or on ``sys.path``) and ``ClassName`` is taken from it. While the file is
  imported its folder is first on ``sys.path``, so it can ``import helper`` for a
  ``helper.py`` beside it. Do those imports at the top of the file (the folder leaves
  ``sys.path`` afterwards); helpers are ordinary top-level modules, imported once per process
  under their file name, so name them so they clash with no installed module or with another
  method folder's helpers;
* a name from the ``locbench.methods`` entry-point group, declared by an installed package::

      [project.entry-points."locbench.methods"]
      mymethod = "mypkg.mymethod:MyMethod"

  Entry points are only *loaded* (their package imported) when their name is the one asked
  for, so a broken plugin package never breaks runs of the built-in methods. Their names are
  read for every name, though: a plug-in name must be unambiguous. One that is also a
  registered method's name (unless it points at that very class), or that two plug-ins
  declare with different values, is refused with a one-line error naming both whenever that
  name is asked for, and ``locbench list`` refuses to list it.

Every failure is a one-line :class:`~locbench.errors.UserError`, a plug-in's ``Params``
declaration included (checked whenever the class is loaded:
:func:`~locbench.methods.params.check_declaration`).

Naming: a class loaded from a file keeps the name its own ``@register("x")`` gave it; a class
that was never registered is named ``ClassName.lower()`` (an entry-point class: the entry
point's name). The name only labels the method in error messages; run records keep the
``--method`` value exactly as typed (the file spec), since that is what reproduces the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

from locbench.errors import UserError
from locbench.methods.base import METHODS, Method
from locbench.methods.params import check_declaration

#: Entry-point group through which installed packages provide methods.
ENTRY_POINT_GROUP = "locbench.methods"

FILE_SPEC_HINT = "use path/to/file.py:ClassName"


def resolve_method(spec: str) -> type[Method]:
    """The method class that ``spec`` (a name, ``file.py:Class`` or an entry point) names."""
    if is_file_spec(spec):
        return load_from_file(spec)
    claims = entry_point_claims()
    check_unambiguous(spec, claims.get(spec, []))
    if spec in METHODS:
        return METHODS.get(spec)
    if spec in claims:
        return load_entry_point(claims[spec][0])
    known = sorted(set(METHODS.names()) | set(claims))
    raise UserError(f"unknown method {spec!r}; known: {', '.join(known)}")


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` names a method by its file (``path/to/file.py:Class``)."""
    return spec not in METHODS and looks_like_path(spec)


def looks_like_path(spec: str) -> bool:
    return ":" in spec or "/" in spec or spec.endswith(".py")


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """Split ``path/to/file.py:ClassName`` on its last colon, after checking the path part."""
    path, sep, class_name = spec.rpartition(":")
    if not sep:
        if spec.endswith(".py"):
            raise UserError(f"--method {spec!r} names no class; {FILE_SPEC_HINT}")
        raise UserError(f"--method {spec!r} is not a method name or a .py file; {FILE_SPEC_HINT}")
    if not path:
        raise UserError(f"--method {spec!r} names no file; {FILE_SPEC_HINT}")
    if not path.endswith(".py"):
        if ":" in path:
            raise UserError(f"--method {spec!r} has more than one ':'; {FILE_SPEC_HINT}")
        raise UserError(f"--method {spec!r}: {path!r} is not a .py file; {FILE_SPEC_HINT}")
    if not class_name:
        raise UserError(f"--method {spec!r} names no class after ':'; {FILE_SPEC_HINT}")
    if not class_name.isidentifier():
        raise UserError(f"--method {spec!r}: {class_name!r} is not a class name; {FILE_SPEC_HINT}")
    return Path(path).expanduser(), class_name


def load_from_file(spec: str) -> type[Method]:
    path, class_name = parse_file_spec(spec)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        what = "is not a file" if path.exists() else "not found"
        raise UserError(f"--method {spec!r}: file {str(path)!r} {what}{where}")
    module = import_file(path.resolve())
    if not hasattr(module, class_name):
        defined = methods_defined_in(module)
        listing = f"it defines {', '.join(defined)}" if defined else "it defines no Method subclass"
        raise UserError(f"{path} has no class {class_name!r}; {listing}")
    # Not registered by the file itself: named after its class (a subclass would otherwise
    # inherit its parent's registered name, e.g. "dgl", and be mistaken for it in messages).
    return loaded(getattr(module, class_name), f"{class_name} in {path}", class_name.lower())


def import_file(path: Path):
    """Import ``path`` as a module named after its resolved location (imported at most once
    per process, so a file's own ``@register`` does not run twice)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    module_name = f"locbench_plugin_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # In sys.modules before running it: dataclasses and pickling look the module up by name.
    sys.modules[module_name] = module
    try:
        with folder_on_path(path.parent):
            spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in user code becomes one line
        del sys.modules[module_name]
        raise UserError(f"importing {path} failed: {type(e).__name__}: {first_line(e)}") from None
    return module


@contextlib.contextmanager
def folder_on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the duration: a method file's ``import helper``
    finds ``helper.py`` beside it, as when that file runs as a script."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def methods_defined_in(module) -> list[str]:
    """Names of the Method subclasses defined (not merely imported) in ``module``."""
    return sorted(
        name
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and issubclass(obj, Method)
        and obj is not Method
        and obj.__module__ == module.__name__
    )


def loaded(obj: object, what: str, name: str) -> type[Method]:
    """The plug-in class ``obj`` (``what``: where it came from), checked once, as it is
    loaded: a Method subclass whose ``Params`` declaration holds
    (:func:`~locbench.methods.params.check_declaration`); ``name`` when it registered none."""
    check_method_class(obj, what)
    if "name" not in vars(obj) or not obj.name:
        obj.name = name
    check_declaration(obj, f"method {obj.name!r} ({what})")
    return obj


def check_method_class(obj: object, what: str) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Method)) or obj is Method:
        if obj is Method:
            kind = "the base class itself"
        elif isinstance(obj, type):
            kind = "a class not derived from Method"
        else:
            kind = f"a {type(obj).__name__}"
        raise UserError(f"{what} is not a subclass of locbench.methods.base.Method (it is {kind})")


def entry_point_claims() -> dict[str, list]:
    """``name -> entry points`` of the ``locbench.methods`` group, one per distinct value (the
    same package found twice on ``sys.path`` claims a name once). Reads metadata only.

    Looked up through ``importlib.metadata.entry_points`` at call time, so tests can patch it."""
    claims: dict[str, list] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        same_name = claims.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same_name):
            same_name.append(ep)
    return claims


def check_unambiguous(name: str, entry_points: list) -> None:
    """One-line error if ``name`` is claimed by a registered method and a plug-in entry point
    pointing elsewhere, or by two plug-in entry points of different values."""
    if name in METHODS:
        cls = METHODS.get(name)
        own = f"{cls.__module__}:{cls.__qualname__}"
        others = [ep for ep in entry_points if ep.value != own]
        if others:
            raise UserError(
                f"method name {name!r} is both the registered method {own} and plug-in "
                f"{entry_point_label(others[0])}; rename or uninstall the plug-in"
            )
    elif len(entry_points) > 1:
        first, second = entry_points[:2]
        raise UserError(
            f"method name {name!r} is claimed by two plug-ins, {entry_point_label(first)} and "
            f"{entry_point_label(second)}; rename or uninstall one of them"
        )


def entry_point_label(ep) -> str:
    return f"entry point {ep.name!r} ({ep.value})"


def method_entry_points() -> dict:
    """``name -> entry point`` of every plug-in method (for ``locbench list``); a one-line
    error if any name is ambiguous (:func:`check_unambiguous`)."""
    claims = entry_point_claims()
    for name in sorted(claims):
        check_unambiguous(name, claims[name])
    return {name: eps[0] for name, eps in claims.items()}


def load_entry_point(ep) -> type[Method]:
    what = entry_point_label(ep)
    try:
        cls = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin package becomes one line
        raise UserError(f"loading {what} failed: {type(e).__name__}: {first_line(e)}") from None
    return loaded(cls, what, ep.name)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
