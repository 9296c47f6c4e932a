"""What ``mlff train`` and ``mlff pretrain`` share: options from a config dataclass, and the
command line, ``--config`` YAML and ``--resume`` folder turned into one resolved config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a config dataclass (fields whose default is None left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not None}


def parse_model_options(values: tuple[str, ...]) -> dict:
    """``--model-option KEY=VALUE`` (repeated) -> ``{KEY: VALUE}``, values read as YAML."""
    import yaml

    options = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"expected KEY=VALUE, got {item!r}", param_hint="--model-option"
            )
        options[key.strip()] = yaml.safe_load(text)
    return options


def add_options(function, specs: list[tuple], default: Callable[[str], Any]):
    """Decorate ``function`` with click options ``specs`` = [(long name, short name or None,
    click arguments)], each showing ``default(option name)`` unless it repeats (``multiple``)."""
    for long, short, spec in reversed(specs):
        names = [long] + ([short] if short else [])
        if spec.get("multiple"):
            function = click.option(*names, **spec)(function)
            continue
        value = default(long[2:].replace("-", "_"))
        function = click.option(*names, default=value, show_default=value is not None, **spec)(
            function
        )
    return function


def resolve_config(
    ctx: click.Context,
    data: tuple[str, ...],
    config_file: str | None,
    resume: str | None,
    options: dict,
    read: Callable[[str], dict],
    from_dict: Callable[..., Any],
    for_resume: Callable[[str, dict], Any],
    what: str,
):
    """The run's config: the ``--resume`` folder's with the options given on the command line,
    or ``--config``'s YAML overridden by them. Only options the user typed override; ``what``
    names the data in the error for a run without any."""
    from click.core import ParameterSource

    given = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    if "model_option" in given:
        given["model_options"] = parse_model_options(given.pop("model_option"))
    if data:
        given["data"] = list(data)
    if resume:
        if config_file or data:
            raise click.UsageError("--resume takes the data and options of the run it continues")
        return for_resume(resume, given)
    values = read(config_file) if config_file else {}
    values.update(given)
    config = from_dict(values, where=config_file or "options")
    if not config.data:
        raise click.UsageError(f"give the {what}, or --config or --resume")
    return config
