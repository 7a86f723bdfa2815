"""The priorities' rule: which list each take tries first, stated and checked."""

from collections import Counter

from inferfleet import keys
from inferfleet.take import TAKE_CYCLE, take_order


def test_of_every_ten_takes_eight_begin_with_high_and_one_with_each_lower_level() -> None:
    firsts = Counter(take_order(n)[0] for n in range(10 * len(TAKE_CYCLE)))
    assert firsts == {"high": 80, "normal": 10, "low": 10}
    for n in range(len(TAKE_CYCLE)):
        order = take_order(n)
        assert sorted(order) == sorted(keys.PRIORITIES)
        rest = [level for level in keys.PRIORITIES if level != order[0]]
        assert list(order[1:]) == rest  # then from the highest down


def test_each_list_of_a_queue_names_its_priority() -> None:
    queue = keys.model_queue("digits.v2")  # a model name may hold dots, never a colon
    assert keys.queue_lists(queue) == ["inferfleet.digits.v2:high", "inferfleet.digits.v2",
                                       "inferfleet.digits.v2:low"]
    assert [keys.list_priority(key) for key in keys.queue_lists(queue)] == \
        [(queue, level) for level in keys.PRIORITIES]
    kombus = "inferfleet.digits\x06\x169"  # kombu's own priority lists are normal's
    assert keys.list_priority(kombus) == (kombus, "normal")
    assert keys.list_priority("elsewhere:high") == ("elsewhere:high", "normal")
