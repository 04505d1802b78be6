"""Progress in a log: a line per tenth of the work or per 30 s, never a redrawn bar."""

import io

from csrs.progress import LineProgress


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end():
    stream = io.StringIO()
    bar = LineProgress(total=100, desc="certify", unit="ex", stream=stream)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("certify: 10/100 ex (10%)")
    assert lines[-1].startswith("certify: 100/100 ex (100%)")
    assert "\r" not in stream.getvalue()


def test_a_slow_run_gets_a_line_every_interval_and_a_resumed_one_counts_from_its_start():
    stream = io.StringIO()
    bar = LineProgress(total=1000, initial=400, desc="d", stream=stream, seconds=0.0)
    bar.update(1)
    bar.update(1)
    assert stream.getvalue().splitlines()[-1].startswith("d: 402/1000 it (40%)")
    assert len(stream.getvalue().splitlines()) == 2


def test_without_a_fraction_only_the_end_is_written():
    stream = io.StringIO()
    bar = LineProgress(range(50), desc="epoch 1/3", stream=stream, fraction=None)
    bar.set_postfix({"loss": "0.300"})
    assert list(bar) == list(range(50))
    assert stream.getvalue().splitlines() == [stream.getvalue().strip()]
    assert stream.getvalue().startswith("epoch 1/3: 50/50 it (100%)")
    assert "[loss=0.300]" in stream.getvalue()


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = LineProgress(total=10, stream=stream, disable=True)
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""
