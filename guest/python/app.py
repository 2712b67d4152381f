"""The default room (docs/PROTOCOL.md's routing) written in Python.

A port of guest/src/rules.rs, built into a wsroom:room component with
componentize-py (see build.sh). It shows the WIT contract is not tied to
Rust, and it passes the same protocol tests as the Rust room
(tests/e2e/ports.rs pins the inputs where ports tend to part ways).

It answers as the Rust room does, byte for byte: the same verdicts, the
same error texts, and the client's own bytes forwarded with only the value
of `from` replaced. The Rust room reads with serde_json, and Python's json
module differs from it: it takes NaN and Infinity, rebuilds what it reads
(numbers, escapes, spacing, duplicate keys) and recurses (deep nesting
fails). So this file reads JSON itself, the way serde_json does: a pass
that only validates (iterative, with serde_json's error texts), then a
walk over the top-level object that notes where each value lies.
"""

import json
import math
import re
import unicodedata

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

ADMITTED_TYPES = ("runtime", "data-agent", "admin")
ADMIN = "admin"
DEFAULT_CLEANUP_DELAY_MS = 5 * 60 * 1000


def dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def rust_debug(s):
    """`s` as Rust's `{:?}` writes a string (the Rust room's error texts use
    it): quotes, and \\0 \\t \\r \\n \\\\ \\" or \\u{hex} escapes for the
    characters that are not printable or that combine with the one before."""
    out = ['"']
    for c in s:
        if c in DEBUG_ESCAPES:
            out.append(DEBUG_ESCAPES[c])
        elif c == " " or (unicodedata.category(c) not in NOT_PRINTED and c not in EXTENDING):
            out.append(c)
        else:
            out.append(f"\\u{{{ord(c):x}}}")
    out.append('"')
    return "".join(out)


DEBUG_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}
# Unicode categories Rust does not print as they are: controls, format,
# surrogates, private use, unassigned, separators, and combining marks.
NOT_PRINTED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Me"}
# The other characters that combine with the one before (Unicode 16's
# Other_Grapheme_Extend, spacing marks mostly).
EXTENDING = {
    chr(c)
    for first, last in [
        (0x9BE, 0x9BE), (0x9D7, 0x9D7), (0xB3E, 0xB3E), (0xB57, 0xB57), (0xBBE, 0xBBE),
        (0xBD7, 0xBD7), (0xCC0, 0xCC0), (0xCC2, 0xCC2), (0xCC7, 0xCC8), (0xCCA, 0xCCB),
        (0xCD5, 0xCD6), (0xD3E, 0xD3E), (0xD57, 0xD57), (0xDCF, 0xDCF), (0xDDF, 0xDDF),
        (0x1715, 0x1715), (0x1734, 0x1734), (0x1B35, 0x1B35), (0x1B3B, 0x1B3B),
        (0x1B3D, 0x1B3D), (0x1B43, 0x1B44), (0x1BAA, 0x1BAA), (0x1BF2, 0x1BF3),
        (0x302E, 0x302F), (0xA953, 0xA953), (0xA9C0, 0xA9C0), (0xFF9E, 0xFF9F),
        (0x111C0, 0x111C0), (0x11235, 0x11235), (0x1133E, 0x1133E), (0x1134D, 0x1134D),
        (0x11357, 0x11357), (0x114B0, 0x114B0), (0x114BD, 0x114BD), (0x115AF, 0x115AF),
        (0x116B6, 0x116B6), (0x11930, 0x11930), (0x1193D, 0x1193D), (0x16FF0, 0x16FF1),
        (0x1D165, 0x1D166), (0x1D16D, 0x1D172),
    ]
    for c in range(first, last + 1)
}


# ---- Reading JSON as serde_json does ------------------------------------
#
# The functions below work on the message's UTF-8 bytes, so positions are
# the byte offsets serde_json reports and splices at.

WS = re.compile(rb"[ \t\n\r]*")
PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')  # string bytes up to " \ or a control
DIGITS = re.compile(rb"[0-9]*")
HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
QUOTE, BACKSLASH, COMMA, COLON = b'"\\,:'
CLOSING = {ord("["): ord("]"), ord("{"): ord("}")}

# Fast paths: one regex match instead of a Python loop for what messages
# are mostly made of. They match valid JSON only, so they never step over
# an error: runs of scalars in an array (`v, v, `) or an object
# (`v, "k": v, "k": `), a member with a scalar value, runs of [ (an
# object's { is followed by a key), and of ] and }.
_WS = rb"[ \t\n\r]*+"
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*+"'
_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?"
_SCALAR = rb"(?:" + _STRING + rb"|" + _NUMBER + rb"|true|false|null)"
SCALAR = re.compile(_SCALAR)
_KEY = _WS + _STRING + _WS + rb":"
RUN_IN = {
    ord("["): re.compile(rb"(?:" + _WS + _SCALAR + _WS + rb",)*+"),
    ord("{"): re.compile(rb"(?:" + _WS + _SCALAR + _WS + rb"," + _KEY + rb")*+"),
}
SIMPLE_MEMBER = re.compile(
    rb"(" + _STRING + rb")" + _WS + rb":" + _WS + rb"(" + _SCALAR + rb")" + _WS
)
OPENS = re.compile(rb"\[++")
CLOSES = re.compile(rb"[\]}]++")
OPENER = bytes.maketrans(b"]}", b"[{")

# serde_json's error texts.
EOF_IN = {ord("["): "EOF while parsing a list", ord("{"): "EOF while parsing an object"}
EOF_STRING = "EOF while parsing a string"
EOF_VALUE = "EOF while parsing a value"
CONTROL = "control character (\\u0000-\\u001F) found while parsing a string"
COMMA_OR_END = {ord("["): "expected `,` or `]`", ord("{"): "expected `,` or `}`"}
EXPECTED_COLON = "expected `:`"
EXPECTED_IDENT = "expected ident"
EXPECTED_KEY = "key must be a string"
EXPECTED_VALUE = "expected value"
INVALID_ESCAPE = "invalid escape"
INVALID_NUMBER = "invalid number"
TRAILING = "trailing characters"


class JsonError(ValueError):
    """Invalid JSON, worded and placed as serde_json words and places it:
    `at` is the byte offset it reports (lines from 1, columns in bytes)."""

    def __init__(self, what, data, at):
        line_start = data.rfind(b"\n", 0, at) + 1
        line = data.count(b"\n", 0, line_start) + 1
        super().__init__(f"{what} at line {line} column {at - line_start}")


def fail(what, data, at):
    raise JsonError(what, data, at)


def fail_peek(what, data, i):
    """An error about the byte at `i`, which serde_json places after it."""
    raise JsonError(what, data, min(len(data), i + 1))


def ws(data, i):
    return WS.match(data, i).end()


def check(data):
    """Raises JsonError unless `data` is one JSON value (RFC 8259: no NaN or
    Infinity), with the same verdict and error text as serde_json."""
    i = ws(data, skip_value(data, 0))
    if i < len(data):
        fail_peek(TRAILING, data, i)


def skip_value(data, i):
    """The end of the JSON value at `i` (whitespace first). A port of
    serde_json's `ignore_value`: a loop with a stack, so any depth is fine,
    and any number and any \\u escape is taken."""
    n = len(data)
    stack = bytearray()  # the brackets we are in
    while True:
        if stack:
            i = RUN_IN[stack[-1]].match(data, i).end()
        i = ws(data, i)
        if i == n:
            fail_peek(EOF_VALUE, data, i)
        c = data[i]
        if c in CLOSING:
            # A run of [ at once (an object's { is followed by a key).
            end = OPENS.match(data, i).end() if c == ord("[") else i + 1
            stack += data[i:end]
            i = end
            more = False  # right after an opening bracket: no comma yet
        else:
            if c == ord("n"):
                i = skip_ident(data, i + 1, b"ull")
            elif c == ord("t"):
                i = skip_ident(data, i + 1, b"rue")
            elif c == ord("f"):
                i = skip_ident(data, i + 1, b"alse")
            elif c == ord("-") or ord("0") <= c <= ord("9"):
                i = skip_number(data, i)
            elif c == QUOTE:
                i = skip_string(data, i + 1)
            else:
                fail_peek(EXPECTED_VALUE, data, i)
            if not stack:
                return i
            more = True
        # Close what ends here, up to a comma or the next value.
        while True:
            i = ws(data, i)
            if i == n:
                fail_peek(EOF_IN[stack[-1]], data, i)
            c = data[i]
            if c == COMMA and more:
                i += 1
                break
            if c == CLOSING[stack[-1]]:
                # A run of ] and } at once, if it closes what is open.
                run = min(CLOSES.match(data, i).end() - i, len(stack))
                if not stack.endswith(data[i : i + run].translate(OPENER)[::-1]):
                    run = 1
                del stack[-run:]
                i += run
                if not stack:
                    return i
                more = True
                continue
            if more:
                fail_peek(COMMA_OR_END[stack[-1]], data, i)
            break
        if stack[-1] == ord("{"):
            i = ws(data, i)
            if i == n:
                fail_peek(EOF_IN[ord("{")], data, i)
            if data[i] != QUOTE:
                fail_peek(EXPECTED_KEY, data, i)
            i = ws(data, skip_string(data, i + 1))
            if i == n:
                fail_peek(EOF_IN[ord("{")], data, i)
            if data[i] != COLON:
                fail_peek(EXPECTED_COLON, data, i)
            i += 1


def skip_ident(data, i, rest):
    for expected in rest:
        if i == len(data):
            fail(EOF_VALUE, data, i)
        i += 1
        if data[i - 1] != expected:
            fail(EXPECTED_IDENT, data, i)
    return i


def skip_number(data, i):
    """The end of the number at `i` (its syntax only, whatever its size)."""

    def digit_at(i):
        return i < len(data) and ord("0") <= data[i] <= ord("9")

    def next_digit(i):
        # serde_json's next_char_or_null: a digit must come, and the byte
        # that is not one is consumed before the error.
        if not digit_at(i):
            fail(INVALID_NUMBER, data, min(len(data), i + 1))
        return i + 1

    if data[i] == ord("-"):
        i += 1
    if i < len(data) and data[i] == ord("0"):
        i += 1
        if digit_at(i):
            fail_peek(INVALID_NUMBER, data, i)
    else:
        i = DIGITS.match(data, next_digit(i)).end()
    if i < len(data) and data[i] == ord("."):
        if not digit_at(i + 1):
            fail_peek(INVALID_NUMBER, data, i + 1)
        i = DIGITS.match(data, i + 1).end()
    if i < len(data) and data[i] in b"eE":
        i += 1
        if i < len(data) and data[i] in b"+-":
            i += 1
        i = DIGITS.match(data, next_digit(i)).end()
    return i


def skip_string(data, i):
    """The end of the string whose opening quote is before `i`."""
    n = len(data)
    while True:
        i = PLAIN.match(data, i).end()
        if i == n:
            fail(EOF_STRING, data, i)
        if data[i] == QUOTE:
            return i + 1
        if data[i] != BACKSLASH:
            fail(CONTROL, data, i)
        if i + 1 == n:
            fail(EOF_STRING, data, n)
        escape = data[i + 1]
        i += 2
        if escape == ord("u"):
            if n - i < 4:
                fail(EOF_STRING, data, n)
            i += 4
            if not HEX4.fullmatch(data, i - 4, i):
                fail(INVALID_ESCAPE, data, i)
        elif escape not in b'"\\/bfnrt':
            fail(INVALID_ESCAPE, data, i)


def members(data, i):
    """(key token, start, end) of each member of the valid JSON object at
    `i`: the key with its quotes, and where its value lies."""
    found = []
    i = ws(data, i + 1)
    while data[i] != ord("}"):
        simple = SIMPLE_MEMBER.match(data, i)  # the usual `"key": scalar`
        if simple:
            key, (start, end) = simple[1], simple.span(2)
            i = simple.end()
        else:
            key_end = skip_string(data, i + 1)
            key = data[i:key_end]
            start = ws(data, ws(data, key_end) + 1)  # past the colon
            end = skip_value(data, start)
            i = ws(data, end)
        found.append((key, start, end))
        if data[i] == COMMA:
            i = ws(data, i + 1)
    return found


SURROGATE = re.compile("[\ud800-\udfff]")


def string_of(token):
    """The value of a JSON string token, or None if it has a lone surrogate
    escape: serde_json refuses those where it reads a string (it skips
    over them in values it ignores)."""
    if b"\\" not in token:
        return token[1:-1].decode()
    text = json.loads(token.decode())
    return None if SURROGATE.search(text) else text


U64_MAX = 2**64 - 1
I32_MAX = 2**31 - 1
POW10 = [float(f"1e{k}") for k in range(309)]
NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")


class OutOfRange(Exception):
    pass


def add_digits(significand, digits):
    """(significand, how many of `digits` it took): serde_json's loop that
    appends digits to a u64 until the next one would not fit."""
    zeros = len(digits) - len(digits.lstrip("0")) if significand == 0 else 0
    for used in range(zeros, len(digits)):
        bigger = significand * 10 + int(digits[used])
        if bigger > U64_MAX:
            return significand, used
        significand = bigger
    return significand, len(digits)


def number_of(token):
    """The valid JSON number `token` as serde_json reads it when it needs a
    value: an int if it is an integer in u64 or i64 range, else the float
    serde_json computes (its fast method, not always the nearest one).
    Raises OutOfRange where serde_json says "number out of range"."""
    if len(token) < 19 and token.isdigit():
        return int(token)  # the usual case
    sign, whole, fraction, exp_sign, exp = NUMBER.fullmatch(token).groups()
    # Digits go into a u64 while they fit; the integer's later ones only
    # count in the exponent, the fraction's are dropped.
    significand, used = add_digits(0, whole)
    exponent = len(whole) - used
    if not (exponent or fraction or exp):
        if not sign:
            return significand
        if 0 < significand <= 2**63:
            return -significand
        return -float(significand)  # -0, and below i64: a float
    if fraction:
        significand, used = add_digits(significand, fraction)
        exponent -= used
    if exp:
        if len(exp.lstrip("0")) > 10 or int(exp) > I32_MAX:
            if significand and exp_sign != "-":
                raise OutOfRange
            return -0.0 if sign else 0.0
        exponent += -int(exp) if exp_sign == "-" else int(exp)
        exponent = max(-(2**31), min(I32_MAX, exponent))
    f = float(significand)
    while True:
        if abs(exponent) < len(POW10):
            if exponent >= 0:
                f *= POW10[exponent]
                if math.isinf(f):
                    raise OutOfRange
            else:
                f /= POW10[-exponent]
            break
        if f == 0.0:
            break
        if exponent >= 0:
            raise OutOfRange
        f /= 1e308
        exponent += 308
    return -f if sign else f


# ---- The message, as the Rust room reads it ----------------------------


class NotAnObject(Exception):
    """Valid JSON the Rust room fails to read as a message (it then answers
    "message must be a JSON object"): not an object, a lone surrogate in a
    top-level key or in what `to` holds, or a number out of range there."""


def strict_string(token):
    text = string_of(token)
    if text is None:
        raise NotAnObject
    return text


def strict_number(token):
    try:
        return number_of(token.decode())
    except OutOfRange:
        raise NotAnObject from None


class Message:
    """What the room reads of a message: every top-level member (with
    duplicate keys the last `to` and `id` count), and where each `from`
    value lies."""

    def __init__(self, data):
        self.data = data
        start = ws(data, 0)
        if data[start] != ord("{"):
            raise NotAnObject
        self.count = 0
        self.to = None
        self.id = None
        self.froms = []
        for key, start, end in members(data, start):
            self.count += 1
            name = strict_string(key)
            if name == "to":
                self.to = read_to(data, start, end)
            elif name == "from":
                self.froms.append((start, end))
            elif name == "id":
                self.id = data[start:end]

    def message_id(self):
        """The message's `id`, if it is a string."""
        if self.id is None or self.id[0] != QUOTE:
            return None
        return string_of(self.id)


class Invalid(Exception):
    pass


# What `to` holds: null, an object (its `id` and `type` as read_field reads
# them; missing ones absent), or anything else (TO_INVALID, as is an object
# with `id` or `type` twice).
TO_NULL, TO_INVALID = "null", "invalid"
OTHER = object()  # a `to.id` or `to.type` that is not a string


def read_to(data, start, end):
    c = data[start]
    if c == ord("n"):
        return TO_NULL
    if c == ord("{"):
        fields, twice = {}, False
        for key, s, e in members(data, start):
            name = strict_string(key)
            if name in ("id", "type"):
                twice |= name in fields
                fields[name] = read_field(data, s, e)
        return TO_INVALID if twice else fields
    read_field(data, start, end)  # only to fail where the Rust room does
    return TO_INVALID


def read_field(data, start, end):
    """A value in `to`: its text if it is a string, else OTHER. Strings are
    read strictly, numbers for their range, and an object for its keys."""
    c = data[start]
    if c == QUOTE:
        return strict_string(data[start:end])
    if c == ord("-") or ord("0") <= c <= ord("9"):
        strict_number(data[start:end])
    elif c == ord("{"):
        for key, _, _ in members(data, start):
            strict_string(key)
    return OTHER


def route(to):
    """("id", id), ("type", kind) or ("all", None); raises Invalid."""
    if to is None or to == TO_NULL:
        return ("all", None)
    if to == TO_INVALID:
        raise Invalid("`to` must be an object or null")

    def field(key, what):
        value = to.get(key, "")
        if value is OTHER:
            raise Invalid(what)
        return value

    to_id = field("id", "`to.id` must be a string")
    kind = field("type", "`to.type` must be a string")
    if to_id:
        return ("id", to_id)
    if kind:
        return ("type", kind)
    return ("all", None)


def stamped(message, sender_id, sender_kind):
    """The message with from.id and from.type set to the sender's: the
    client's bytes as they are except for the value of every `from` (or
    with `from` added before the closing brace)."""
    data = message.data
    if not message.froms:
        close = data.rindex(b"}")
        comma = b"," if message.count else b""
        new = stamp(None, sender_id, sender_kind)
        return (data[:close] + comma + b'"from":' + new + data[close:]).decode()
    out, copied = [], 0
    for start, end in message.froms:
        out += [data[copied:start], stamp(data[start:end], sender_id, sender_kind)]
        copied = end
    out.append(data[copied:])
    return b"".join(out).decode()


def stamp(old, sender_id, sender_kind):
    """The new value of a `from`. A `from` object with fields of its own
    keeps them; the Rust room rebuilds it as a serde_json map (keys sorted,
    the last of duplicates, numbers rewritten) or, where serde_json cannot
    read it so, drops them."""
    if old is not None and old.startswith(b"{") and old != b"{}":
        try:
            fields = json_value(old, map_only=True)
        except Unreadable:
            fields = None
        if fields and any(k not in ("id", "type") for k in fields):
            fields["type"] = sender_kind
            fields["id"] = sender_id
            return to_json(fields).encode()
    return dumps({"id": sender_id, "type": sender_kind}).encode()


# ---- A `from` object as a serde_json::Value -----------------------------


class Unreadable(Exception):
    """Where serde_json fails to read valid JSON as a Value."""


RAW_VALUE_TOKEN = "$serde_json::private::RawValue"
DEPTH_LIMIT = 128  # serde_json's recursion limit


def json_value(data, map_only=False):
    """The valid JSON `data` as serde_json reads a Value (a Map if
    `map_only`): dicts, lists, strings, ints, floats, None and booleans."""
    return value_at(data, ws(data, 0), 1, map_only)[0]


def value_at(data, i, depth, map_only=False):
    """(value, end) of the valid JSON value at `i`, `depth` deep."""
    c = data[i]
    if c not in CLOSING:
        end = SCALAR.match(data, i).end()
        return scalar(data[i:end]), end
    if depth >= DEPTH_LIMIT:
        raise Unreadable("recursion limit exceeded")
    is_object = c == ord("{")
    items = []
    i = ws(data, i + 1)
    while data[i] != CLOSING[c]:
        if is_object:
            key_end = skip_string(data, i + 1)
            key = string_of(data[i:key_end])
            if key is None:
                raise Unreadable("lone surrogate")
            i = ws(data, ws(data, key_end) + 1)
            if key == RAW_VALUE_TOKEN and not items and not map_only:
                return raw_value(data, i)
        value, i = value_at(data, i, depth + 1)
        items.append((key, value) if is_object else value)
        i = ws(data, i)
        if data[i] == COMMA:
            i = ws(data, i + 1)
    return (dict(items) if is_object else items), i + 1


def raw_value(data, i):
    """serde_json reads an object whose first key is its RawValue token as
    the JSON text in that key's string, which must be the only member."""
    end = skip_value(data, i)
    inner = string_of(data[i:end]) if data[i] == QUOTE else None
    close = ws(data, end)
    if inner is None or data[close] != ord("}"):
        raise Unreadable("bad raw value")
    try:
        check(inner.encode())
    except JsonError:
        raise Unreadable("bad raw value") from None
    return json_value(inner.encode()), close + 1


def scalar(token):
    c = token[0]
    if c == QUOTE:
        text = string_of(token)
        if text is None:
            raise Unreadable("lone surrogate")
        return text
    if c == ord("-") or ord("0") <= c <= ord("9"):
        try:
            return number_of(token.decode())
        except OutOfRange:
            raise Unreadable("number out of range") from None
    return {b"null": None, b"true": True, b"false": False}[token]


def to_json(value):
    """`value` as serde_json writes a Value: compact, object keys sorted."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(k)}:{to_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(to_json, value)) + "]"
    if isinstance(value, float):
        return float_text(value)
    return dumps(value)


def float_text(f):
    """A float as serde_json writes it (the zmij crate): the shortest digits
    that read back, positioned plainly for decimal exponents -5 to 15
    (always with a fraction), else as d.ddde+x / d.ddde-x."""
    if f == 0:
        return "-0.0" if math.copysign(1, f) < 0 else "0.0"
    mantissa, _, e = repr(abs(f)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    exponent = len(whole) - 1 + int(e or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    sign = "-" if f < 0 else ""
    if 0 <= exponent <= 15:
        whole, fraction = digits[: exponent + 1], digits[exponent + 1 :]
        return f"{sign}{whole.ljust(exponent + 1, '0')}.{fraction or '0'}"
    if -5 <= exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    point = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{point}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


# ---- The room -----------------------------------------------------------


def target(select, except_=None):
    return types.Target(select=select, except_=[except_] if except_ else [])


def to_client(client_id):
    return target(types.Selector_Client(client_id))


def system_message(kind, payload):
    return dumps(
        {"id": host.new_id(), "type": kind, "from": {"type": "system"}, "payload": payload}
    )


def send_error(to, code, message, message_id=None):
    payload = {
        "code": code,
        "message": message,
        "projectId": host.project_id(),
        "timestamp": host.now_ms(),
    }
    if message_id is not None:
        payload["messageId"] = message_id
    host.send(system_message("error", payload), [to_client(to)])


class Rejected(Exception):
    """Why a message was not (fully) delivered: an error code, a message,
    the message's own id, and the clients it reached all the same."""

    def __init__(self, code, message, message_id=None, delivered=0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id
        self.delivered = delivered


def on_text(sender_id, sender_kind, text):
    try:
        deliver(sender_id, sender_kind, text)
    except Rejected as r:
        send_error(sender_id, r.code, r.message, r.message_id)


def deliver(sender_id, sender_kind, text):
    """Validates, stamps and routes a message; how many clients it reached.
    Raises Rejected when it is refused."""
    data = text.encode()
    try:
        check(data)
    except JsonError as e:
        raise Rejected("invalid_json", f"invalid JSON: {e}") from None
    try:
        message = Message(data)
    except NotAnObject:
        raise Rejected("invalid_message", "message must be a JSON object") from None
    try:
        where, value = route(message.to)
    except Invalid as e:
        raise Rejected("invalid_message", str(e), message.message_id()) from None
    out = stamped(message, sender_id, sender_kind)

    # The sender never gets its own message; a target of another type
    # cannot include it, so it needs no exception (as in the Rust room).
    def of_kind(kind):
        return target(types.Selector_Kind(kind), sender_id if kind == sender_kind else None)

    admins = of_kind(ADMIN)
    if where == "id":
        reached = host.send(out, [to_client(value), admins])
        if not reached or reached[0] == 0:
            raise Rejected(
                "unknown_target",
                f"no client with id {rust_debug(value)} in this project",
                message.message_id(),
                sum(reached),
            )
    elif where == "type":
        reached = host.send(out, [of_kind(value), admins])
    else:
        reached = host.send(out, [target(types.Selector_All(), sender_id)])
    return sum(reached)


SERVER = "server"  # the sender of messages posted over HTTP


def http_answer(status, body, allow=None):
    headers = [("content-type", "application/json")]
    if allow is not None:
        headers.append(("allow", allow))
    return types.HttpResponse(status=status, headers=headers, body=dumps(body).encode())


def not_allowed(allow):
    return http_answer(
        405,
        {"error": "method_not_allowed", "message": f"this path answers {allow}"},
        allow,
    )


def on_http(method, path, body):
    """`fetch`: POST /messages routes its body as a message from the
    server; GET / (and HEAD /) says how many clients the room has."""
    path = path.split("?", 1)[0]
    if (method, path) == ("POST", "/messages"):
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return http_answer(
                400,
                {
                    "error": "invalid_json",
                    "message": "invalid JSON: the body is not UTF-8",
                    "delivered": 0,
                },
            )
        project_id = host.project_id()
        try:
            delivered = deliver(SERVER, SERVER, text)
        except Rejected as r:
            answer = {"error": r.code, "message": r.message}
            if r.message_id is not None:
                answer["messageId"] = r.message_id
            answer["delivered"] = r.delivered
            return http_answer(404 if r.code == "unknown_target" else 400, answer)
        return http_answer(202, {"delivered": delivered, "projectId": project_id})
    if method in ("GET", "HEAD") and path == "/":
        return http_answer(
            200, {"projectId": host.project_id(), "clientCount": host.client_count(None)}
        )
    if path == "/messages":
        return not_allowed("POST")
    if path == "/":
        return not_allowed("GET, HEAD")
    return http_answer(
        404,
        {"error": "not_found", "message": "the default room answers POST /messages and GET /"},
    )


def cleanup_delay(config):
    """The configured delay if it parses as Rust parses a u64 (ASCII digits,
    maybe a leading +, in range), else the default."""
    if config is None or not re.fullmatch(r"\+?[0-9]+", config):
        return DEFAULT_CLEANUP_DELAY_MS
    digits = config.lstrip("+").lstrip("0") or "0"
    if len(digits) > 20 or int(digits) > U64_MAX:
        return DEFAULT_CLEANUP_DELAY_MS
    return int(digits)


class WitWorld(wit_world.WitWorld):
    def on_connect(self, client):
        if client.kind not in ADMITTED_TYPES:
            raise Err(
                types.Refusal(
                    status=400,
                    error="invalid_type",
                    message=f"type must be one of: {', '.join(ADMITTED_TYPES)}; "
                    f"got {rust_debug(client.kind)}",
                )
            )
        host.cancel_alarm()
        project_id = host.project_id()
        payload = {
            "clientId": client.id,
            "projectId": project_id,
            "clientCount": host.client_count(None),
            "message": f"connected to project {project_id} as {client.kind}",
            "timestamp": host.now_ms(),
        }
        host.send(system_message("connected", payload), [to_client(client.id)])

    def on_message(self, sender, message):
        if isinstance(message, types.Incoming_Text):
            on_text(sender.id, sender.kind, message.value)
        elif isinstance(message, types.Incoming_Binary):
            send_error(
                sender.id,
                "invalid_message",
                "binary frames are not supported; send JSON text",
            )
        else:
            o = message.value
            send_error(
                sender.id,
                "message_too_large",
                f"message of {o.size} bytes is over the limit of {o.limit} bytes",
            )

    def on_close(self, client, code, reason):
        remaining = host.client_count(None)
        if remaining > 0:
            payload = {
                "clientId": client.id,
                "clientType": client.kind,
                "projectId": host.project_id(),
                "clientCount": remaining,
                "timestamp": host.now_ms(),
            }
            host.send(system_message("client_left", payload), [target(types.Selector_All())])
        else:
            host.set_alarm(cleanup_delay(host.config("cleanup-delay-ms")))

    def alarm(self, info):
        # The host removes a room that is empty with no alarm set: nothing
        # to do here.
        pass

    def fetch(self, request):
        return on_http(request.method, request.path, bytes(request.body))
