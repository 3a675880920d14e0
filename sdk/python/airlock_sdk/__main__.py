"""Build-time commands of the Python SDK (plain Python, run natively):

``python3 -m airlock_sdk check MODULE``
    Import a plugin's module the way a component build does and print its
    tools' descriptors as JSON. A tool the SDK refuses (a bad name, a
    missing description, an unsupported type hint) prints the reason alone
    on stderr and exits 3: one line naming the function and parameter.

``python3 -m airlock_sdk componentize --wit DIR --out FILE [--componentize-py PATH] PROJECT``
    Build the project's ``app.py`` into a component: ``check`` first, then
    componentize-py against a world holding only the imports the project's
    ``plugin.toml`` grants (``log``, ``workspace``), with WASI stubbed (the
    interpreter's runtime imports sockets, clocks and entropy that no plugin
    may have). ``DIR`` is the ``airlock:plugin`` WIT package. Used by
    ``airlock plugin build`` and by the repository's ``scripts/build-guests``
    alike.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import airlock_sdk

#: The module a Python plugin project's tools live in.
MODULE = "app"
#: Capabilities a Python plugin may be granted.
PYTHON_CAPABILITIES = ("log", "workspace")
#: The host's limits on what a plugin lists (`airlock_names::MAX_TOOLS`,
#: `MAX_SCHEMA_BYTES`): a plugin past them does not load.
MAX_TOOLS = 256
MAX_SCHEMA_BYTES = 256 * 1024


def check(module: str) -> int:
    try:
        importlib.import_module(module)
    except airlock_sdk.SchemaError as e:
        print(str(e), file=sys.stderr)
        return 3
    except Exception as e:
        print(f"cannot import `{module}`: {type(e).__name__}: {e}", file=sys.stderr)
        return 4
    descriptors = airlock_sdk.descriptors()
    if not descriptors:
        print(f"`{module}` registers no tools (decorate functions with @tool)", file=sys.stderr)
        return 3
    if len(descriptors) > MAX_TOOLS:
        print(
            f"`{module}` registers {len(descriptors)} tools, more than the host's limit of "
            f"{MAX_TOOLS}",
            file=sys.stderr,
        )
        return 3
    for d in descriptors:
        for which in ("input", "output"):
            size = len((d.get(f"{which}_schema") or "").encode())
            if size > MAX_SCHEMA_BYTES:
                print(
                    f"tool `{d['name']}`: its {which} schema is {size} bytes, more than the "
                    f"host's limit of {MAX_SCHEMA_BYTES}",
                    file=sys.stderr,
                )
                return 3
    print(json.dumps(descriptors))
    return 0


def world(manifest_path: str) -> str:
    """The ``python-plugin`` world for the manifest at ``manifest_path``."""
    import tomllib

    with open(manifest_path, "rb") as f:
        manifest = tomllib.load(f)
    imports = []
    for key, value in manifest.get("capabilities", {}).items():
        # `workspace_scope` says how the workspace is shared, not what is
        # imported; a capability set to false or an empty list grants
        # nothing, so it needs no import either.
        if key == "workspace_scope" or value is False or value == []:
            continue
        if key not in PYTHON_CAPABILITIES:
            raise ValueError(
                f"a Python plugin can be granted `log` and `workspace` only, not `{key}`: its "
                "WASI imports are stubbed (the interpreter's runtime would otherwise import "
                "sockets, which no plugin may have)"
            )
        if key == "workspace" or value is True:
            imports.append(key)
    lines = [
        "package airlock:plugin@0.1.0;",
        "",
        "// Written by the Python SDK's build: the plugin world with the imports",
        "// this plugin's manifest grants (componentize-py imports every",
        "// interface of its world, used or not).",
        "world python-plugin {",
    ]
    lines += [f"    import {name};" for name in imports]
    lines += ["    export tools;", "}", ""]
    return "\n".join(lines)


def componentize(argv: list) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m airlock_sdk componentize")
    parser.add_argument("--wit", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--componentize-py", default=None)
    parser.add_argument("project")
    args = parser.parse_args(argv)
    if sys.version_info < (3, 11):
        print(
            "building a Python plugin needs Python 3.11 or newer (for tomllib); this is "
            f"{sys.version.split()[0]}",
            file=sys.stderr,
        )
        return 3
    project = os.path.abspath(args.project)
    sys.path.insert(0, project)
    code = check(MODULE)
    if code != 0:
        return code
    try:
        world_text = world(os.path.join(project, "plugin.toml"))
    except (OSError, ValueError) as e:
        print(str(e), file=sys.stderr)
        return 3
    componentize_py = args.componentize_py or shutil.which("componentize-py")
    if componentize_py is None:
        print(
            "componentize-py is not installed: `pip install componentize-py==0.25.1`",
            file=sys.stderr,
        )
        return 5
    sdk_dir = os.path.dirname(os.path.dirname(os.path.abspath(airlock_sdk.__file__)))
    with tempfile.TemporaryDirectory() as scratch:
        wit = os.path.join(scratch, "wit")
        shutil.copytree(args.wit, wit)
        with open(os.path.join(wit, "python-plugin.wit"), "w") as f:
            f.write(world_text)
        with open(os.path.join(scratch, "airlock_entry.py"), "w") as f:
            f.write(
                f"import {MODULE}  # noqa: F401 (registers the tools)\n"
                "from airlock_sdk._component import Tools  # noqa: F401\n"
            )
        env = dict(os.environ, RUST_BACKTRACE="0")
        env.pop("VIRTUAL_ENV", None)
        command = [
            componentize_py,
            "-d", wit,
            "-w", "airlock:plugin/python-plugin",
            "componentize", "airlock_entry",
            "-p", scratch,
            "-p", project,
            "-p", sdk_dir,
            "--stub-wasi",
            "-o", os.path.abspath(args.out),
        ]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True)
        except OSError as e:
            print(f"cannot run componentize-py ({componentize_py}): {e}", file=sys.stderr)
            return 5
        if done.returncode != 0:
            print(f"componentize-py failed:\n{done.stderr.strip()}", file=sys.stderr)
            return 6
    return 0


def main(argv: list) -> int:
    if len(argv) == 2 and argv[0] == "check":
        return check(argv[1])
    if argv and argv[0] == "componentize":
        return componentize(argv[1:])
    print(
        "usage: python3 -m airlock_sdk check MODULE\n"
        "       python3 -m airlock_sdk componentize --wit DIR --out FILE "
        "[--componentize-py PATH] PROJECT",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
