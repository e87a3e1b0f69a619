"""Reading metrics and rates out of samples."""

import unittest

from common import metric_sum, sustained_rate


class MetricSum(unittest.TestCase):
    TEXT = """# HELP relais_worker_retries_scheduled_total Messages moved to a retry tier.
# TYPE relais_worker_retries_scheduled_total counter
relais_worker_retries_scheduled_total{reason="circuit_open",upstream="b"} 120
relais_worker_retries_scheduled_total{reason="retries_exhausted",upstream="b"} 30
relais_worker_retries_scheduled_total{reason="circuit_open",upstream="bb"} 7
relais_worker_retries_scheduled_total_created{reason="circuit_open",upstream="b"} 1.7e9
relais_worker_dead_letters_total 4 # {trace_id="abc"} 1 1.7e9
"""

    def test_samples_with_every_wanted_label_add_up(self):
        self.assertEqual(metric_sum(self.TEXT, "relais_worker_retries_scheduled_total", upstream="b"), 150)
        self.assertEqual(metric_sum(self.TEXT, "relais_worker_retries_scheduled_total"), 157)

    def test_an_exemplar_is_not_read_as_the_value(self):
        self.assertEqual(metric_sum(self.TEXT, "relais_worker_dead_letters_total"), 4)

    def test_a_missing_metric_is_zero(self):
        self.assertEqual(metric_sum(self.TEXT, "relais_worker_nothing_total"), 0)


class SustainedRate(unittest.TestCase):
    def test_the_rate_between_ten_and_ninety_per_cent_leaves_out_a_slow_start_and_end(self):
        samples = [(0.0, 0), (5.0, 10), (6.0, 100), (7.0, 200), (8.0, 300), (9.0, 400), (10.0, 500),
                   (11.0, 600), (12.0, 700), (13.0, 800), (14.0, 900), (30.0, 1000)]
        self.assertEqual(sustained_rate(samples, 1000), 100.0)


if __name__ == "__main__":
    unittest.main()
