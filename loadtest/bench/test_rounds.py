"""Unit tests of the comparison rules (python3 -m unittest discover loadtest/bench)."""

import unittest

import rounds


class Alternate(unittest.TestCase):
    def test_sides_take_turns_and_a_skipped_side_is_not_asked_again(self):
        calls = []

        def side(name, skip=False):
            def run(index):
                calls.append((name, index))
                return {"skipped": "no Java"} if skip else {"rate": index}
            return run
        results = rounds.alternate(3, [("relais", side("relais")), ("peer", side("peer", skip=True)),
                                       ("other", side("other"))])
        self.assertEqual(calls, [("relais", 0), ("peer", 0), ("other", 0), ("relais", 1), ("other", 1),
                                 ("relais", 2), ("other", 2)])
        self.assertEqual([result["rate"] for result in results["relais"]], [0, 1, 2])
        self.assertEqual(results["peer"], [{"skipped": "no Java"}])


class Spread(unittest.TestCase):
    def test_median_and_range_of_the_rounds_that_measured(self):
        results = [{"cpu": {"us": 80.0}}, {"cpu": {"us": 100.0}}, {"cpu": {}}, {"cpu": {"us": 90.0}}]
        summary = rounds.spread(results, "cpu.us")
        self.assertEqual((summary["median"], summary["min"], summary["max"], summary["rounds"]), (90.0, 80.0, 100.0, 3))
        self.assertIsNone(rounds.spread([{"skipped": "x"}], "cpu.us"))

    def test_paired_ratios_divide_each_round_by_the_run_beside_it(self):
        ours = [{"cpu": 100.0}, {"cpu": 300.0}, {"cpu": 50.0}, {"cpu": 80.0}]
        theirs = [{"cpu": 50.0}, {"cpu": 100.0}, {"cpu": 0}, {}]
        paired = rounds.paired_ratio(ours, "cpu", theirs, "cpu")
        # The third pair has no divisor and the fourth no figure: two rounds count.
        self.assertEqual(paired["values"], [2.0, 3.0])
        self.assertEqual((paired["median"], paired["min"], paired["max"], paired["rounds"]), (2.5, 2.0, 3.0, 2))
        self.assertIsNone(rounds.paired_ratio(ours, "cpu", [], "cpu"))

    def test_median_round_keeps_a_rounds_figures_together(self):
        results = [{"rate": 3, "id": "a"}, {"rate": 1, "id": "b"}, {"rate": 2, "id": "c"}, {"rate": 4, "id": "d"}]
        self.assertEqual(rounds.median_round(results, "rate")["id"], "c")


class Compare(unittest.TestCase):
    @staticmethod
    def summary(*values):
        return rounds.spread([{"v": value} for value in values], "v")

    def test_overlapping_spreads_show_no_difference_whatever_the_medians(self):
        comparison = rounds.compare(self.summary(185.4, 85.0, 120.0), self.summary(92.7, 370.7, 100.0),
                                    higher_is_better=False)
        self.assertTrue(comparison["overlap"])
        self.assertIn("no difference shown", comparison["verdict"])
        self.assertAlmostEqual(comparison["ratio"], 1.2)

    def test_separate_spreads_name_the_side_ahead(self):
        faster = rounds.compare(self.summary(8000, 8200, 8100), self.summary(7000, 7300, 7200))
        self.assertFalse(faster["overlap"])
        self.assertEqual(faster["verdict"], "Relais ahead in every round")
        lower_latency_is_better = rounds.compare(self.summary(80, 85, 90), self.summary(30, 35, 40),
                                                 higher_is_better=False)
        self.assertEqual(lower_latency_is_better["verdict"], "the peer ahead in every round")

    def test_one_round_claims_nothing(self):
        single = rounds.compare(self.summary(8000), self.summary(4000))
        self.assertAlmostEqual(single["ratio"], 2.0)
        self.assertIn("no claim", single["verdict"])

    def test_a_missing_side_is_no_comparison(self):
        self.assertIsNone(rounds.compare(self.summary(1, 2), None))

    def test_cells(self):
        self.assertEqual(rounds.cell(self.summary(8008, 8147, 8209)), "8,147 (8,008–8,209)")
        self.assertEqual(rounds.cell(self.summary(2.0), digits=1), "2.0")
        self.assertEqual(rounds.cell(None), "not measured")


if __name__ == "__main__":
    unittest.main()
