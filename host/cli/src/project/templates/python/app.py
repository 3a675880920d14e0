"""The `{{name}}` Airlock plugin.

`airlock plugin build` turns this module into a WebAssembly component (with
componentize-py) and stamps its digest into the built manifest; `airlock
plugin check` loads it the way a host does. `python3 -m unittest` runs the
tools natively.
"""

from dataclasses import dataclass
from typing import Annotated

from airlock_sdk import InvalidInput, log, tool


@dataclass
class Greeting:
    """What `greet` returns."""

    greeting: Annotated[str, "The greeting."]


@tool
def greet(name: Annotated[str, "Who to greet."]) -> Greeting:
    """Greet someone by name."""
    name = name.strip()
    if not name:
        raise InvalidInput("`name` is empty")
    log.info("greeting")
    return Greeting(greeting=f"Hello, {name}!")
