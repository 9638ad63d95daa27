"""Running transformers quietly and safely: `quiet_transformers` (no progress bars / load reports),
`guard_torchvision` (a torchvision that does not import must not break transformers) and `hf_auto_class`
(a transformers Auto class, guarded)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from condense.models.hf_folder import transformers_module


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports; condense reports problems itself."""
    tf = transformers_module()
    log = tf.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


TORCHVISION_FIX = ("pip uninstall torchvision (condense and transformers' model classes do not need it), or "
                   "install the torchvision built for this torch (a CPU torch needs the CPU build: "
                   "pip install torchvision --index-url https://download.pytorch.org/whl/cpu); see docs/any_model.md")


def guard_torchvision() -> str | None:
    """Keep a torchvision that cannot be imported from breaking transformers; None when all is well.

    PyPI's torchvision is a CUDA build: beside a CPU torch its C++ ops do not load and `import
    torchvision` raises ("operator torchvision::nms does not exist"). transformers decides that
    torchvision is there by `importlib.util.find_spec` (no environment switch turns it off), then
    its vision model modules import it, so every image model (and `AutoImageProcessor`) fails to
    load. Here a torchvision that is installed but does not import is blocked for this process
    (`sys.modules["torchvision"] = None`: find_spec answers None, `import torchvision` raises
    ImportError) and transformers' cached answer is dropped, with a warning that names the fix.
    Returns that warning's text when it blocked torchvision (now or earlier). An absent or working
    torchvision is left alone; the import is tried once per process.
    """
    import importlib.util
    import sys
    import warnings

    global _TORCHVISION_BLOCKED
    if "torchvision" in sys.modules:
        return _TORCHVISION_BLOCKED if sys.modules["torchvision"] is None else None
    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import torchvision  # noqa: F401
        return None
    except Exception as e:  # RuntimeError (missing C++ ops), OSError (missing .so), ImportError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}"[:200]
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        sys.modules.pop(name, None)
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    iu = sys.modules.get("transformers.utils.import_utils")
    for name in dir(iu) if iu is not None else ():
        if name.startswith("is_torchvision"):
            with contextlib.suppress(AttributeError):
                getattr(iu, name).cache_clear()
    _TORCHVISION_BLOCKED = (f"torchvision is installed but does not import ({reason}); condense hides it from "
                            f"transformers in this process. Fix: {TORCHVISION_FIX}")
    warnings.warn(_TORCHVISION_BLOCKED, RuntimeWarning, stacklevel=2)
    return _TORCHVISION_BLOCKED


_TORCHVISION_BLOCKED: str | None = None


def hf_auto_class(auto_class: str) -> Any:
    guard_torchvision()  # before transformers imports a model module that imports torchvision
    return getattr(transformers_module(), auto_class)
