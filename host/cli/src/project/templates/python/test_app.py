"""Unit tests of the `{{name}}` plugin's tools, run natively:
`python3 -m unittest` (the SDK is in vendor/)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))

import airlock_sdk  # noqa: E402
import app  # noqa: E402


class GreetTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(app.greet(" Ada ").greeting, "Hello, Ada!")

    def test_refuses_an_empty_name(self):
        with self.assertRaises(airlock_sdk.InvalidInput):
            app.greet(" ")

    def test_calls_go_through_json_as_in_the_host(self):
        out = airlock_sdk.call("greet", json.dumps({"name": "Ada"}))
        self.assertEqual(json.loads(out), {"greeting": "Hello, Ada!"})
        with self.assertRaises(airlock_sdk.InvalidInput):
            airlock_sdk.call("greet", json.dumps({"name": "Ada", "extra": 1}))


if __name__ == "__main__":
    unittest.main()
