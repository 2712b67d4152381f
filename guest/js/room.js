// The default room (docs/PROTOCOL.md's routing) written in JavaScript.
//
// A port of guest/python/app.py (itself a port of guest/src/rules.rs) on
// the JavaScript room SDK (sdk-js/), built into a wsroom:room component
// with componentize-js (see build.sh).
// It answers as the Rust room does, byte for byte: the same verdicts, the
// same error texts, and the client's own bytes forwarded with only the
// value of `from` replaced. JSON.parse differs from serde_json (it takes
// what serde_json refuses in places, words errors its own way, and rebuilds
// what it reads), so this file reads JSON itself, the way serde_json does,
// on the message's UTF-8 bytes: a pass that only validates (iterative, with
// serde_json's error texts), then a walk over the top-level object that
// notes where each value lies.

import { Room, exportRoom, refuse, to } from "../../sdk-js/src/index.js";
import { ESCAPED } from "./unicode.js";

const ADMITTED_TYPES = ["runtime", "data-agent", "admin"];
const ADMIN = "admin";
const DEFAULT_CLEANUP_DELAY_MS = 5n * 60n * 1000n;
const U64_MAX = (1n << 64n) - 1n;
const I32_MAX = 2 ** 31 - 1;

const encoder = new TextEncoder();
// A leading U+FEFF is text like any other here (TextDecoder drops it by
// default; serde_json keeps it).
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

const dumps = (value) => JSON.stringify(value);

// ---- Rust's `{:?}` of a string (the Rust room's error texts use it) ----

const DEBUG_ESCAPES = new Map([
  ["\0", "\\0"],
  ["\t", "\\t"],
  ["\r", "\\r"],
  ["\n", "\\n"],
  ["\\", "\\\\"],
  ['"', '\\"'],
]);
/** Whether Rust's `{:?}` escapes this code point (not printable, or one
 * that combines with the one before): a binary search of ESCAPED. */
function escaped(cp) {
  let lo = 0;
  let hi = ESCAPED.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [first, last] = ESCAPED[mid];
    if (cp < first) hi = mid - 1;
    else if (cp > last) lo = mid + 1;
    else return true;
  }
  return false;
}

function rustDebug(s) {
  let out = '"';
  for (const c of s) {
    const cp = c.codePointAt(0);
    if (DEBUG_ESCAPES.has(c)) {
      out += DEBUG_ESCAPES.get(c);
    } else if (!escaped(cp)) {
      out += c;
    } else {
      out += `\\u{${cp.toString(16)}}`;
    }
  }
  return out + '"';
}

// ---- Reading JSON as serde_json does ------------------------------------
//
// The functions below work on the message's UTF-8 bytes (a Uint8Array), so
// positions are the byte offsets serde_json reports and splices at.

const QUOTE = 0x22, BACKSLASH = 0x5c, COMMA = 0x2c, COLON = 0x3a;
const LBRACKET = 0x5b, RBRACKET = 0x5d, LBRACE = 0x7b, RBRACE = 0x7d;
const CLOSING = { [LBRACKET]: RBRACKET, [LBRACE]: RBRACE };

// serde_json's error texts.
const EOF_IN = { [LBRACKET]: "EOF while parsing a list", [LBRACE]: "EOF while parsing an object" };
const EOF_STRING = "EOF while parsing a string";
const EOF_VALUE = "EOF while parsing a value";
const CONTROL = "control character (\\u0000-\\u001F) found while parsing a string";
const COMMA_OR_END = { [LBRACKET]: "expected `,` or `]`", [LBRACE]: "expected `,` or `}`" };
const EXPECTED_COLON = "expected `:`";
const EXPECTED_IDENT = "expected ident";
const EXPECTED_KEY = "key must be a string";
const EXPECTED_VALUE = "expected value";
const INVALID_ESCAPE = "invalid escape";
const INVALID_NUMBER = "invalid number";
const TRAILING = "trailing characters";

/** Invalid JSON, worded and placed as serde_json words and places it: `at`
 * is the byte offset it reports (lines from 1, columns in bytes). */
class JsonError extends Error {
  constructor(what, data, at) {
    let lineStart = 0;
    let line = 1;
    for (let i = 0; i < at; i++) {
      if (data[i] === 0x0a) {
        line++;
        lineStart = i + 1;
      }
    }
    super(`${what} at line ${line} column ${at - lineStart}`);
  }
}

function fail(what, data, at) {
  throw new JsonError(what, data, at);
}

/** An error about the byte at `i`, which serde_json places after it. */
function failPeek(what, data, i) {
  throw new JsonError(what, data, Math.min(data.length, i + 1));
}

const isWs = (b) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
const isDigit = (b) => b >= 0x30 && b <= 0x39;

function ws(data, i) {
  while (i < data.length && isWs(data[i])) i++;
  return i;
}

function digits(data, i) {
  while (i < data.length && isDigit(data[i])) i++;
  return i;
}

/** Throws JsonError unless `data` is one JSON value (RFC 8259: no NaN or
 * Infinity), with the same verdict and error text as serde_json. */
function check(data) {
  const i = ws(data, skipValue(data, 0));
  if (i < data.length) failPeek(TRAILING, data, i);
}

/** The end of the JSON value at `i` (whitespace first). A port of
 * serde_json's `ignore_value`: a loop with a stack, so any depth is fine,
 * and any number and any \u escape is taken. */
function skipValue(data, i) {
  const n = data.length;
  const stack = []; // the brackets we are in
  for (;;) {
    i = ws(data, i);
    if (i === n) failPeek(EOF_VALUE, data, i);
    let c = data[i];
    let more;
    if (c === LBRACKET || c === LBRACE) {
      stack.push(c);
      i++;
      more = false; // right after an opening bracket: no comma yet
    } else {
      if (c === 0x6e) i = skipIdent(data, i + 1, "ull");
      else if (c === 0x74) i = skipIdent(data, i + 1, "rue");
      else if (c === 0x66) i = skipIdent(data, i + 1, "alse");
      else if (c === 0x2d || isDigit(c)) i = skipNumber(data, i);
      else if (c === QUOTE) i = skipString(data, i + 1);
      else failPeek(EXPECTED_VALUE, data, i);
      if (stack.length === 0) return i;
      more = true;
    }
    // Close what ends here, up to a comma or the next value.
    for (;;) {
      i = ws(data, i);
      const top = stack[stack.length - 1];
      if (i === n) failPeek(EOF_IN[top], data, i);
      c = data[i];
      if (c === COMMA && more) {
        i++;
        break;
      }
      if (c === CLOSING[top]) {
        stack.pop();
        i++;
        if (stack.length === 0) return i;
        more = true;
        continue;
      }
      if (more) failPeek(COMMA_OR_END[top], data, i);
      break;
    }
    if (stack[stack.length - 1] === LBRACE) {
      i = ws(data, i);
      if (i === n) failPeek(EOF_IN[LBRACE], data, i);
      if (data[i] !== QUOTE) failPeek(EXPECTED_KEY, data, i);
      i = ws(data, skipString(data, i + 1));
      if (i === n) failPeek(EOF_IN[LBRACE], data, i);
      if (data[i] !== COLON) failPeek(EXPECTED_COLON, data, i);
      i++;
    }
  }
}

function skipIdent(data, i, rest) {
  for (let k = 0; k < rest.length; k++) {
    if (i === data.length) fail(EOF_VALUE, data, i);
    i++;
    if (data[i - 1] !== rest.charCodeAt(k)) fail(EXPECTED_IDENT, data, i);
  }
  return i;
}

/** The end of the number at `i` (its syntax only, whatever its size). */
function skipNumber(data, i) {
  const digitAt = (j) => j < data.length && isDigit(data[j]);
  // serde_json's next_char_or_null: a digit must come, and the byte that
  // is not one is consumed before the error.
  const nextDigit = (j) => {
    if (!digitAt(j)) fail(INVALID_NUMBER, data, Math.min(data.length, j + 1));
    return j + 1;
  };
  if (data[i] === 0x2d) i++;
  if (i < data.length && data[i] === 0x30) {
    i++;
    if (digitAt(i)) failPeek(INVALID_NUMBER, data, i);
  } else {
    i = digits(data, nextDigit(i));
  }
  if (i < data.length && data[i] === 0x2e) {
    if (!digitAt(i + 1)) failPeek(INVALID_NUMBER, data, i + 1);
    i = digits(data, i + 1);
  }
  if (i < data.length && (data[i] === 0x65 || data[i] === 0x45)) {
    i++;
    if (i < data.length && (data[i] === 0x2b || data[i] === 0x2d)) i++;
    i = digits(data, nextDigit(i));
  }
  return i;
}

const isHex = (b) =>
  isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
const SIMPLE_ESCAPES = new Set([0x22, 0x5c, 0x2f, 0x62, 0x66, 0x6e, 0x72, 0x74]);

// A string's plain bytes (up to a quote, a backslash or a control) are
// skipped by a regular expression over the bytes as a Latin-1 string: the
// engine's regex code, not a loop in the interpreter, walks long payloads.
// Each array's Latin-1 string is made once (the walks alternate between a
// message and the values inside it, which must not rebuild it each time).
const PLAIN = /[^"\\\x00-\x1f]*/y;
const latin1s = new WeakMap();

function plainEnd(data, i) {
  let latin1 = latin1s.get(data);
  if (latin1 === undefined) {
    const parts = [];
    for (let k = 0; k < data.length; k += 8192) {
      parts.push(String.fromCharCode.apply(null, data.subarray(k, k + 8192)));
    }
    latin1 = parts.join("");
    latin1s.set(data, latin1);
  }
  PLAIN.lastIndex = i;
  PLAIN.exec(latin1);
  return PLAIN.lastIndex;
}

/** The end of the string whose opening quote is before `i`. */
function skipString(data, i) {
  const n = data.length;
  for (;;) {
    i = plainEnd(data, i);
    if (i === n) fail(EOF_STRING, data, i);
    if (data[i] === QUOTE) return i + 1;
    if (data[i] !== BACKSLASH) fail(CONTROL, data, i);
    if (i + 1 === n) fail(EOF_STRING, data, n);
    const escape = data[i + 1];
    i += 2;
    if (escape === 0x75) {
      if (n - i < 4) fail(EOF_STRING, data, n);
      i += 4;
      for (let j = i - 4; j < i; j++) {
        if (!isHex(data[j])) fail(INVALID_ESCAPE, data, i);
      }
    } else if (!SIMPLE_ESCAPES.has(escape)) {
      fail(INVALID_ESCAPE, data, i);
    }
  }
}

/** [key token, start, end] of each member of the valid JSON object at `i`:
 * the key with its quotes, and where its value lies. */
function members(data, i) {
  const found = [];
  i = ws(data, i + 1);
  while (data[i] !== RBRACE) {
    const keyEnd = skipString(data, i + 1);
    const key = data.subarray(i, keyEnd);
    const start = ws(data, ws(data, keyEnd) + 1); // past the colon
    const end = skipValue(data, start);
    found.push([key, start, end]);
    i = ws(data, end);
    if (data[i] === COMMA) i = ws(data, i + 1);
  }
  return found;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** The value of a JSON string token, or null if it has a lone surrogate
 * escape: serde_json refuses those where it reads a string (it skips over
 * them in values it ignores). */
function stringOf(token) {
  if (!token.includes(BACKSLASH)) return decoder.decode(token.subarray(1, token.length - 1));
  const text = JSON.parse(decoder.decode(token));
  return LONE_SURROGATE.test(text) ? null : text;
}

const POW10 = Array.from({ length: 309 }, (_, k) => Number(`1e${k}`));
const NUMBER = /^(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?$/;

class OutOfRange extends Error {}

/** [significand, how many of `digits` it took]: serde_json's loop that
 * appends digits to a u64 until the next one would not fit. */
function addDigits(significand, digitText) {
  const zeros =
    significand === 0n ? digitText.length - digitText.replace(/^0+/, "").length : 0;
  for (let used = zeros; used < digitText.length; used++) {
    const bigger = significand * 10n + BigInt(digitText.charCodeAt(used) - 0x30);
    if (bigger > U64_MAX) return [significand, used];
    significand = bigger;
  }
  return [significand, digitText.length];
}

/** The valid JSON number `token` as serde_json reads it when it needs a
 * value: a BigInt if it is an integer in u64 or i64 range, else the Number
 * serde_json computes (its fast method, not always the nearest one).
 * Throws OutOfRange where serde_json says "number out of range". */
function numberOf(token) {
  if (token.length < 19 && /^[0-9]+$/.test(token)) return BigInt(token); // the usual case
  const [, sign, whole, fraction, expSign, exp] = NUMBER.exec(token);
  // Digits go into a u64 while they fit; the integer's later ones only
  // count in the exponent, the fraction's are dropped.
  let [significand, used] = addDigits(0n, whole);
  let exponent = whole.length - used;
  if (!(exponent || fraction || exp)) {
    if (!sign) return significand;
    if (significand > 0n && significand <= 1n << 63n) return -significand;
    return -Number(significand); // -0, and below i64: a float
  }
  if (fraction) {
    [significand, used] = addDigits(significand, fraction);
    exponent -= used;
  }
  if (exp) {
    if (exp.replace(/^0+/, "").length > 10 || Number(exp) > I32_MAX) {
      if (significand && expSign !== "-") throw new OutOfRange();
      return sign ? -0 : 0;
    }
    exponent += expSign === "-" ? -Number(exp) : Number(exp);
    exponent = Math.max(-(2 ** 31), Math.min(I32_MAX, exponent));
  }
  let f = Number(significand);
  for (;;) {
    if (Math.abs(exponent) < POW10.length) {
      if (exponent >= 0) {
        f *= POW10[exponent];
        if (!Number.isFinite(f)) throw new OutOfRange();
      } else {
        f /= POW10[-exponent];
      }
      break;
    }
    if (f === 0) break;
    if (exponent >= 0) throw new OutOfRange();
    f /= 1e308;
    exponent += 308;
  }
  return sign ? -f : f;
}

// ---- The message, as the Rust room reads it ----------------------------

/** Valid JSON the Rust room fails to read as a message (it then answers
 * "message must be a JSON object"): not an object, a lone surrogate in a
 * top-level key or in what `to` holds, or a number out of range there. */
class NotAnObject extends Error {}

function strictString(token) {
  const text = stringOf(token);
  if (text === null) throw new NotAnObject();
  return text;
}

function strictNumber(token) {
  try {
    return numberOf(decoder.decode(token));
  } catch (e) {
    if (e instanceof OutOfRange) throw new NotAnObject();
    throw e;
  }
}

/** What the room reads of a message: every top-level member (with
 * duplicate keys the last `to` and `id` count), and where each `from`
 * value lies. */
class Message {
  constructor(data) {
    this.data = data;
    const first = ws(data, 0);
    if (data[first] !== LBRACE) throw new NotAnObject();
    this.count = 0;
    this.to = undefined;
    this.id = undefined;
    this.froms = [];
    for (const [key, start, end] of members(data, first)) {
      this.count++;
      const name = strictString(key);
      if (name === "to") this.to = readTo(data, start, end);
      else if (name === "from") this.froms.push([start, end]);
      else if (name === "id") this.id = data.subarray(start, end);
    }
  }

  /** The message's `id`, if it is a string. */
  messageId() {
    if (this.id === undefined || this.id[0] !== QUOTE) return null;
    return stringOf(this.id);
  }
}

class Invalid extends Error {}

// What `to` holds: null, an object (a Map of its `id` and `type` as
// readField reads them; missing ones absent), or anything else (TO_INVALID,
// as is an object with `id` or `type` twice).
const TO_NULL = "null";
const TO_INVALID = "invalid";
const OTHER = {}; // a `to.id` or `to.type` that is not a string

function readTo(data, start, end) {
  const c = data[start];
  if (c === 0x6e) return TO_NULL;
  if (c === LBRACE) {
    const fields = new Map();
    let twice = false;
    for (const [key, s, e] of members(data, start)) {
      const name = strictString(key);
      if (name === "id" || name === "type") {
        twice ||= fields.has(name);
        fields.set(name, readField(data, s, e));
      }
    }
    return twice ? TO_INVALID : fields;
  }
  readField(data, start, end); // only to fail where the Rust room does
  return TO_INVALID;
}

/** A value in `to`: its text if it is a string, else OTHER. Strings are
 * read strictly, numbers for their range, and an object for its keys. */
function readField(data, start, end) {
  const c = data[start];
  if (c === QUOTE) return strictString(data.subarray(start, end));
  if (c === 0x2d || isDigit(c)) strictNumber(data.subarray(start, end));
  else if (c === LBRACE) {
    for (const [key] of members(data, start)) strictString(key);
  }
  return OTHER;
}

/** ["id", id], ["type", kind] or ["all", null]; throws Invalid. */
function route(to) {
  if (to === undefined || to === TO_NULL) return ["all", null];
  if (to === TO_INVALID) throw new Invalid("`to` must be an object or null");
  const field = (key, what) => {
    const value = to.has(key) ? to.get(key) : "";
    if (value === OTHER) throw new Invalid(what);
    return value;
  };
  const toId = field("id", "`to.id` must be a string");
  const kind = field("type", "`to.type` must be a string");
  if (toId) return ["id", toId];
  if (kind) return ["type", kind];
  return ["all", null];
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The message with from.id and from.type set to the sender's: the client's
 * bytes as they are except for the value of every `from` (or with `from`
 * added before the closing brace). */
function stamped(message, senderId, senderKind) {
  const data = message.data;
  if (message.froms.length === 0) {
    const close = data.lastIndexOf(RBRACE);
    const comma = message.count ? "," : "";
    const added = encoder.encode(`${comma}"from":`);
    const value = stamp(null, senderId, senderKind);
    return decoder.decode(concat([data.subarray(0, close), added, value, data.subarray(close)]));
  }
  const out = [];
  let copied = 0;
  for (const [start, end] of message.froms) {
    out.push(data.subarray(copied, start), stamp(data.subarray(start, end), senderId, senderKind));
    copied = end;
  }
  out.push(data.subarray(copied));
  return decoder.decode(concat(out));
}

/** The new value of a `from`. A `from` object with fields of its own keeps
 * them; the Rust room rebuilds it as a serde_json map (keys sorted, the
 * last of duplicates, numbers rewritten) or, where serde_json cannot read
 * it so, drops them. */
function stamp(old, senderId, senderKind) {
  if (old !== null && old[0] === LBRACE && !(old.length === 2 && old[1] === RBRACE)) {
    let fields = null;
    try {
      fields = jsonValue(old, true);
    } catch (e) {
      if (!(e instanceof Unreadable)) throw e;
    }
    if (fields && [...fields.keys()].some((k) => k !== "id" && k !== "type")) {
      fields.set("type", senderKind);
      fields.set("id", senderId);
      return encoder.encode(toJson(fields));
    }
  }
  return encoder.encode(dumps({ id: senderId, type: senderKind }));
}

// ---- A `from` object as a serde_json::Value -----------------------------

/** Where serde_json fails to read valid JSON as a Value. */
class Unreadable extends Error {}

const RAW_VALUE_TOKEN = "$serde_json::private::RawValue";
const DEPTH_LIMIT = 128; // serde_json's recursion limit

/** The valid JSON `data` as serde_json reads a Value (a Map if `mapOnly`):
 * Maps, arrays, strings, BigInts (integers), Numbers (floats), null and
 * booleans. */
function jsonValue(data, mapOnly = false) {
  return valueAt(data, ws(data, 0), 1, mapOnly)[0];
}

/** [value, end] of the valid JSON value at `i`, `depth` deep. */
function valueAt(data, i, depth, mapOnly = false) {
  const c = data[i];
  if (c !== LBRACKET && c !== LBRACE) {
    const end = scalarEnd(data, i);
    return [scalar(data.subarray(i, end)), end];
  }
  if (depth >= DEPTH_LIMIT) throw new Unreadable("recursion limit exceeded");
  const isObject = c === LBRACE;
  const object = new Map();
  const array = [];
  i = ws(data, i + 1);
  while (data[i] !== CLOSING[c]) {
    let key;
    if (isObject) {
      const keyEnd = skipString(data, i + 1);
      key = stringOf(data.subarray(i, keyEnd));
      if (key === null) throw new Unreadable("lone surrogate");
      i = ws(data, ws(data, keyEnd) + 1);
      if (key === RAW_VALUE_TOKEN && object.size === 0 && !mapOnly) return rawValue(data, i);
    }
    let value;
    [value, i] = valueAt(data, i, depth + 1);
    if (isObject) object.set(key, value);
    else array.push(value);
    i = ws(data, i);
    if (data[i] === COMMA) i = ws(data, i + 1);
  }
  return [isObject ? object : array, i + 1];
}

function scalarEnd(data, i) {
  const c = data[i];
  if (c === QUOTE) return skipString(data, i + 1);
  if (c === 0x2d || isDigit(c)) return skipNumber(data, i);
  return i + (c === 0x66 ? 5 : 4); // false; null, true
}

/** serde_json reads an object whose first key is its RawValue token as the
 * JSON text in that key's string, which must be the only member. */
function rawValue(data, i) {
  const end = skipValue(data, i);
  const inner = data[i] === QUOTE ? stringOf(data.subarray(i, end)) : null;
  const close = ws(data, end);
  if (inner === null || data[close] !== RBRACE) throw new Unreadable("bad raw value");
  const bytes = encoder.encode(inner);
  try {
    check(bytes);
  } catch (e) {
    if (e instanceof JsonError) throw new Unreadable("bad raw value");
    throw e;
  }
  return [jsonValue(bytes), close + 1];
}

function scalar(token) {
  const c = token[0];
  if (c === QUOTE) {
    const text = stringOf(token);
    if (text === null) throw new Unreadable("lone surrogate");
    return text;
  }
  if (c === 0x2d || isDigit(c)) {
    try {
      return numberOf(decoder.decode(token));
    } catch (e) {
      if (e instanceof OutOfRange) throw new Unreadable("number out of range");
      throw e;
    }
  }
  return { null: null, true: true, false: false }[decoder.decode(token)];
}

/** Compares strings by code point (serde_json's map order: by bytes). */
function byCodePoint(a, b) {
  const x = [...a];
  const y = [...b];
  for (let k = 0; k < Math.min(x.length, y.length); k++) {
    const d = x[k].codePointAt(0) - y[k].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** `value` as serde_json writes a Value: compact, object keys sorted. */
function toJson(value) {
  if (value instanceof Map) {
    const keys = [...value.keys()].sort(byCodePoint);
    return `{${keys.map((k) => `${dumps(k)}:${toJson(value.get(k))}`).join(",")}}`;
  }
  if (Array.isArray(value)) return `[${value.map(toJson).join(",")}]`;
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return floatText(value);
  return dumps(value);
}

/** A float as serde_json writes it (the zmij crate): the shortest digits
 * that read back, positioned plainly for decimal exponents -5 to 15
 * (always with a fraction), else as d.ddde+x / d.ddde-x. */
function floatText(f) {
  if (f === 0) return Object.is(f, -0) ? "-0.0" : "0.0";
  const [mantissa, e] = Math.abs(f).toExponential().split("e");
  const digitText = mantissa.replace(".", "").replace(/0+$/, "");
  const exponent = Number(e);
  const sign = f < 0 ? "-" : "";
  if (exponent >= 0 && exponent <= 15) {
    const whole = digitText.slice(0, exponent + 1);
    const fraction = digitText.slice(exponent + 1);
    return `${sign}${whole.padEnd(exponent + 1, "0")}.${fraction || "0"}`;
  }
  if (exponent >= -5 && exponent < 0) {
    return `${sign}0.${"0".repeat(-exponent - 1)}${digitText}`;
  }
  const point = digitText.length > 1 ? `.${digitText.slice(1)}` : "";
  return `${sign}${digitText[0]}${point}e${exponent > 0 ? "+" : "-"}${Math.abs(exponent)}`;
}

// ---- The room -----------------------------------------------------------

function systemMessage(room, kind, payload) {
  return dumps({ id: room.newId(), type: kind, from: { type: "system" }, payload });
}

function sendError(room, recipient, code, message, messageId = null) {
  const payload = { code, message, projectId: room.projectId, timestamp: room.nowMs() };
  if (messageId !== null) payload.messageId = messageId;
  room.sendToClient(recipient, systemMessage(room, "error", payload));
}

/** Why a message was not (fully) delivered: an error code, a message, the
 * message's own id, and the clients it reached all the same. */
class Rejected extends Error {
  constructor(code, message, messageId = null, delivered = 0) {
    super(message);
    this.code = code;
    this.messageId = messageId;
    this.delivered = delivered;
  }
}

const sum = (counts) => counts.reduce((a, b) => a + b, 0);

/** Validates, stamps and routes a message; how many clients it reached.
 * Throws Rejected when it is refused. */
function deliver(room, senderId, senderKind, text) {
  const data = encoder.encode(text);
  try {
    check(data);
  } catch (e) {
    if (e instanceof JsonError) throw new Rejected("invalid_json", `invalid JSON: ${e.message}`);
    throw e;
  }
  let message;
  try {
    message = new Message(data);
  } catch (e) {
    if (e instanceof NotAnObject) throw new Rejected("invalid_message", "message must be a JSON object");
    throw e;
  }
  let where, value;
  try {
    [where, value] = route(message.to);
  } catch (e) {
    if (e instanceof Invalid) throw new Rejected("invalid_message", e.message, message.messageId());
    throw e;
  }
  const out = stamped(message, senderId, senderKind);
  // The sender never gets its own message; a target of another type cannot
  // include it, so it needs no exception (as in the Rust room).
  const typed = (kind) => to.kind(kind, kind === senderKind ? [senderId] : []);
  const admins = typed(ADMIN);
  if (where === "id") {
    const reached = room.send(out, [to.client(value), admins]);
    if (reached[0] === 0) {
      throw new Rejected(
        "unknown_target",
        `no client with id ${rustDebug(value)} in this project`,
        message.messageId(),
        sum(reached),
      );
    }
    return sum(reached);
  }
  if (where === "type") return sum(room.send(out, [typed(value), admins]));
  return sum(room.send(out, [to.all([senderId])]));
}

const SERVER = "server"; // the sender of messages posted over HTTP

function httpAnswer(status, body, allow = null) {
  const headers = [["content-type", "application/json"]];
  if (allow !== null) headers.push(["allow", allow]);
  return { status, headers, body: encoder.encode(dumps(body)) };
}

const notAllowed = (allow) =>
  httpAnswer(405, { error: "method_not_allowed", message: `this path answers ${allow}` }, allow);

/** The configured delay if it parses as Rust parses a u64 (ASCII digits,
 * maybe a leading +, in range), else the default. */
function cleanupDelay(value) {
  if (value === undefined || !/^\+?[0-9]+$/.test(value)) return DEFAULT_CLEANUP_DELAY_MS;
  const delay = BigInt(value.replace(/^\+/, ""));
  return delay > U64_MAX ? DEFAULT_CLEANUP_DELAY_MS : delay;
}

class DefaultRoom extends Room {
  onConnect(client) {
    if (!ADMITTED_TYPES.includes(client.kind)) {
      throw refuse(
        400,
        "invalid_type",
        `type must be one of: ${ADMITTED_TYPES.join(", ")}; got ${rustDebug(client.kind)}`,
      );
    }
    this.cancelAlarm();
    const project = this.projectId;
    const payload = {
      clientId: client.id,
      projectId: project,
      clientCount: this.clientCount(),
      message: `connected to project ${project} as ${client.kind}`,
      timestamp: this.nowMs(),
    };
    this.sendToClient(client.id, systemMessage(this, "connected", payload));
  }

  onMessage(sender, message) {
    if (message.tag === "text") {
      try {
        deliver(this, sender.id, sender.kind, message.val);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        sendError(this, sender.id, e.code, e.message, e.messageId);
      }
    } else if (message.tag === "binary") {
      sendError(this, sender.id, "invalid_message", "binary frames are not supported; send JSON text");
    } else {
      const { size, limit } = message.val;
      sendError(
        this,
        sender.id,
        "message_too_large",
        `message of ${size} bytes is over the limit of ${limit} bytes`,
      );
    }
  }

  onClose(client, _code, _reason) {
    const remaining = this.clientCount();
    if (remaining > 0) {
      const payload = {
        clientId: client.id,
        clientType: client.kind,
        projectId: this.projectId,
        clientCount: remaining,
        timestamp: this.nowMs(),
      };
      this.broadcast(systemMessage(this, "client_left", payload));
    } else {
      this.setAlarm(cleanupDelay(this.config("cleanup-delay-ms")));
    }
  }

  // The alarm: the host removes a room that is empty with no alarm set, so
  // the inherited onAlarm, which does nothing, is all it takes.

  /** POST /messages routes its body as a message from the server; GET /
   * (and HEAD /) says how many clients the room has. */
  onFetch(request) {
    const path = request.path.split("?", 1)[0];
    const method = request.method;
    if (method === "POST" && path === "/messages") {
      let text;
      try {
        text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(request.body);
      } catch {
        return httpAnswer(400, {
          error: "invalid_json",
          message: "invalid JSON: the body is not UTF-8",
          delivered: 0,
        });
      }
      const project = this.projectId;
      try {
        return httpAnswer(202, { delivered: deliver(this, SERVER, SERVER, text), projectId: project });
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        const answer = { error: e.code, message: e.message };
        if (e.messageId !== null) answer.messageId = e.messageId;
        answer.delivered = e.delivered;
        return httpAnswer(e.code === "unknown_target" ? 404 : 400, answer);
      }
    }
    if ((method === "GET" || method === "HEAD") && path === "/") {
      return httpAnswer(200, { projectId: this.projectId, clientCount: this.clientCount() });
    }
    if (path === "/messages") return notAllowed("POST");
    if (path === "/") return notAllowed("GET, HEAD");
    return httpAnswer(404, {
      error: "not_found",
      message: "the default room answers POST /messages and GET /",
    });
  }
}

export const { onConnect, onMessage, onClose, alarm, fetch } = exportRoom(DefaultRoom);
