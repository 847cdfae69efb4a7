"""What an answer must be before a client sees it: the repairs the operations' parsers share.

The proto documents rules on every result (weights that sum to at most 1.0, regions strongest
first, hook moments in timeline order, palette colours as `#RRGGBB`). A model answer that fits its
response schema can still break them: the schema states types, ranges and counts, not sums,
orders or spellings. Each structured operation's `normalise` (run by `parse_answer` right after
the schema check, so every answer passes through it, interactive or batched) repairs what can be
repaired without changing what the answer means, and raises `RuleBroken` for what cannot; the
parser turns that into `UpstreamBadResponse`, which the model is asked again for, once, like any
other answer that does not fit.

The helpers here are the repairs more than one place needs or that deserve tests of their own.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence


class RuleBroken(ValueError):
    """An answer breaks a documented rule in a way no repair can fix; `path` says where (e.g.
    `$.concepts[1].palette[0]`), `problem` what the rule is. Neither ever quotes the answer."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- weights: shares of one whole, as protobuf floats -----------------------------------------


_FLOAT32 = struct.Struct("<f")
_BITS32 = struct.Struct("<I")


def float32(value: float) -> float:
    """`value` rounded to the nearest float32 (what a protobuf `float` field carries); past the
    float32 range, infinity of its sign."""
    try:
        return float(_FLOAT32.unpack(_FLOAT32.pack(value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def _float32_step_down(single: float) -> float:
    """The float32 just below the float32 value `single` (finite)."""
    if single == 0.0:
        return -float(_FLOAT32.unpack(_BITS32.pack(1))[0])
    bits = _BITS32.unpack(_FLOAT32.pack(single))[0]
    return float(_FLOAT32.unpack(_BITS32.pack(bits - 1 if single > 0 else bits + 1))[0])


def _float32_down(value: float) -> float:
    """The largest float32 not above `value`."""
    nearest = float32(value)
    return _float32_step_down(nearest) if nearest > value else nearest


def sums_within_one(weights: Sequence[float]) -> bool:
    """Whether `weights` add up to at most 1.0 however a client adds them: exactly, left to right
    in doubles (JavaScript, Python) and left to right in float32 (C++ `float`, numpy float32)."""
    if math.fsum(weights) > 1.0:
        return False
    double = single = 0.0
    for weight in weights:
        double += weight
        # Two float32 values add exactly enough in a double (53 >= 2 * 24 + 2 bits) that
        # rounding the double sum gives float32 addition's own result.
        single = float32(single + float32(weight))
    return double <= 1.0 and single <= 1.0


def shares(weights: Sequence[float], path: str) -> tuple[float, ...]:
    """`weights` as shares of one whole that a protobuf `float` field carries exactly.

    Each weight must be a finite number from 0 (else `RuleBroken` at `path.format(index)`, e.g.
    "$.regions[{}].weight"). Weights that sum to more than 1.0 are scaled down in proportion (1.5
    in all says how the whole divides, and scaling keeps that); weights that do not are left as
    they are. Every share is then a float32 value; where float32 rounding alone would carry the
    sum past 1.0 (added in the order given), all shares shrink by a few float32 steps more.
    Shares keep the order of the weights: a larger weight never becomes a smaller share.
    """
    for index, weight in enumerate(weights):
        if not math.isfinite(weight) or weight < 0:
            raise RuleBroken(path.format(index), "must be a finite share from 0.0 to 1.0")
    total = math.fsum(weights)
    scale = 1.0 / total if total > 1.0 else 1.0
    result = [min(float32(weight * scale), 1.0) for weight in weights]
    shrink = 1.0
    while not sums_within_one(result):
        # Monotone in each weight, so the order holds; each round takes about 2.4e-7 of the sum,
        # more than float32 rounding of ten shares can add.
        shrink -= 2.0**-22
        result = [_float32_down(weight * scale * shrink) for weight in weights]
    return tuple(result)


def unit_span(start: float, end: float) -> tuple[float, float]:
    """The part of [start, end] inside [0, 1] as float32 (offset, length), with offset >= 0,
    length >= 0 and offset + length <= 1.0 in doubles and in float32 (a box edge and size that
    rounding alone would carry past the image's edge)."""
    offset = float32(min(max(start, 0.0), 1.0))
    length = max(_float32_down(min(end, 1.0) - offset), 0.0)
    while not sums_within_one((offset, length)):
        length = max(_float32_step_down(length), 0.0)
    return offset, length


# --- colours: CSS forms to "#RRGGBB" -----------------------------------------------------------

#: The CSS Color Module Level 4 named colours (all 148; "grey" and "gray" spellings alike).
CSS_NAMED_COLOURS: dict[str, str] = {
    "aliceblue": "#F0F8FF",
    "antiquewhite": "#FAEBD7",
    "aqua": "#00FFFF",
    "aquamarine": "#7FFFD4",
    "azure": "#F0FFFF",
    "beige": "#F5F5DC",
    "bisque": "#FFE4C4",
    "black": "#000000",
    "blanchedalmond": "#FFEBCD",
    "blue": "#0000FF",
    "blueviolet": "#8A2BE2",
    "brown": "#A52A2A",
    "burlywood": "#DEB887",
    "cadetblue": "#5F9EA0",
    "chartreuse": "#7FFF00",
    "chocolate": "#D2691E",
    "coral": "#FF7F50",
    "cornflowerblue": "#6495ED",
    "cornsilk": "#FFF8DC",
    "crimson": "#DC143C",
    "cyan": "#00FFFF",
    "darkblue": "#00008B",
    "darkcyan": "#008B8B",
    "darkgoldenrod": "#B8860B",
    "darkgray": "#A9A9A9",
    "darkgreen": "#006400",
    "darkgrey": "#A9A9A9",
    "darkkhaki": "#BDB76B",
    "darkmagenta": "#8B008B",
    "darkolivegreen": "#556B2F",
    "darkorange": "#FF8C00",
    "darkorchid": "#9932CC",
    "darkred": "#8B0000",
    "darksalmon": "#E9967A",
    "darkseagreen": "#8FBC8F",
    "darkslateblue": "#483D8B",
    "darkslategray": "#2F4F4F",
    "darkslategrey": "#2F4F4F",
    "darkturquoise": "#00CED1",
    "darkviolet": "#9400D3",
    "deeppink": "#FF1493",
    "deepskyblue": "#00BFFF",
    "dimgray": "#696969",
    "dimgrey": "#696969",
    "dodgerblue": "#1E90FF",
    "firebrick": "#B22222",
    "floralwhite": "#FFFAF0",
    "forestgreen": "#228B22",
    "fuchsia": "#FF00FF",
    "gainsboro": "#DCDCDC",
    "ghostwhite": "#F8F8FF",
    "gold": "#FFD700",
    "goldenrod": "#DAA520",
    "gray": "#808080",
    "green": "#008000",
    "greenyellow": "#ADFF2F",
    "grey": "#808080",
    "honeydew": "#F0FFF0",
    "hotpink": "#FF69B4",
    "indianred": "#CD5C5C",
    "indigo": "#4B0082",
    "ivory": "#FFFFF0",
    "khaki": "#F0E68C",
    "lavender": "#E6E6FA",
    "lavenderblush": "#FFF0F5",
    "lawngreen": "#7CFC00",
    "lemonchiffon": "#FFFACD",
    "lightblue": "#ADD8E6",
    "lightcoral": "#F08080",
    "lightcyan": "#E0FFFF",
    "lightgoldenrodyellow": "#FAFAD2",
    "lightgray": "#D3D3D3",
    "lightgreen": "#90EE90",
    "lightgrey": "#D3D3D3",
    "lightpink": "#FFB6C1",
    "lightsalmon": "#FFA07A",
    "lightseagreen": "#20B2AA",
    "lightskyblue": "#87CEFA",
    "lightslategray": "#778899",
    "lightslategrey": "#778899",
    "lightsteelblue": "#B0C4DE",
    "lightyellow": "#FFFFE0",
    "lime": "#00FF00",
    "limegreen": "#32CD32",
    "linen": "#FAF0E6",
    "magenta": "#FF00FF",
    "maroon": "#800000",
    "mediumaquamarine": "#66CDAA",
    "mediumblue": "#0000CD",
    "mediumorchid": "#BA55D3",
    "mediumpurple": "#9370DB",
    "mediumseagreen": "#3CB371",
    "mediumslateblue": "#7B68EE",
    "mediumspringgreen": "#00FA9A",
    "mediumturquoise": "#48D1CC",
    "mediumvioletred": "#C71585",
    "midnightblue": "#191970",
    "mintcream": "#F5FFFA",
    "mistyrose": "#FFE4E1",
    "moccasin": "#FFE4B5",
    "navajowhite": "#FFDEAD",
    "navy": "#000080",
    "oldlace": "#FDF5E6",
    "olive": "#808000",
    "olivedrab": "#6B8E23",
    "orange": "#FFA500",
    "orangered": "#FF4500",
    "orchid": "#DA70D6",
    "palegoldenrod": "#EEE8AA",
    "palegreen": "#98FB98",
    "paleturquoise": "#AFEEEE",
    "palevioletred": "#DB7093",
    "papayawhip": "#FFEFD5",
    "peachpuff": "#FFDAB9",
    "peru": "#CD853F",
    "pink": "#FFC0CB",
    "plum": "#DDA0DD",
    "powderblue": "#B0E0E6",
    "purple": "#800080",
    "rebeccapurple": "#663399",
    "red": "#FF0000",
    "rosybrown": "#BC8F8F",
    "royalblue": "#4169E1",
    "saddlebrown": "#8B4513",
    "salmon": "#FA8072",
    "sandybrown": "#F4A460",
    "seagreen": "#2E8B57",
    "seashell": "#FFF5EE",
    "sienna": "#A0522D",
    "silver": "#C0C0C0",
    "skyblue": "#87CEEB",
    "slateblue": "#6A5ACD",
    "slategray": "#708090",
    "slategrey": "#708090",
    "snow": "#FFFAFA",
    "springgreen": "#00FF7F",
    "steelblue": "#4682B4",
    "tan": "#D2B48C",
    "teal": "#008080",
    "thistle": "#D8BFD8",
    "tomato": "#FF6347",
    "turquoise": "#40E0D0",
    "violet": "#EE82EE",
    "wheat": "#F5DEB3",
    "white": "#FFFFFF",
    "whitesmoke": "#F5F5F5",
    "yellow": "#FFFF00",
    "yellowgreen": "#9ACD32",
}

#: The canonical form: "#" and six uppercase hex digits.
HEX_COLOUR = re.compile(r"#[0-9A-F]{6}")
_HEX = re.compile(r"#([0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})")
_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(%?)"
# rgb()/rgba(), comma- or space-separated (CSS Color 4), with an optional alpha.
_RGB = re.compile(
    rf"rgba?\(\s*{_NUMBER}\s*(?:,\s*|\s+){_NUMBER}\s*(?:,\s*|\s+){_NUMBER}"
    rf"(?:\s*(?:,|/)\s*{_NUMBER})?\s*\)"
)
_NAME_SEPARATORS = re.compile(r"[\s_-]+")
_NOT_A_COLOUR = "must be an opaque colour: a #RRGGBB hex code, rgb(...) or a CSS colour name"


def css_hex(colour: str, path: str) -> str:
    """`colour` in the canonical form "#RRGGBB" (uppercase hex digits), or `RuleBroken`.

    Accepted, as CSS reads them: hex codes of 3, 4, 6 or 8 digits in any case; `rgb()`/`rgba()`
    with channels 0-255 or percentages; the 148 CSS colour names (in any case, with spaces,
    hyphens or underscores between words: "Light Blue" is `lightblue`). An alpha must be fully
    opaque: a see-through colour has no one hex code without knowing what lies behind it.
    Anything else (a phrase like "warm orange", `hsl()`, a channel out of range) is refused.
    """
    text = colour.strip().lower()
    if (match := _HEX.fullmatch(text)) is not None:
        digits = match.group(1)
        if len(digits) in (3, 4):
            digits = "".join(d * 2 for d in digits)
        if len(digits) == 8:
            if digits[6:] != "ff":
                raise RuleBroken(path, _NOT_A_COLOUR)
            digits = digits[:6]
        return "#" + digits.upper()
    if (match := _RGB.fullmatch(text)) is not None:
        groups = match.groups()
        channels = [_channel(groups[i], groups[i + 1], path) for i in (0, 2, 4)]
        if groups[6] is not None and not _opaque(groups[6], groups[7]):
            raise RuleBroken(path, _NOT_A_COLOUR)
        return "#" + "".join(f"{c:02X}" for c in channels)
    named = CSS_NAMED_COLOURS.get(_NAME_SEPARATORS.sub("", text))
    if named is None:
        raise RuleBroken(path, _NOT_A_COLOUR)
    return named


def _channel(number: str, percent: str, path: str) -> int:
    value = float(number) * 255 / 100 if percent else float(number)
    if value > 255:
        raise RuleBroken(path, _NOT_A_COLOUR + " (rgb channels run from 0 to 255)")
    # Round half up, as browsers do.
    return math.floor(value + 0.5)


def _opaque(number: str, percent: str) -> bool:
    return float(number) / (100 if percent else 1) >= 1.0


# --- text ------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """`text` with every run of whitespace (line breaks included) made one space, trimmed."""
    return " ".join(text.split())
