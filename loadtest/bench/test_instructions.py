"""Reading callgrind's counts: totals, functions with their inlined parts, inclusive counts."""

import tempfile
import unittest

from instructions import function_instructions, inclusive_of, per_message, total_instructions

ANNOTATED = """--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,216,204,863 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
149,214,518 (12.27%)  ./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
 14,268,614 ( 1.17%)  /root/.cargo/registry/src/prost-0.14.6/src/encoding/varint.rs:prost::encoding::varint::encode_varint [/work/main/target/release/ingest-worker]
  4,601,770 ( 0.38%)  /rustc/abc/library/alloc/src/vec/mod.rs:prost::encoding::varint::encode_varint [/work/main/target/release/ingest-worker]
  2,000,000 ( 0.16%)  /rustc/abc/library/std/src/sys/thread.rs:tokio::runtime::scheduler::multi_thread::worker::run
  1,900,000 ( 0.15%)  /root/.cargo/registry/src/tokio-1.54.1/src/runtime/scheduler/multi_thread/worker.rs:tokio::runtime::scheduler::multi_thread::worker::run [/work/main/target/release/ingest-worker]
"""


class CallgrindCounts(unittest.TestCase):
    def test_a_functions_inlined_parts_are_added_to_it(self):
        functions = function_instructions(ANNOTATED)
        self.assertEqual(functions["prost::encoding::varint::encode_varint"], 14_268_614 + 4_601_770)
        self.assertEqual(functions["__memcpy_avx_unaligned_erms"], 149_214_518)
        self.assertNotIn("PROGRAM TOTALS", functions)

    def test_an_inclusive_count_is_the_largest_listed(self):
        self.assertEqual(inclusive_of(ANNOTATED, "tokio::runtime::scheduler::multi_thread::worker::run"), 2_000_000)
        self.assertEqual(inclusive_of(ANNOTATED, "rd_kafka_broker_thread_main"), 0)

    def test_the_total_is_read_from_the_output_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".callgrind") as output:
            output.write("events: Ir\nfl=(1) a.c\nfn=(1) main\n3 10\n\nsummary: 420957993\ntotals: 420957993\n")
            output.flush()
            self.assertEqual(total_instructions(output.name), 420_957_993)

    def test_per_message_cancels_what_both_runs_share(self):
        self.assertEqual(per_message(420_957_993, 1_216_204_863, (2_000, 6_000)), 198_811.7175)


if __name__ == "__main__":
    unittest.main()
