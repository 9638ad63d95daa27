"""Model zoo registry and architecture specs.

A model is named by a zoo name (`build_model("cnn", num_classes=10)`), by an explicit
`package.module:factory` the user wrote, or by `hf:<local folder>` for a Hugging Face model
(`condense.models.hf`; the spec records the folder's absolute path and the resolved task).
Either way the spec (name + kwargs) is attached to the built module as `model.condense_spec`,
so `save()` can record how to rebuild it without pickles.

A `package.module:factory` named by a *file* (an artifact's condense.json, a recipe) is code
execution, like Hugging Face's `trust_remote_code`: `require_trusted` refuses it, before anything is
imported, unless the user opts in for that run (`--trust-code` / `trust_code=True`) or the name is in
`MODELS` (the zoo, or a factory the user registered in this process:
`MODELS.register("mypkg.nets:make", make)`). A spec the user writes themselves (`build_model(...)` in
Python, `--model` on the command line) is their own choice and builds as before. docs/security.md.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from condense.core.errors import ConfigError, InputFileError, UnknownNameError, did_you_mean
from condense.core.registry import Registry
from condense.models.edits import set_edit_log
from condense.models.hf import BUILD_ARGS, build_hf_model

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
HF_PREFIX = "hf:"


class UntrustedCodeError(InputFileError):
    """A file names code to import and run (`package.module:factory`) and the user has not
    opted in with `--trust-code` / `trust_code=True` (exit code 3, like any refused input file)."""


def names_code(name: str) -> bool:
    """Whether building `name` would import a module: a `package.module:factory` that is neither
    `hf:<folder>` nor registered in `MODELS` (the zoo, or a factory registered in this process)."""
    return ":" in name and not name.startswith(HF_PREFIX) and name not in MODELS


def require_trusted(name: str, *, trust_code: bool, source: str) -> None:
    """Refuse the spec `name` read from the file `source` when it names code the user has not
    vouched for (see the module docstring). Imports nothing."""
    if trust_code or not names_code(name):
        return
    module = name.partition(":")[0]
    raise UntrustedCodeError(
        f"{source}: names the model factory {name!r}; building it would import module {module!r} and run "
        "its code, so it is refused (a file that names code is as dangerous as a pickle). If you trust "
        "where this file came from, pass --trust-code (Python: trust_code=True), or register the factory "
        f"in your process first: condense.models.MODELS.register({name!r}, factory). A model built with "
        "--model package.module:factory records that spec when saved, so opening the saved artifact "
        "again needs --trust-code too"
    )


@dataclasses.dataclass
class ModelSpec:
    """How to build an architecture: a zoo name or `package.module:factory`, plus kwargs."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"architecture spec must be a mapping with 'name', got {d!r}")
        return cls(name=str(d["name"]), kwargs=dict(d.get("kwargs") or {}))

    def build(self, *, trust_code: bool = True, source: str | None = None) -> nn.Module:
        """Build the architecture. A spec read from a file passes `trust_code` (the user's opt-in)
        and `source` (the file, for the refusal); a spec written in code is the caller's choice."""
        require_trusted(self.name, trust_code=trust_code, source=source or "model spec")
        return build_model(self.name, **self.kwargs)


def _import_factory(ref: str) -> Callable[..., nn.Module]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model reference {ref!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownNameError(f"model {ref!r}: cannot import module {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UnknownNameError(f"model {ref!r}: module {module_name!r} has no callable {attr!r}")
    return factory



def _build_hf(folder: str, kwargs: dict[str, Any]) -> nn.Module:
    unknown = sorted(set(kwargs) - set(BUILD_ARGS))
    if unknown:
        raise ConfigError(f"model 'hf:{folder}': unknown argument {unknown[0]!r}{did_you_mean(unknown[0], BUILD_ARGS)}; "
                          f"it takes {', '.join(BUILD_ARGS)}")
    model = build_hf_model(folder, **kwargs)
    model.condense_spec = ModelSpec(f"{HF_PREFIX}{model.source_dir}", dict(model.build_kwargs))  # type: ignore[assignment]
    set_edit_log(model, [])
    return model


def build_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, a user model from `package.module:factory`, or `hf:<folder>`.

    A name registered in `MODELS` (even one with a colon) is built from the registry, without an
    import. This function trusts `name`: a name read from a file goes through `require_trusted`
    first (`ModelSpec.build(trust_code=..., source=...)`)."""
    if name.startswith(HF_PREFIX):
        return _build_hf(name[len(HF_PREFIX):], kwargs)
    factory = MODELS.get(name) if name in MODELS or ":" not in name else _import_factory(name)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: bad arguments {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: factory returned {type(model).__name__}, not a torch.nn.Module")
    model.condense_spec = ModelSpec(name, dict(kwargs))  # type: ignore[assignment]
    set_edit_log(model, [])
    return model


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Check `kwargs` against what model `name` takes, without building it (recipe validation).

    A zoo model's factory signature and the `hf:` build arguments are checked (unknown name or
    argument: a ConfigError with a did-you-mean); a user's `package.module:factory` is not
    imported here, so its arguments are checked when it is built."""
    if name.startswith(HF_PREFIX):
        unknown = sorted(set(kwargs) - set(BUILD_ARGS))
        if unknown:
            raise ConfigError(f"model {name!r}: unknown argument {unknown[0]!r}{did_you_mean(unknown[0], BUILD_ARGS)}; "
                              f"it takes {', '.join(BUILD_ARGS)}")
        return
    if ":" in name and name not in MODELS:
        return
    import inspect

    params = inspect.signature(MODELS.get(name)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in known:
            raise ConfigError(f"model {name!r}: unknown argument {key!r}{did_you_mean(key, known)}; "
                              f"it takes {', '.join(known)}")


def model_spec(model: nn.Module) -> ModelSpec | None:
    return getattr(model, "condense_spec", None)
