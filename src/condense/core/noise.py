"""Known-harmless start-up noise of optional libraries, dropped narrowly before condense imports them.

Importing torchao (transformers' model classes import it when it is installed; so do the
ExecuTorch and LiteRT exporters) logs two kinds of records that say nothing about the run:

* logger `torchao`: "Failed to load .../torchao/_C_<kernels>.so: ..." for each prebuilt kernel
  library built for another Python or GPU (mxfp8, cutlass sm90a). condense runs none of those
  kernels; it uses torchao's pure-Python pt2e quantization only.
* logger `torch.utils._pytree`: "<enum '...'> is an Enum subclass and is now natively supported by
  torch.compile ... register_constant() on Enum subclasses is deprecated", for torchao's own enums
  (torchao registers them at import; nothing for a user to change).

Exporting through torch.export / ExecuTorch then copies pytree specs, and each copy of torch's
own `LeafSpec` warns "`isinstance(treespec, LeafSpec)` is deprecated" (a FutureWarning torch
itself suppresses where it makes its leaf spec; the copies come from torch and ExecuTorch code).

`quiet_known_noise()` adds a filter to exactly those two loggers that drops exactly those records
(the torchao `.so` load failures, and the pytree deprecation for enums defined in torchao), and a
warnings filter for that one FutureWarning message; every other record and warning still shows.
It is idempotent and imports nothing heavy.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable

_TORCHAO_SO = re.compile(r"^Failed to load \S*torchao[/\\]_C[^/\\]*\.so: ")
_ENUM_NOTE = "is an Enum subclass and is now natively supported by torch.compile"
_LEAFSPEC_NOTE = r"`isinstance\(treespec, LeafSpec\)` is deprecated, use `isinstance\(treespec, TreeSpec\) and"


def _torchao_so(record: logging.LogRecord) -> bool:
    return bool(_TORCHAO_SO.match(record.getMessage()))


def _torchao_enum(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    owner = getattr(args[0], "__module__", "") if args else ""
    return _ENUM_NOTE in str(record.msg) and (owner == "torchao" or owner.startswith("torchao."))


class _DropKnown(logging.Filter):
    """Drop the records `known` matches; let everything else through."""

    def __init__(self, known: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.known(record)


_RULES = {"torchao": _torchao_so, "torch.utils._pytree": _torchao_enum}


def quiet_known_noise() -> None:
    """Install the filters described in the module docstring (once)."""
    for name, known in _RULES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.known is known for f in logger.filters):
            logger.addFilter(_DropKnown(known))
    warnings.filterwarnings("ignore", message=_LEAFSPEC_NOTE, category=FutureWarning)  # replaces an identical filter


__all__ = ["quiet_known_noise"]
