"""When a channel holds its next take for more messages (`take.TakeLinger`), on explicit
clocks: dense streams of single-sample jobs wait, sparse ones and full queues never."""

from hypothesis import given
from hypothesis import strategies as st

from inferfleet.take import TakeLinger

MOST = 16


def _stream(linger: TakeLinger, *, every_s: float, takes: int, count: int = 1,
            start: float = 100.0) -> float:
    now = start
    for _ in range(takes):
        now += every_s
        linger.took(count, most=MOST, now=now)
    return now


def test_a_dense_stream_holds_the_take_after_one_that_emptied_the_queue() -> None:
    linger = TakeLinger(most_s=0.003, expected=1.0)
    _stream(linger, every_s=0.0005, takes=200)  # 2,000 messages a second, for 0.1 s
    assert 1_500 < linger.rate <= 2_000
    assert linger.next_wait_s() == 0.003
    assert linger.next_wait_s() == 0.0  # once per take: after the wait the take goes out


def test_sparse_jobs_never_wait() -> None:
    """One job in flight, or a few hundred a second: the next take goes out at once."""
    for every_s in (0.004, 0.005, 0.1, 5.0):  # 250 messages a second to this channel, or fewer
        linger = TakeLinger(most_s=0.003, expected=1.0)
        now = 0.0
        for _ in range(50):
            now = _stream(linger, every_s=every_s, takes=1, start=now)
            assert linger.next_wait_s() == 0.0, every_s


def test_a_take_that_filled_up_or_came_back_empty_is_never_held() -> None:
    linger = TakeLinger(most_s=0.003, expected=1.0)
    now = _stream(linger, every_s=0.0005, takes=200)
    linger.took(MOST, most=MOST, now=now + 0.0005)  # the queue may hold more: take again
    assert linger.next_wait_s() == 0.0
    linger.took(0, most=MOST, now=now + 0.2)  # the wait on the bells timed out
    assert linger.next_wait_s() == 0.0


def test_after_a_quiet_spell_the_first_jobs_are_taken_at_once() -> None:
    linger = TakeLinger(most_s=0.003, expected=1.0)
    now = _stream(linger, every_s=0.0005, takes=200)
    assert linger.next_wait_s() == 0.003
    linger.took(1, most=MOST, now=now + 2.0)  # two seconds without a message
    assert linger.next_wait_s() == 0.0
    _stream(linger, every_s=0.01, takes=3, start=now + 2.0)
    assert linger.next_wait_s() == 0.0


@given(st.lists(st.tuples(st.floats(1e-5, 10.0), st.integers(0, MOST)), max_size=60))
def test_a_take_is_held_at_most_most_s_and_only_after_one_that_emptied_the_queue(
        takes: list[tuple[float, int]]) -> None:
    linger = TakeLinger(most_s=0.003, expected=1.0)
    now = 0.0
    for gap, count in takes:
        now += gap
        linger.took(count, most=MOST, now=now)
        wait = linger.next_wait_s()
        assert wait in (0.0, 0.003)
        if wait:
            assert 0 < count < MOST
            assert linger.rate * 0.003 >= 1.0
