"""Unit tests of the csv-stats tools, natively: `python3 -m unittest` in
plugins/csv-stats (the SDK is sdk/python)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../sdk/python"))

import airlock_sdk  # noqa: E402
from airlock_sdk import InvalidInput, workspace  # noqa: E402

import app  # noqa: E402

TABLE = "city,population,area\nOslo,709000,454\nBergen,291000,465\nTromso,,2521\n"


class SummarizeTest(unittest.TestCase):
    def test_numbers_and_text(self):
        summary = app.summarize(csv=TABLE)
        self.assertEqual(summary.rows, 3)
        city, population, area = summary.columns
        self.assertEqual((city.kind, city.distinct), ("text", 3))
        self.assertEqual((population.kind, population.count, population.missing), ("number", 2, 1))
        self.assertEqual(population.mean, 500000.0)
        self.assertEqual((area.min, area.max), (454.0, 2521.0))

    def test_selected_columns_and_delimiters(self):
        summary = app.summarize(csv=TABLE.replace(",", ";"), delimiter=";", columns=["area"])
        self.assertEqual([c.name for c in summary.columns], ["area"])

    def test_bad_tables_are_invalid_input(self):
        for text, why in [
            ("", "empty"),
            ("a,b\n1\n", "row 2 has 1 cells"),
        ]:
            with self.assertRaisesRegex(InvalidInput, why):
                app.summarize(csv=text)
        with self.assertRaisesRegex(InvalidInput, "no column `nope`"):
            app.summarize(csv=TABLE, columns=["nope"])
        with self.assertRaisesRegex(InvalidInput, "either"):
            app.summarize()

    def test_through_json_as_the_host_calls_it(self):
        out = json.loads(airlock_sdk.call("summarize", json.dumps({"csv": "n\n1\n3\n"})))
        self.assertEqual(out["columns"][0]["mean"], 2.0)
        with self.assertRaisesRegex(InvalidInput, "unknown field `sheet`"):
            airlock_sdk.call("summarize", json.dumps({"csv": "n\n1\n", "sheet": 1}))


class SaveTest(unittest.TestCase):
    def setUp(self):
        workspace.reset()

    def test_saved_tables_are_summarized_by_name(self):
        saved = app.save(name="cities", csv=TABLE)
        self.assertEqual(saved.rows, 3)
        self.assertTrue(saved.ref.startswith("sha256:"))
        self.assertEqual(app.summarize(saved="cities").rows, 3)
        with self.assertRaisesRegex(InvalidInput, "no saved table `towns`"):
            app.summarize(saved="towns")


if __name__ == "__main__":
    unittest.main()
