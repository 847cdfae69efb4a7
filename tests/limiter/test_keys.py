"""The key layout: one hash tag per decision, so Redis Cluster can run each decision atomically."""

from __future__ import annotations

from redis.crc import key_slot

from gateway.limiter import keys


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_upstream_keys_share_the_model_slot_whoever_the_user() -> None:
    model = keys.model_key("rl", "gemini-3.6-flash")
    for user in ["alice", "bob", "x}y", "{evil}", "a:b", "%7D"]:
        for route in ["generate", "youtube-analyze"]:
            assert slot(keys.upstream_key("rl", "gemini-3.6-flash", user, route)) == slot(model)


def test_admission_keys_spread_by_user() -> None:
    slots = {slot(keys.admission_key("rl", f"user-{i}", "generate")) for i in range(200)}
    assert len(slots) > 150
    # Every route of one user lives in that user's slot.
    assert slot(keys.admission_key("rl", "u", "generate")) == slot(
        keys.admission_key("rl", "u", "thumbnail-heatmap")
    )


def test_caller_text_cannot_close_the_tag_or_collide() -> None:
    tricky = keys.admission_key("rl", "a}:a:generate", "generate")
    assert tricky.count("{") == 1 and tricky.count("}") == 1
    names = {
        keys.admission_key("rl", user, route)
        for user, route in [("a:a", "b"), ("a", "a:b"), ("a%3Aa", "b"), ("a}", "b"), ("a%7D", "b")]
    }
    assert len(names) == 5
    assert keys.admission_key("rl", "plain-user_1", "generate") == "{rl:u:plain-user_1}:a:generate"
