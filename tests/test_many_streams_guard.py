"""A guard against regressions of the overhead per event with many concurrent streams (bench/many_streams.py).

Absolute times mean nothing on a shared machine, so everything is judged against figures from this run:
hayhooks' `async_streaming_generator` over the same yielding generator, and our own overhead at 100
streams. With generous margins over what the reference run showed (arun about 0.3 times hayhooks' overhead at
1,000 streams, astream about 0.4 times, and astream at 1,000 streams within 2.5 times itself at 100 under the
default collector), it fails on a real regression, not on noise.
"""

from __future__ import annotations

import pytest
from bench_kit import import_bench

from pipeline_ex.llm.providers import PROVIDERS

many_streams = import_bench("many_streams")

ARUN_OF_HAYHOOKS = 0.6
ASTREAM_OF_HAYHOOKS = 0.8
GROWTH_100_TO_1000 = 4.0


@pytest.mark.live  # a generator built in-process, registered as a provider
def test_overhead_with_many_streams_stays_well_below_hayhooks_and_does_not_run_away() -> None:
    pytest.importorskip("hayhooks")
    wanted = {many_streams.ARUN, many_streams.ASTREAM, many_streams.HAYHOOKS}
    try:
        rows = many_streams.measure((100, 1_000), 3, only=wanted)
    finally:
        del PROVIDERS[many_streams.PROVIDER]
    small, large = rows[100], rows[1_000]
    print({count: {name: round(value, 2) for name, value in row.items()} for count, row in rows.items()})
    hayhooks = large[many_streams.HAYHOOKS]
    assert large[many_streams.ARUN] <= ARUN_OF_HAYHOOKS * hayhooks
    assert large[many_streams.ASTREAM] <= ASTREAM_OF_HAYHOOKS * hayhooks
    # +2 µs: at 100 streams the overhead is a few µs, where one noisy round moves the ratio most
    assert large[many_streams.ASTREAM] <= GROWTH_100_TO_1000 * small[many_streams.ASTREAM] + 2.0
