"""Reading metrics and rates out of samples, and the checks before a service starts."""

import socket
import unittest

import common
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


class ListenAddresses(unittest.TestCase):
    def test_only_the_addresses_a_service_listens_on_are_checked(self):
        env = {"RELAIS_SIM_LISTEN": "127.0.0.1:18090", "RELAIS_ADMIN_ADDR": "127.0.0.1:19104",
               "RELAIS_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "RELAIS_WORKER_ID": "w-1", "PATH": "/usr/bin"}
        self.assertEqual(common.listen_addresses(env), ["127.0.0.1:18090", "127.0.0.1:19104"])

    def test_a_taken_address_stops_the_bench_and_a_free_one_does_not(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            with self.assertRaises(SystemExit) as stopped:
                common.ensure_free(address, "upstream-sim")
            self.assertIn("taken by another process", str(stopped.exception))
        # Closed: nothing answers there any more.
        common.ensure_free(address, "upstream-sim")
