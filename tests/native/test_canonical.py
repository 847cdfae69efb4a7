"""RFC 8785 canonical JSON: equal data hashes equal however it is spelled, anything else differs,
the output matches an independent reference, and every ambiguous input is refused clearly."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from typing import Any, TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import native

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None
Path: TypeAlias = tuple[int | str, ...]

# Integers beyond 2**53 are not exact doubles; JCS (like JavaScript) rounds them, so two
# different big integers may legitimately share a canonical form. Generate exact ones only.
MAX_SAFE_INTEGER = 2**53

# Characters that stress escaping and UTF-16 ordering (controls, quotes, U+2028, the RFC's
# sort-order sample, astral characters) mixed with arbitrary non-surrogate text.
_TRICKY = [
    "a",
    "b",
    "\x00",
    "\x1f",
    "\x7f",
    '"',
    "\\",
    "/",
    "\r",
    "\u0080",
    "ö",
    "€",
    "\u2028",
    "\ufb33",
    "\uffff",
    "😀",
    "\U0010ffff",
]
_chars = st.sampled_from(_TRICKY) | st.characters(exclude_categories=["Cs"])
texts = st.text(_chars, max_size=12)
# Keys from a few characters often share prefixes and then differ exactly where UTF-16 and
# code point order disagree (U+E000..U+FFFF against characters above U+FFFF).
_KEY_CHARS = ["a", "\r", "é", "€", "\ufb33", "\uffff", "😀", "\U0010ffff", '"']
keys = st.text(st.sampled_from(_KEY_CHARS), max_size=3) | st.text(_chars, max_size=4)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
EMPTY_CONTAINERS: list[Json] = [[], {}]
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)

# ---------------------------------------------------------------------------------------------
# Spelling one value many ways


def _ws(rnd: random.Random) -> str:
    return rnd.choice(["", "", " ", "\n  ", "\t", "\r\n "])


def _spell_int(value: int, rnd: random.Random) -> str:
    digits = str(abs(value))
    sign = "-" if value < 0 else ""
    forms = [digits, f"{digits}.0", f"{digits}e0", f"{digits}E+0", f"{digits}.000e-0"]
    if value != 0:
        forms += [f"{digits}0e-1", f"{digits[0]}.{digits[1:] or '0'}e{len(digits) - 1}"]
    return sign + rnd.choice(forms)


def _spell_float(value: float, rnd: random.Random) -> str:
    if value == 0:  # 0.0 and -0.0 are one number in JCS
        return rnd.choice(["0", "-0", "0.0", "-0.0", "0e7", "-0E-3"])
    if value.is_integer() and abs(value) < MAX_SAFE_INTEGER:
        return _spell_int(int(value), rnd)
    # Shortest round-trip digits, or 17+ significant digits: each parses back to `value`.
    return rnd.choice([repr(value), f"{value:.17g}", f"{value:.17e}", f"{value:.20E}"])


def _spell_char(char: str, rnd: random.Random) -> str:
    short = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "/": "\\/",
    }
    code = ord(char)
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        escaped = f"\\u{high:04x}\\u{low:04X}"
    else:
        escaped = rnd.choice([f"\\u{code:04x}", f"\\u{code:04X}"])
    options = [escaped]
    if char in short:
        options.append(short[char])
    if code >= 0x20 and char not in '"\\':
        options.append(char)
    return rnd.choice(options)


def _spell_str(value: str, rnd: random.Random) -> str:
    return '"' + "".join(_spell_char(c, rnd) for c in value) + '"'


def spell(value: Json, rnd: random.Random) -> str:
    """JSON text for `value` with random meaning-preserving choices: member order, whitespace,
    number spelling (`1`, `1.0`, `1e0`, `10e-1`, ...) and string escapes."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return _spell_int(value, rnd)
    if isinstance(value, float):
        return _spell_float(value, rnd)
    if isinstance(value, str):
        return _spell_str(value, rnd)
    if isinstance(value, list):
        body = ",".join(_ws(rnd) + spell(v, rnd) + _ws(rnd) for v in value)
        return "[" + (body or _ws(rnd)) + "]"
    members = list(value.items())
    rnd.shuffle(members)
    return spell_object(members, rnd)


def spell_object(members: list[tuple[str, Json]], rnd: random.Random) -> str:
    """An object with `members` in the given order (repeated names included)."""
    body = ",".join(
        f"{_ws(rnd)}{_spell_str(k, rnd)}{_ws(rnd)}:{_ws(rnd)}{spell(v, rnd)}{_ws(rnd)}"
        for k, v in members
    )
    return "{" + (body or _ws(rnd)) + "}"


def spellings(value: Json, rnd: random.Random) -> list[str]:
    """Several texts for one value: the stdlib's usual outputs and a few random spellings."""
    return [
        json.dumps(value),
        json.dumps(value, ensure_ascii=False, indent=2),
        json.dumps(value, sort_keys=True, separators=(",", ":")),
        *(spell(value, rnd) for _ in range(3)),
    ]


# ---------------------------------------------------------------------------------------------
# An independent reference: the stdlib parser plus RFC 8785's serialization rules


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def ecmascript_number(value: float) -> str:
    """ECMAScript Number::toString, laid out from the shortest round-trip digits of `repr`."""
    if not math.isfinite(value):
        raise ValueError("not finite")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    significant = all_digits.lstrip("0")
    # `value` = 0.<digits> × 10**n
    n = len(whole) + int(exponent or 0) - (len(all_digits) - len(significant))
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _reference_serialize(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return ecmascript_number(float(value))
    if isinstance(value, str):
        return (
            '"'
            + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " else c) for c in value)
            + '"'
        )
    if isinstance(value, list):
        return "[" + ",".join(_reference_serialize(v) for v in value) + "]"
    members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
    return (
        "{"
        + ",".join(f"{_reference_serialize(k)}:{_reference_serialize(v)}" for k, v in members)
        + "}"
    )


def reference_canonical(text: str) -> str:
    """RFC 8785 form of `text`, or `ValueError` for anything JCS cannot represent."""
    value = json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constants)
    try:
        canonical = _reference_serialize(value)
    except OverflowError as exc:  # an integer too large for a double
        raise ValueError(str(exc)) from None
    canonical.encode("utf-8")  # a lone surrogate escape raises UnicodeEncodeError here
    return canonical


def outcome(convert: Any, text: str) -> str | None:
    """The canonical form, or None when `convert` refuses the text with ValueError."""
    try:
        result: str = convert(text)
    except ValueError:
        return None
    return result


# ---------------------------------------------------------------------------------------------
# Properties


@settings(deadline=None)
@given(json_values, st.randoms(use_true_random=False))
def test_hash_ignores_member_order_whitespace_and_spelling(value: Json, rnd: random.Random) -> None:
    digests = {native.canonical_json_sha256(text) for text in spellings(value, rnd)}
    assert len(digests) == 1


def _leaves(value: Json, path: Path = ()) -> list[tuple[Path, Json]]:
    """Every scalar and every empty container, with the path to it."""
    if isinstance(value, list) and value:
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    return [(path, value)]


def _replaced(value: Json, path: Path, new: Json) -> Json:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list) and isinstance(head, int):
        return [_replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]
    if isinstance(value, dict) and isinstance(head, str):
        return {k: _replaced(v, rest, new) if k == head else v for k, v in value.items()}
    raise AssertionError(f"bad path {path}")


def _identity(leaf: Json) -> tuple[Any, ...]:
    """What JCS keeps of a leaf: numbers are doubles (1 == 1.0, -0.0 == 0.0), bools are not."""
    if isinstance(leaf, bool) or leaf is None:
        return ("literal", leaf)
    if isinstance(leaf, int | float):
        return ("number", float(leaf))
    if isinstance(leaf, str):
        return ("string", leaf)
    return (type(leaf).__name__, len(leaf))


@settings(deadline=None)
@given(json_values, st.data())
def test_hash_changes_when_any_leaf_changes(value: Json, data: st.DataObject) -> None:
    path, leaf = data.draw(st.sampled_from(_leaves(value)), label="leaf")
    old = _identity(leaf)
    new: Json = data.draw(
        (leaves | st.sampled_from(EMPTY_CONTAINERS)).filter(
            lambda candidate: _identity(candidate) != old
        ),
        label="new leaf",
    )
    changed = _replaced(value, path, new)
    assert native.canonical_json_sha256(json.dumps(changed)) != native.canonical_json_sha256(
        json.dumps(value)
    )


@settings(deadline=None)
@given(json_values, st.randoms(use_true_random=False))
def test_matches_independent_reference(value: Json, rnd: random.Random) -> None:
    for text in spellings(value, rnd):
        assert native.canonical_json(text) == reference_canonical(text)


# Single characters that make or break JSON, plus half of a surrogate pair.
_NEAR_JSON = [*'{}[],:"\\/ 0123456789.-+eEuntrfalsNIDd\x00\n\u00e9\ufeff', "\\ud83d"]


@settings(deadline=None, max_examples=300)
@given(json_values, st.randoms(use_true_random=False), st.data())
def test_accepts_and_rejects_exactly_what_the_reference_does(
    value: Json, rnd: random.Random, data: st.DataObject
) -> None:
    """Damaged JSON (a character dropped, inserted or doubled) is accepted exactly when the
    reference accepts it, and then canonicalized the same way."""
    text = spell(value, rnd)
    at = data.draw(st.integers(0, len(text)), label="at")
    edit = data.draw(st.sampled_from(["drop", "insert", "double"]), label="edit")
    if edit == "drop":
        text = text[:at] + text[at + 1 :]
    elif edit == "insert":
        text = text[:at] + data.draw(st.sampled_from(_NEAR_JSON), label="char") + text[at:]
    else:
        text = text[:at] + text[at:] + text[at:][:1]
    assert outcome(native.canonical_json, text) == outcome(reference_canonical, text)


@settings(deadline=None)
@given(
    st.dictionaries(keys, json_values, min_size=1, max_size=5),
    json_values,
    st.randoms(use_true_random=False),
    st.data(),
)
def test_repeated_member_names_are_rejected_however_escaped(
    members: dict[str, Json], extra: Json, rnd: random.Random, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(members)), label="repeated name")
    spelled = [*members.items(), (name, extra)]
    rnd.shuffle(spelled)
    text = "[" + spell_object(spelled, rnd) + "]"
    with pytest.raises(ValueError, match="duplicate object key") as caught:
        native.canonical_json(text)
    if name.isalnum():  # other names are quoted with escapes in the message
        assert f'"{name}"' in str(caught.value)
    with pytest.raises(ValueError):
        reference_canonical(text)


@given(st.one_of(json_values.map(json.dumps), st.text(max_size=40)))
def test_digest_is_sha256_of_canonical_text(text: str) -> None:
    try:
        canonical = native.canonical_json(text)
    except ValueError:
        with pytest.raises(ValueError):
            native.canonical_json_sha256(text)
        return
    assert native.canonical_json_sha256(text) == hashlib.sha256(canonical.encode()).digest()


@settings(deadline=None)
@given(json_values)
def test_str_and_bytes_like_inputs_agree(value: Json) -> None:
    text = json.dumps(value, ensure_ascii=False)
    raw = text.encode()
    expected = native.canonical_json(text)
    for form in (raw, bytearray(raw), memoryview(raw)):
        assert native.canonical_json(form) == expected
        assert native.canonical_json_sha256(form) == native.canonical_json_sha256(text)


# ---------------------------------------------------------------------------------------------
# Examples


def test_rfc8785_sample() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    assert native.canonical_json(text) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


@pytest.mark.parametrize("spelling", ["1", "1.0", "1e0", "10e-1", "0.1E+1", "1.00000"])
def test_number_spellings_of_one(spelling: str) -> None:
    assert native.canonical_json(f'{{"n":{spelling}}}') == '{"n":1}'


def test_reference_formats_the_rfc_number_table() -> None:
    """The reference itself is checked against RFC 8785 Appendix B, so agreeing with it means
    something."""
    table = {
        "0000000000000001": "5e-324",
        "7fefffffffffffff": "1.7976931348623157e+308",
        "4430000000000000": "295147905179352830000",
        "44b52d02c7e14af6": "1e+23",
        "444b1ae4d6e2ef50": "1e+21",
        "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
        "3eb0c6f7a0b5ed8d": "0.000001",
        "41b3de4355555557": "333333333.33333343",
        "becbf647612f3696": "-0.0000033333333333333333",
        "43143ff3c1cb0959": "1424953923781206.2",
    }
    for bits, expected in table.items():
        value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
        assert ecmascript_number(value) == expected
        assert native.canonical_json(repr(value)) == expected


# ---------------------------------------------------------------------------------------------
# Rejections: ValueError naming the problem and where it is

DEPTH = native.MAX_JSON_DEPTH

REJECTIONS: list[tuple[str | bytes, list[str]]] = [
    (b"", ["empty input"]),
    ("  \n", ["only whitespace"]),
    (b"\xef\xbb\xbf{}", ["byte order mark", "byte 0"]),
    ("\ufeff{}", ["byte order mark", "byte 0"]),
    (b'{"a":"\xff"}', ["invalid UTF-8", "byte 6"]),
    (b'"\xed\xa0\x80"', ["invalid UTF-8", "byte 1"]),
    ('{"id":1,"views":2,"id":3}', ['duplicate object key "id"', "byte 18"]),
    ('{"a":1,"\\u0061":2}', ['duplicate object key "a"', "byte 7"]),
    ("NaN", ["JSON has no NaN/Infinity", "'NaN'"]),
    ('{"ctr":Infinity}', ["JSON has no NaN/Infinity", "'Infinity'", "byte 7"]),
    ("[-Infinity]", ["JSON has no NaN/Infinity", "'-Infinity'", "byte 1"]),
    ("1e309", ["overflows to infinity", "byte 0"]),
    ("[1, -2e400]", ["overflows to infinity", "byte 4"]),
    ('"\\ud83d"', ["lone surrogate \\ud83d", "byte 1"]),
    ('"x\\udc00"', ["lone surrogate \\udc00", "byte 2"]),
    ('"tab\there"', ["control character U+0009", "\\t", "byte 4"]),
    ('"\x01"', ["control character U+0001", "\\u0001"]),
    ("[1,2,]", ["trailing comma before ']'", "byte 4"]),
    ('{"a":1,}', ["trailing comma before '}'", "byte 6"]),
    ("012", ["leading zero", "byte 0"]),
    ("[-00.5]", ["leading zero", "byte 1"]),
    ("{} []", ["trailing data", "byte 3"]),
    ("truex", ["trailing data", "byte 4"]),
    ('{"a" 1}', ["expected ':'", "byte 5"]),
    ("[1 2]", ["expected ',' or ']'", "byte 3"]),
    ("{'a':1}", ["unexpected '''", "string key", "byte 1"]),
    ('"open', ["unterminated string", "byte 0"]),
    ('"\\q"', ["invalid escape '\\q'", "byte 1"]),
    ("1.", ["digit after the decimal point", "byte 2"]),
    ("[" * (DEPTH + 1) + "]" * (DEPTH + 1), [f"deeper than {DEPTH} levels", f"byte {DEPTH}"]),
    ('"\ud800"', ["lone surrogate"]),  # a str that cannot be UTF-8 at all
]


@pytest.mark.parametrize(
    ("text", "fragments"), REJECTIONS, ids=[repr(text)[:30] for text, _ in REJECTIONS]
)
def test_rejections_raise_value_error_naming_the_problem(
    text: str | bytes, fragments: list[str]
) -> None:
    for convert in (native.canonical_json, native.canonical_json_sha256):
        with pytest.raises(ValueError) as caught:
            convert(text)
        for fragment in fragments:
            assert fragment in str(caught.value)


def test_depth_limit_is_inclusive() -> None:
    text = "[" * DEPTH + "]" * DEPTH
    assert native.canonical_json(text) == text


def test_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        native.canonical_json(42)  # type: ignore[arg-type]
