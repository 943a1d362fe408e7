"""Which layer (and, with ``--methods auto``, which CAM method) explain uses per model:
``--layer`` parsed and checked, the localisation benchmark run or reused where it decides."""

from __future__ import annotations

from typing import Any

from dermcam import run as runmod
from dermcam.attribution import METHODS, check_method
from dermcam.errors import DermcamError
from dermcam.localisation import benchmark_rows, choose


def parse_layer_spec(spec: str | dict | None, names) -> dict[str, str]:
    """``--layer`` -> ``{model: auto | last | layer name}``: one choice for every model, or
    ``resnet18=layer2,mobilenet_v2=features.13`` per model (others: auto)."""
    if isinstance(spec, dict):
        return {n: spec.get(n, "auto") for n in names}
    spec = (spec or "auto").strip()
    if "=" not in spec:
        return {n: spec for n in names}
    out = {n: "auto" for n in names}
    for part in spec.split(","):
        model, sep, layer = part.partition("=")
        model, layer = model.strip(), layer.strip()
        if not sep or not layer:
            raise DermcamError(f"--layer entries must look like model=layer, got {part!r}")
        if model not in out:
            raise DermcamError(f"--layer names model {model!r}, which this run did not train "
                               f"({', '.join(names)})")
        out[model] = layer
    return out


def resolve_layers(run: runmod.Run, names, methods, spec, bench_methods=None,
                   bench_images: int = 64, normalize="minmax", target="malignant",
                   n_boot: int = 1000) -> tuple[list[dict[str, str]], list]:
    """``(selection [{model, method, layer, reason}], benchmark rows)``; ``methods ==
    ["auto"]`` chooses each model's method with its layer, over ``bench_methods``."""
    choice = parse_layer_spec(spec, names)
    auto_method = list(methods) == ["auto"]
    loaded = {name: run.load_model(name)[:2] for name in names}
    for name, c in choice.items():  # refuse a --layer name the model does not have
        if c not in ("auto", "last", "study"):
            try:
                loaded[name][0].get_submodule(c)
            except AttributeError:
                raise DermcamError(f"--layer: {name} has no layer {c!r}; 'dermcam models' "
                                   "lists the candidates") from None
    auto = [n for n in names if choice[n] == "auto" or auto_method]
    bench = [check_method(m) for m in (bench_methods or METHODS)]
    if not auto_method:
        bench = list(dict.fromkeys([*methods, *bench]))
    scored = names if bench_methods else auto
    rows: list[dict[str, Any]] = (benchmark_rows(run, scored, bench, bench_images, normalize,
                                                 target, n_boot) if scored else [])
    selection = []
    for name in names:
        selection += _select_layers(name, loaded[name][1], choice[name], methods,
                                    [r for r in rows if r["model"] == name], bench[0])
    return selection, rows


def _select_layers(name: str, info, c: str, methods, mine: list[dict], first_bench: str
                   ) -> list[dict[str, str]]:
    """Model ``name``'s ``{model, method, layer, reason}`` rows for layer choice ``c``."""
    if list(methods) == ["auto"]:
        if c != "auto":
            raise DermcamError("--methods auto chooses the layer too; drop --layer or "
                               "name the methods")
        method, layer, why = choose(mine, info.target_layer, first_bench)
        return [{"model": name, "method": method, "layer": layer, "reason": why}]
    out = []
    for method in methods:
        if c == "auto":
            _, layer, why = choose([r for r in mine if r["method"] == method],
                                   info.target_layer, method)
        elif c in ("last", "study"):
            layer, why = info.target_layer, "study_layer"
        else:
            layer, why = c, "user_layer"
        out.append({"model": name, "method": method, "layer": layer, "reason": why})
    return out
