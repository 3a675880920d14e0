"""Unit tests of the Python SDK, natively: `python3 -m unittest discover -s
sdk/python/tests` (run by scripts/test)."""

import json
import os
import sys
import unittest
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Literal, Optional, Set, Tuple, TypedDict, Union

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import airlock_sdk  # noqa: E402
from airlock_sdk import (  # noqa: E402
    Context,
    Denied,
    Failed,
    InvalidInput,
    SchemaError,
    Tool,
    workspace,
)
from airlock_sdk import __main__ as cli  # noqa: E402


@dataclass
class Point:
    """A point."""

    x: int
    y: int = 0


class Options(TypedDict):
    mode: Literal["fast", "slow"]
    labels: List[str]


@dataclass
class Summary:
    count: int
    mean: Optional[float]
    points: List[Point] = field(default_factory=list)


def make(func, name=None):
    return Tool(func, name or func.__name__.replace("_", "-"), func.__doc__ or "A tool.")


class SchemaTest(unittest.TestCase):
    def test_hints_become_draft_2020_12_schemas(self):
        def summarize(
            points: Annotated[List[Point], "The points."],
            options: Options,
            scale: float = 1.0,
            note: Optional[str] = None,
            tags: Dict[str, int] = None,  # type: ignore[assignment]
        ) -> Summary:
            """Summarize points."""
            raise AssertionError

        t = make(summarize)
        schema = t.input_schema
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertEqual(schema["type"], "object")
        self.assertEqual(schema["additionalProperties"], False)
        self.assertEqual(schema["required"], ["points", "options"])
        points = schema["properties"]["points"]
        self.assertEqual(points["description"], "The points.")
        self.assertEqual(points["items"]["required"], ["x"])
        self.assertEqual(points["items"]["additionalProperties"], False)
        self.assertEqual(points["items"]["description"], "A point.")
        self.assertEqual(schema["properties"]["options"]["properties"]["mode"], {"enum": ["fast", "slow"]})
        # No docstring of its own: no description (not `dict`'s).
        self.assertNotIn("description", schema["properties"]["options"])
        self.assertEqual(
            schema["properties"]["note"], {"anyOf": [{"type": "string"}, {"type": "null"}]}
        )
        self.assertEqual(
            schema["properties"]["tags"],
            {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
            },
        )
        self.assertEqual(t.output_schema["required"], ["count", "mean"])
        json.dumps(t.descriptor())

    def test_unsupported_hints_name_the_function_and_parameter(self):
        cases = [
            ("anything", Any, "unsupported type hint `Any`"),
            ("a_set", Set[int], "unsupported type hint `Set[int]`"),
            ("a_tuple", Tuple[int, int], "unsupported type hint `Tuple[int, int]`"),
            ("a_union", Union[int, str], "a union of several types"),
            ("bare_list", list, "say what it holds"),
            ("int_keys", Dict[int, str], "say `dict[str, T]`"),
            ("an_object", object, "unsupported type hint `object`"),
        ]
        for param, hint, why in cases:
            def f(**kwargs):
                """Doc."""

            f.__annotations__ = {param: hint, "return": int}
            f.__signature__ = __import__("inspect").Signature(
                [__import__("inspect").Parameter(param, __import__("inspect").Parameter.KEYWORD_ONLY, annotation=hint)],
                return_annotation=int,
            )
            with self.assertRaises(SchemaError) as raised:
                Tool(f, "t", "Doc.")
            message = str(raised.exception)
            self.assertIn("function `", message)
            self.assertIn(f"parameter `{param}`", message)
            self.assertIn(why, message)

    def test_a_missing_hint_is_refused(self):
        def f(x) -> int:
            """Doc."""

        with self.assertRaisesRegex(SchemaError, r"parameter `x`: no type hint"):
            Tool(f, "t", "Doc.")

    def test_a_missing_return_hint_is_refused(self):
        def f(x: int):
            """Doc."""

        with self.assertRaisesRegex(SchemaError, r"return value: no type hint"):
            Tool(f, "t", "Doc.")

    def test_an_unsupported_field_names_the_class(self):
        @dataclass
        class Bad:
            when: Set[str]

        def f(bad: Bad) -> int:
            """Doc."""

        with self.assertRaisesRegex(SchemaError, r"parameter `bad`: field `.*Bad.when`"):
            Tool(f, "t", "Doc.")

    def test_recursive_types_are_refused(self):
        @dataclass
        class Node:
            children: List["Node"]

        globals()["Node"] = Node
        try:
            def f(node: Node) -> int:
                """Doc."""

            with self.assertRaisesRegex(SchemaError, "refers to itself"):
                Tool(f, "t", "Doc.")
        finally:
            del globals()["Node"]

    def test_names_and_descriptions_are_checked(self):
        def f(x: int) -> int:
            """Doc."""
            return x

        for bad in ["", "Upper", "1x", "a__b", "a b", "x" * 65, "_a"]:
            with self.assertRaisesRegex(SchemaError, "tool name"):
                Tool(f, bad, "Doc.")
        Tool(f, "x" * 64, "Doc.")
        with self.assertRaisesRegex(SchemaError, "no description"):
            Tool(f, "f", "  ")

    def test_varargs_are_refused(self):
        def f(*xs: int) -> int:
            """Doc."""

        with self.assertRaisesRegex(SchemaError, r"parameter `xs`"):
            Tool(f, "t", "Doc.")


class CallTest(unittest.TestCase):
    def setUp(self):
        def shift(point: Point, by: int = 1, ctx: Context = Context()) -> Point:
            """Shift a point."""
            if by < 0:
                raise InvalidInput("`by` must not be negative")
            if by == 13:
                raise Denied("unlucky")
            if by == 99:
                return {1, 2}  # not JSON
            if by == 7:
                raise KeyError("/home/someone/secret")
            return Point(x=point.x + by, y=point.y)

        self.tool = make(shift)
        self.ctx = Context(call_id="c", trace_id="t", principal="p")

    def call(self, arguments):
        return json.loads(self.tool.run(json.dumps(arguments), self.ctx))

    def test_arguments_become_python_values_and_results_json(self):
        self.assertEqual(self.call({"point": {"x": 1}}), {"x": 2, "y": 0})
        self.assertEqual(self.call({"point": {"x": 1, "y": 5}, "by": 2.0}), {"x": 3, "y": 5})

    def test_unknown_fields_are_refused_at_every_level(self):
        with self.assertRaisesRegex(InvalidInput, "unknown field `z`"):
            self.call({"point": {"x": 1, "z": 1}})
        with self.assertRaisesRegex(InvalidInput, "unknown field `extra`"):
            self.call({"point": {"x": 1}, "extra": True})
        # The context parameter is not an argument.
        with self.assertRaisesRegex(InvalidInput, "unknown field `ctx`"):
            self.call({"point": {"x": 1}, "ctx": {}})

    def test_bad_values_name_their_path(self):
        with self.assertRaisesRegex(InvalidInput, r"at /point/x: expected an integer"):
            self.call({"point": {"x": "1"}})
        with self.assertRaisesRegex(InvalidInput, r"at /point/x: expected an integer"):
            self.call({"point": {"x": True}})
        with self.assertRaisesRegex(InvalidInput, "missing field `point`"):
            self.call({})
        with self.assertRaisesRegex(InvalidInput, r"at /point: missing field `x`"):
            self.call({"point": {}})
        with self.assertRaisesRegex(InvalidInput, "not JSON"):
            self.tool.run("{", self.ctx)
        with self.assertRaisesRegex(InvalidInput, "a JSON object"):
            self.tool.run("[]", self.ctx)

    def test_errors_keep_their_kind(self):
        with self.assertRaises(InvalidInput):
            self.call({"point": {"x": 1}, "by": -1})
        with self.assertRaises(Denied):
            self.call({"point": {"x": 1}, "by": 13})
        with self.assertRaisesRegex(Failed, "cannot serialize the result"):
            self.call({"point": {"x": 1}, "by": 99})

    def test_unexpected_exceptions_fail_without_a_traceback(self):
        with self.assertRaises(Failed) as raised:
            self.call({"point": {"x": 1}, "by": 7})
        message = raised.exception.message
        self.assertTrue(message.startswith("unexpected KeyError"), message)
        self.assertNotIn("Traceback", message)
        self.assertNotIn(".py", message)

    def test_error_messages_are_bounded(self):
        def f(x: int) -> int:
            """Doc."""
            raise ValueError("x" * 10_000)

        with self.assertRaises(Failed) as raised:
            make(f, "f").run('{"x": 1}', self.ctx)
        self.assertLessEqual(len(raised.exception.message), airlock_sdk.MAX_ERROR_CHARS)

    def test_literals_and_optionals(self):
        def pick(mode: Literal["a", "b"], limit: Optional[int] = None) -> str:
            """Pick."""
            return f"{mode}:{limit}"

        t = make(pick)
        self.assertEqual(json.loads(t.run('{"mode": "a"}', self.ctx)), "a:None")
        self.assertEqual(json.loads(t.run('{"mode": "b", "limit": null}', self.ctx)), "b:None")
        with self.assertRaisesRegex(InvalidInput, 'expected one of "a", "b"'):
            t.run('{"mode": "c"}', self.ctx)


    def test_numeric_literals_compare_as_json_schema_does(self):
        def level(n: Literal[1, 2], flag: Literal[True] = True) -> int:
            """Level."""
            return n

        t = make(level)
        # The host's check accepts 1.0 for 1; the tool gets the literal.
        self.assertEqual(t.run('{"n": 1.0}', self.ctx), "1")
        with self.assertRaisesRegex(InvalidInput, "expected one of 1, 2"):
            t.run('{"n": 1.5}', self.ctx)
        with self.assertRaisesRegex(InvalidInput, "expected one of 1, 2"):
            t.run('{"n": true}', self.ctx)
        with self.assertRaisesRegex(InvalidInput, "expected one of true"):
            t.run('{"n": 1, "flag": 1}', self.ctx)

    def test_a_dataclass_refusing_its_values_is_invalid_input(self):
        @dataclass
        class Positive:
            x: int

            def __post_init__(self):
                if self.x < 0:
                    raise ValueError("x must be >= 0")
                if self.x == 13:
                    raise Denied("unlucky")

        def f(p: Positive) -> int:
            """Doc."""
            return p.x

        t = make(f)
        with self.assertRaisesRegex(InvalidInput, "at /p: x must be >= 0"):
            t.run('{"p": {"x": -1}}', self.ctx)
        # A tool error raised there keeps its kind.
        with self.assertRaises(Denied):
            t.run('{"p": {"x": 13}}', self.ctx)

    def test_results_hold_the_fields_their_schema_has(self):
        @dataclass
        class Out:
            a: int
            b: int = field(init=False, default=3)

        def f() -> Out:
            """Doc."""
            return Out(a=1)

        t = make(f)
        self.assertNotIn("b", t.output_schema["properties"])
        self.assertEqual(json.loads(t.run("{}", self.ctx)), {"a": 1})


class RegistryTest(unittest.TestCase):
    def test_registration_dispatch_and_duplicates(self):
        saved = dict(airlock_sdk._REGISTRY)
        airlock_sdk._REGISTRY.clear()
        try:
            @airlock_sdk.tool(name="add-one")
            def add_one(n: int) -> int:
                """Add one."""
                return n + 1

            self.assertEqual(add_one(1), 2)  # still a plain function
            self.assertEqual(airlock_sdk.call("add-one", '{"n": 41}'), "42")
            self.assertEqual([d["name"] for d in airlock_sdk.descriptors()], ["add-one"])
            with self.assertRaisesRegex(InvalidInput, "no tool named `nope`"):
                airlock_sdk.call("nope", "{}")
            with self.assertRaisesRegex(SchemaError, "registered twice"):
                airlock_sdk.tool(name="add-one", description="Again.")(add_one.func)
        finally:
            airlock_sdk._REGISTRY.clear()
            airlock_sdk._REGISTRY.update(saved)

    def test_the_check_command_reports_schema_errors_in_one_line(self):
        import io
        import tempfile
        from contextlib import redirect_stderr, redirect_stdout

        saved = dict(airlock_sdk._REGISTRY)
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "bad_plugin_mod.py"), "w") as f:
                f.write(
                    "from airlock_sdk import tool\n"
                    "@tool\n"
                    "def bad(when: set) -> int:\n"
                    "    '''Doc.'''\n"
                )
            sys.path.insert(0, tmp)
            try:
                airlock_sdk._REGISTRY.clear()
                err = io.StringIO()
                with redirect_stderr(err), redirect_stdout(io.StringIO()):
                    code = cli.main(["check", "bad_plugin_mod"])
                self.assertEqual(code, 3)
                self.assertIn("function `bad`", err.getvalue())
                self.assertIn("parameter `when`", err.getvalue())
                self.assertNotIn("Traceback", err.getvalue())
            finally:
                sys.path.remove(tmp)
                airlock_sdk._REGISTRY.clear()
                airlock_sdk._REGISTRY.update(saved)


    def test_the_check_command_holds_the_hosts_limits(self):
        import io
        from contextlib import redirect_stderr, redirect_stdout

        saved = dict(airlock_sdk._REGISTRY)
        try:
            airlock_sdk._REGISTRY.clear()

            def f(x: int) -> int:
                """Doc."""
                return x

            for i in range(cli.MAX_TOOLS + 1):
                airlock_sdk.tool(f, name=f"t{i}")
            err = io.StringIO()
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                code = cli.check("json")  # any importable module
            self.assertEqual(code, 3)
            self.assertIn("257 tools, more than the host's limit of 256", err.getvalue())

            airlock_sdk._REGISTRY.clear()
            wide = Literal[tuple("v" * 40 + str(i) for i in range(8000))]

            def g(x: wide) -> int:  # type: ignore[valid-type]
                """Doc."""
                return 0

            airlock_sdk.tool(g, name="wide")
            err = io.StringIO()
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                code = cli.check("json")
            self.assertEqual(code, 3)
            self.assertIn("tool `wide`: its input schema is", err.getvalue())
        finally:
            airlock_sdk._REGISTRY.clear()
            airlock_sdk._REGISTRY.update(saved)


class WorldTest(unittest.TestCase):
    def world(self, manifest):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "plugin.toml")
            with open(path, "w") as f:
                f.write(manifest)
            return cli.world(path)

    def test_the_world_has_only_the_granted_imports(self):
        world = self.world("[capabilities]\nlog = true\n")
        self.assertIn("import log;", world)
        self.assertNotIn("import workspace;", world)
        world = self.world('[capabilities]\nworkspace = "read-only"\nlog = false\n')
        self.assertIn("import workspace;", world)
        self.assertNotIn("import log;", world)
        world = self.world('[plugin]\nname = "x"\n')
        self.assertIn("export tools;", world)
        self.assertNotIn("    import", world)

    def test_a_python_plugin_cannot_ask_for_wasi_capabilities(self):
        with self.assertRaisesRegex(ValueError, "not `clocks`"):
            self.world("[capabilities]\nclocks = true\n")
        with self.assertRaisesRegex(ValueError, "not `http`"):
            self.world('[capabilities]\nhttp = ["https://api.example.com"]\n')

    def test_a_workspace_scope_and_capabilities_granted_no_are_not_imports(self):
        # Regression: `workspace_scope` (and `clocks = false`, `http = []`)
        # were refused as WASI capabilities, so a Python plugin could not
        # share its workspace by principal or plugin.
        world = self.world(
            '[capabilities]\nworkspace = "read-write"\nworkspace_scope = "plugin"\n'
            "clocks = false\nhttp = []\n"
        )
        self.assertIn("import workspace;", world)
        self.assertNotIn("workspace_scope", world)
        self.assertNotIn("clocks", world)


class WorkspaceTest(unittest.TestCase):
    def setUp(self):
        workspace.reset()

    def test_the_in_memory_workspace_behaves_like_the_host(self):
        workspace.set("a/1", b"one")
        workspace.set_json("a/2", {"n": 2})
        workspace.set("b", b"")
        self.assertEqual(workspace.get("a/1"), b"one")
        self.assertEqual(workspace.get_json("a/2"), {"n": 2})
        # A number JSON cannot hold is refused, nothing stored.
        for number in [float("nan"), float("inf"), -float("inf")]:
            with self.assertRaises(ValueError) as raised:
                workspace.set_json("a/3", {"mean": number})
            self.assertIn("a/3", str(raised.exception))
        self.assertIsNone(workspace.get("a/3"))
        self.assertEqual(workspace.list_keys("a/"), ["a/1", "a/2"])
        self.assertEqual(workspace.list_keys("a/", start_after="a/1"), ["a/2"])
        self.assertTrue(workspace.delete("a/1"))
        self.assertFalse(workspace.delete("a/1"))
        ref = workspace.put_blob(b"data")
        self.assertTrue(ref.startswith("sha256:"))
        self.assertEqual(workspace.get_blob(ref), b"data")
        with self.assertRaises(workspace.WorkspaceError) as raised:
            workspace.set("", b"x")
        self.assertEqual(raised.exception.kind, "invalid")
        # The host's limits: what it refuses, a test here refuses too.
        for refused in [
            lambda: workspace.set("k" * 513, b"x"),
            lambda: workspace.get("k" * 513),
            lambda: workspace.set("big", b"x" * (512 * 1024 + 1)),
            lambda: workspace.put_blob(b"x" * (512 * 1024 + 1)),
            lambda: workspace.get_blob("junk"),
            lambda: workspace.get_blob("sha256:" + "g" * 64),
        ]:
            with self.assertRaises(workspace.WorkspaceError) as raised:
                refused()
            self.assertEqual(raised.exception.kind, "invalid")
        workspace.set("big", b"x" * (512 * 1024))
        self.assertEqual(workspace.get_blob(ref.upper().replace("SHA256:", "sha256:")), b"data")
        self.assertIsNone(workspace.get_blob("sha256:" + "0" * 64))

    def test_values_that_are_not_bytes_are_refused_not_converted(self):
        # bytes(5) is five zero bytes; bytes([1, 2]) two bytes.
        for value in (5, [1, 2], "text", {"n": 1}):
            with self.assertRaises(TypeError):
                workspace.set("k", value)
            with self.assertRaises(TypeError):
                workspace.put_blob(value)
        self.assertIsNone(workspace.get("k"))
        workspace.set("k", bytearray(b"ok"))
        self.assertEqual(workspace.get("k"), b"ok")


class IntegerRangeTest(unittest.TestCase):
    def test_integers_the_host_would_round_are_refused_both_ways(self):
        from airlock_sdk import Context, Failed, Tool

        def digits(n: int) -> str:
            """Digits."""
            return str(n)

        def big() -> int:
            """Big."""
            return 2**70

        t = Tool(digits, "digits", "Digits.")
        n = t.input_schema["properties"]["n"]
        self.assertEqual((n["minimum"], n["maximum"]), (-(2**63), 2**64 - 1))
        ctx = Context(principal="p", call_id="c", trace_id="t")
        self.assertEqual(t.run('{"n": 18446744073709551615}', ctx), '"18446744073709551615"')
        with self.assertRaises(Failed) as raised:
            Tool(big, "big", "Big.").run("{}", ctx)
        self.assertIn("outside", str(raised.exception))


class ContextParameterTest(unittest.TestCase):
    def test_an_annotated_context_is_the_hosts_and_never_a_callers(self):
        from typing import Annotated, Optional

        from airlock_sdk import Context, SchemaError, Tool

        def who(x: int, ctx: Annotated[Context, "who calls"] = Context()) -> str:
            """Who."""
            return ctx.principal

        t = Tool(who, "who", "Who.")
        self.assertNotIn("ctx", t.input_schema["properties"])
        host = Context(principal="agent-1", call_id="c", trace_id="t")
        self.assertEqual(t.run('{"x": 1}', host), '"agent-1"')
        from airlock_sdk import InvalidInput

        with self.assertRaises(InvalidInput):
            t.run('{"x": 1, "ctx": {"principal": "admin"}}', host)

        def nested(c: Optional[Context] = None) -> str:
            """Nested."""
            return ""

        def positional(ctx: Context, /) -> str:
            """Positional."""
            return ""

        for func in (nested, positional):
            with self.assertRaises(SchemaError):
                Tool(func, func.__name__, "Doc.")


if __name__ == "__main__":
    unittest.main()
