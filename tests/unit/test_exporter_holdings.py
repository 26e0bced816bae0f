"""Which addresses a host claims each interval: every mapping it saw, for the span it saw it."""

from exporter.holdings import Holdings, Span

S = 1_000_000_000  # one second in ns


def test_a_mapping_held_all_along_heartbeats_every_interval_from_the_interval_start():
    holdings = Holdings()
    holdings.observe(0, {("10.0.0.1", "web", None)})
    holdings.observe(30 * S, {("10.0.0.1", "web", None)})
    holdings.observe(60 * S, {("10.0.0.1", "web", None)})
    assert holdings.report(0, 60 * S) == [Span("10.0.0.1", "web", 0, 60 * S)]
    holdings.observe(120 * S, {("10.0.0.1", "web", None)})
    assert holdings.report(60 * S, 120 * S) == [Span("10.0.0.1", "web", 60 * S, 120 * S)]


def test_a_mapping_added_mid_interval_is_claimed_from_the_poll_that_first_saw_it():
    holdings = Holdings()
    holdings.observe(0, set())
    holdings.observe(17 * S, {("10.0.0.1", "web", None)})
    holdings.observe(60 * S, {("10.0.0.1", "web", None)})
    assert holdings.report(0, 60 * S) == [Span("10.0.0.1", "web", 17 * S, 60 * S)]


def test_a_removed_mapping_ends_at_the_last_poll_that_saw_it_and_then_stops():
    holdings = Holdings()
    holdings.observe(0, {("10.0.0.1", "web", None)})
    holdings.observe(20 * S, {("10.0.0.1", "web", None)})
    holdings.observe(21 * S, {("10.0.0.1", "api", None)})  # reassigned between two polls
    holdings.observe(60 * S, {("10.0.0.1", "api", None)})
    assert holdings.report(0, 60 * S) == [
        Span("10.0.0.1", "api", 21 * S, 60 * S), Span("10.0.0.1", "web", 0, 20 * S),
    ]
    holdings.observe(120 * S, set())
    assert holdings.report(60 * S, 120 * S) == []  # gone at the first poll after the report


def test_a_mapping_removed_right_after_a_report_gets_nothing_more():
    holdings = Holdings()
    holdings.observe(0, {("10.0.0.1", "web", None)})
    holdings.observe(60 * S, {("10.0.0.1", "web", None)})
    assert len(holdings.report(0, 60 * S)) == 1
    holdings.observe(61 * S, set())
    holdings.observe(120 * S, set())
    assert holdings.report(60 * S, 120 * S) == []


def test_a_mapping_that_comes_back_gets_two_spans():
    holdings = Holdings()
    holdings.observe(0, {("10.0.0.1", "web", None)})
    holdings.observe(10 * S, {("10.0.0.1", "web", None)})
    holdings.observe(11 * S, set())
    holdings.observe(30 * S, {("10.0.0.1", "web", None)})
    holdings.observe(60 * S, {("10.0.0.1", "web", None)})
    assert holdings.report(0, 60 * S) == [
        Span("10.0.0.1", "web", 0, 10 * S), Span("10.0.0.1", "web", 30 * S, 60 * S),
    ]
