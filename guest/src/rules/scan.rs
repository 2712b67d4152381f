//! The room's fast pass over a message: the [`Fields`] that serde's pass
//! finds, for the messages clients send every day (an object whose keys
//! have no escapes, with `to` absent, null or an object of plain strings),
//! read by one loop over the bytes that allocates nothing but `from`'s list.
//!
//! It never decides that a message is invalid: whatever it does not fully
//! understand (an escape in a key or in `to`, a number or an object as
//! `to`'s `id` or `type`, `to` other than null or an object, nesting deeper
//! than [`MAX_DEPTH`], any syntax error) makes [`fields`] answer
//! `None`, and the caller reads the message with serde, which also words
//! the error. It answers `Some` only where serde would read the same
//! fields; a test checks the two agree on generated messages.

use super::{Field, Fields, To};
use std::borrow::Cow;
use std::num::NonZeroUsize;

/// Objects and arrays nested deeper are serde's to read (which has no limit
/// for a value it skips, and 128 for one it reads: the scanner reads only
/// `to`, three levels deep).
const MAX_DEPTH: usize = 32;

/// The bytes that end a run of plain string content: the closing quote, an
/// escape, a control character (which JSON forbids in a string).
static STOPS_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Which of the sixteen bytes from `at` are [`STOPS_STRING`] bytes (bit
/// `i` for `bytes[at + i]`), and which are not ASCII digits: with
/// WebAssembly SIMD in a room (the workspace's `.cargo/config.toml` enables
/// it for the rooms), where a byte at a time cost the room more than all
/// the rest of its pass; byte by byte natively, for the tests, which so
/// check the walk over the chunks ([`first_stop`], [`digits_end`]) that the
/// room runs.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod chunk {
    use core::arch::wasm32::{
        u8x16_bitmask, u8x16_eq, u8x16_gt, u8x16_lt, u8x16_splat, v128, v128_load, v128_or,
    };

    #[inline(always)]
    fn load(bytes: &[u8], at: usize) -> v128 {
        assert!(at + 16 <= bytes.len());
        // SAFETY: the sixteen bytes from `at` lie inside `bytes` (asserted,
        // and known by the callers, so the check goes), and `v128.load`
        // takes any alignment.
        unsafe { v128_load(bytes.as_ptr().add(at).cast::<v128>()) }
    }

    #[inline(always)]
    pub(super) fn stops(bytes: &[u8], at: usize) -> u16 {
        let chunk = load(bytes, at);
        u8x16_bitmask(v128_or(
            u8x16_lt(chunk, u8x16_splat(0x20)),
            v128_or(
                u8x16_eq(chunk, u8x16_splat(b'"')),
                u8x16_eq(chunk, u8x16_splat(b'\\')),
            ),
        ))
    }

    #[inline(always)]
    pub(super) fn non_digits(bytes: &[u8], at: usize) -> u16 {
        let chunk = load(bytes, at);
        u8x16_bitmask(v128_or(
            u8x16_lt(chunk, u8x16_splat(b'0')),
            u8x16_gt(chunk, u8x16_splat(b'9')),
        ))
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod chunk {
    fn mask(bytes: &[u8], at: usize, hit: impl Fn(u8) -> bool) -> u16 {
        bytes[at..at + 16]
            .iter()
            .enumerate()
            .fold(0, |mask, (i, &b)| mask | (u16::from(hit(b)) << i))
    }

    pub(super) fn stops(bytes: &[u8], at: usize) -> u16 {
        mask(bytes, at, |b| super::STOPS_STRING[usize::from(b)])
    }

    pub(super) fn non_digits(bytes: &[u8], at: usize) -> u16 {
        mask(bytes, at, |b| !b.is_ascii_digit())
    }
}

/// Where the first byte that is not an ASCII digit (`NON_DIGIT`) or that
/// is a [`STOPS_STRING`] byte (not `NON_DIGIT`) is in `bytes`, sixteen at a
/// time. The first sixteen are looked at before the loop (most
/// strings and numbers end in them, and a loop's head costs a wasm runtime
/// a check of its interruption), the last few by the sixteen bytes that end
/// `bytes`, the ones already looked at left out; a byte at a time only when
/// `bytes` is shorter than sixteen.
#[inline(always)]
fn first_hit<const NON_DIGIT: bool>(bytes: &[u8]) -> Option<usize> {
    let chunk = |at| {
        if NON_DIGIT {
            chunk::non_digits(bytes, at)
        } else {
            chunk::stops(bytes, at)
        }
    };
    let hit = |b: u8| {
        if NON_DIGIT {
            !b.is_ascii_digit()
        } else {
            STOPS_STRING[usize::from(b)]
        }
    };
    let len = bytes.len();
    if len < 16 {
        return bytes.iter().position(|&b| hit(b));
    }
    let found = chunk(0);
    if found != 0 {
        return Some(found.trailing_zeros() as usize);
    }
    let mut at = 16;
    while at + 16 <= len {
        let found = chunk(at);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    if at == len {
        return None;
    }
    // The last sixteen bytes, of which the first `seen` were looked at.
    let last = len - 16;
    let seen = at - last;
    let found = chunk(last) >> seen;
    (found != 0).then(|| at + found.trailing_zeros() as usize)
}

/// Where the first byte of [`STOPS_STRING`] is in `bytes`.
#[inline(always)]
pub(super) fn first_stop(bytes: &[u8]) -> Option<usize> {
    first_hit::<false>(bytes)
}

/// How many ASCII digits `bytes` starts with.
#[inline(always)]
fn digits_end(bytes: &[u8]) -> usize {
    first_hit::<true>(bytes).unwrap_or(bytes.len())
}

/// The fields of `text` if it is a JSON object the scanner reads in full;
/// `None` leaves it to serde.
pub(super) fn fields(text: &str) -> Option<Fields<'_>> {
    let mut scan = Scanner {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let mut fields = Fields {
        to: None,
        from: Vec::new(),
        id: None,
        count: 0,
    };
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if !scan.eat(b'}') {
        loop {
            let key = scan.plain_string()?;
            scan.colon()?;
            fields.count += 1;
            match key {
                "to" => fields.to = Some(scan.to()?),
                "from" => fields.from.push(scan.value_text(1)?),
                "id" => fields.id = Some(scan.value_text(1)?),
                _ => scan.skip_value(1)?,
            }
            if scan.end_of_member(b'}')? {
                break;
            }
        }
    }
    scan.whitespace();
    (scan.pos == scan.bytes.len()).then_some(fields)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    #[inline(always)]
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    #[inline(always)]
    fn eat(&mut self, want: u8) -> bool {
        let found = self.peek() == Some(want);
        self.pos += usize::from(found);
        found
    }

    /// JSON's four whitespace bytes, as serde skips them. The loop only
    /// when there is some: a loop's head costs a wasm runtime a check of
    /// its interruption (wasmtime's epoch), and clients rarely send
    /// whitespace.
    #[inline(always)]
    fn whitespace(&mut self) {
        if let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos = whitespace_end(self.bytes, self.pos);
        }
    }

    /// `:` between a key and its value, with the whitespace around it.
    #[inline(always)]
    fn colon(&mut self) -> Option<()> {
        self.whitespace();
        self.expect(b':')?;
        self.whitespace();
        Some(())
    }

    /// After a member or an element: `Some(false)` at a `,` (and the
    /// whitespace after it), `Some(true)` at `close`.
    #[inline(always)]
    fn end_of_member(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        match self.next()? {
            b',' => {
                self.whitespace();
                Some(false)
            }
            b if b == close => Some(true),
            _ => None,
        }
    }

    /// Skips plain string content up to the next quote, escape or control
    /// character, and takes that byte.
    #[inline(always)]
    fn skip_to_stop(&mut self) -> Option<u8> {
        self.pos += first_stop(self.bytes.get(self.pos..)?)?;
        self.next()
    }

    /// A string without escapes: its content. An escape is serde's to
    /// decode (a key `"t\u006f"` is `to`).
    #[inline(always)]
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        (self.skip_to_stop()? == b'"').then_some(())?;
        // Both ends sit next to a quote, so they are character boundaries.
        self.text.get(start..self.pos - 1)
    }

    /// Any string, its escapes checked as serde checks those of a value it
    /// skips (not decoded, so a lone surrogate passes, as there).
    #[inline(always)]
    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            match self.skip_to_stop()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.bytes.get(self.pos..self.pos + 4)?;
                        hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                        self.pos += 4;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then_some(())?;
        self.pos = end;
        Some(())
    }

    #[inline(always)]
    fn digits(&mut self) {
        if let Some(rest) = self.bytes.get(self.pos..) {
            self.pos += digits_end(rest);
        }
    }

    #[inline(always)]
    fn at_least_one_digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())?;
        self.digits();
        Some(())
    }

    /// A number's syntax (serde does not check the range of a number it
    /// skips).
    #[inline(always)]
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.at_least_one_digit()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.at_least_one_digit()?;
        }
        Some(())
    }

    /// Any value, validated and skipped. `depth` counts the objects and
    /// arrays around it. Scalars here, objects and arrays in
    /// [`skip_container`].
    #[inline(always)]
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                self.pos = skip_container(self.text, self.pos, depth)?.get();
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// A value's text, exactly as it lies in the message.
    #[inline(always)]
    fn value_text(&mut self, depth: usize) -> Option<&'a str> {
        let start = self.pos;
        self.skip_value(depth)?;
        // A value starts and ends at ASCII bytes: character boundaries.
        self.text.get(start..self.pos)
    }

    /// The value of `to`: null, or an object. Anything else is refused, and
    /// serde words why.
    #[inline(always)]
    fn to(&mut self) -> Option<To<'a>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(To::Null);
        }
        self.expect(b'{')?;
        self.whitespace();
        let (mut id, mut kind, mut twice) = (None, None, false);
        if !self.eat(b'}') {
            loop {
                let key = self.plain_string()?;
                self.colon()?;
                let slot = match key {
                    "id" => Some(&mut id),
                    "type" => Some(&mut kind),
                    _ => None,
                };
                match slot {
                    Some(slot) => {
                        twice |= slot.is_some();
                        *slot = Some(self.target_field()?);
                    }
                    None => self.skip_value(2)?,
                }
                if self.end_of_member(b'}')? {
                    break;
                }
            }
        }
        Some(if twice {
            To::Invalid
        } else {
            To::Object { id, kind }
        })
    }

    /// `to.id` or `to.type`: a plain string, or a value the route refuses
    /// (null, a boolean, an array). A number (whose range serde checks
    /// here), an escaped string or an object (whose keys serde decodes) is
    /// serde's to read.
    #[inline(always)]
    fn target_field(&mut self) -> Option<Field<'a>> {
        match self.peek()? {
            b'"' => Some(Field::Str(Cow::Borrowed(self.plain_string()?))),
            b'n' | b't' | b'f' | b'[' => {
                self.skip_value(2)?;
                Some(Field::Other)
            }
            _ => None,
        }
    }
}

/// Where the whitespace from `pos` ends. Apart from the scanner, as
/// [`skip_container`] is, for the same reason.
#[inline(never)]
fn whitespace_end(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// The object or array that starts at `pos` in `text`, validated and
/// skipped: the position after it. A function apart, handed the text and
/// the position rather than the scanner, so that no scanner's address is
/// taken: its position then lives in a register (a wasm local), where a
/// recursive `&mut self` method kept it in memory, a store and a load at
/// every step. `NonZero` (a container takes two bytes at least): one
/// number to return, which a wasm function returns as a value, where an
/// `Option<usize>` goes through memory.
#[inline(never)]
fn skip_container(text: &str, pos: usize, depth: usize) -> Option<NonZeroUsize> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let mut scan = Scanner {
        text,
        bytes: text.as_bytes(),
        pos,
    };
    let close = match scan.next()? {
        b'{' => b'}',
        _ => b']',
    };
    scan.whitespace();
    if !scan.eat(close) {
        loop {
            if close == b'}' {
                scan.skip_string()?;
                scan.colon()?;
            }
            scan.skip_value(depth + 1)?;
            if scan.end_of_member(close)? {
                break;
            }
        }
    }
    NonZeroUsize::new(scan.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of every shape the room meets: the everyday ones the
    /// scanner must read itself, and the rarer ones it leaves to serde.
    const MESSAGES: &[&str] = &[
        r#"{"payload":{"seq":1,"t":2,"pad":"xxxxxxxxxx"},"type":"bench","id":"1","to":{"type":"runtime"}}"#,
        r#"{"to":{"id":"6f1c"},"data":[1,2,{"a":null}],"ok":true}"#,
        r#"{"to":null,"from":{"id":"x","type":"y","extra":1},"id":7}"#,
        r#"{"from":"me","from":{},"to":{"id":"a","type":"b","x":[true,false]}}"#,
        " { \"to\" : { \"id\" : \"a\" } , \"text\" : \"h\u{e9} \\\" \\\\ \\u00e9 \\n\" } \n",
        r#"{}"#,
        r#"{"to":{}}"#,
        r#"{"to":{"id":"a","id":"b"}}"#,
        r#"{"to":{"id":null,"type":false}}"#,
        r#"{"to":{"type":[1,[2]]}}"#,
        r#"{"a":1e400,"b":-0.5e-3,"c":[[[[]]]],"d":"\ud800"}"#,
        r#"{"to":{"id":5}}"#,
        r#"{"to":{"id":{"\ud800":1}}}"#,
        r#"{"to":"x"}"#,
        r#"{"t\u006f":{"id":"a"}}"#,
        r#"{"to":{"i\u0064":"a"}}"#,
        r#"{"to":{"id":"\u0061"}}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12g4"}"#,
        r#"[1,2]"#,
        r#""str""#,
        r#"{"a":1} x"#,
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"nul\u{0}\"}",
        "\u{feff}{}",
    ];

    /// What serde's pass finds, the reference the scanner must match.
    fn by_serde(text: &str) -> Option<Fields<'_>> {
        serde_json::from_str::<Fields<'_>>(text).ok()
    }

    fn agrees(text: &str) -> bool {
        match fields(text) {
            Some(scanned) => {
                assert_eq!(Some(&scanned), by_serde(text).as_ref(), "{text:?}");
                true
            }
            None => false,
        }
    }

    /// The walk over sixteen-byte chunks (the first, the middle ones, the
    /// overlapping last) finds what a byte-by-byte search finds, wherever
    /// the byte sought is and whatever the length.
    #[test]
    fn the_chunked_searches_find_the_first_byte_sought() {
        for len in 0..70 {
            for at in 0..=len {
                for (filler, sought) in [(b'a', b'"'), (b'7', b'\\'), (b'z', 0x1f)] {
                    let mut bytes = vec![filler; len];
                    if at < len {
                        bytes[at] = sought;
                    }
                    let found = (at < len).then_some(at);
                    assert_eq!(first_stop(&bytes), found, "{len} {at}");
                    // And a second one later does not hide it.
                    if at + 3 < len {
                        bytes[at + 3] = b'"';
                        assert_eq!(first_stop(&bytes), Some(at), "{len} {at}");
                    }
                }
                for non_digit in [b'.', b'/', b':', b'e', 0x80] {
                    let mut digits = vec![b'4'; len];
                    if at < len {
                        digits[at] = non_digit;
                    }
                    assert_eq!(digits_end(&digits), at, "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn everyday_messages_are_read_without_serde_and_as_serde_reads_them() {
        let scanned: Vec<&str> = MESSAGES.iter().copied().filter(|m| agrees(m)).collect();
        // What the scanner must read itself: the messages of the load tool
        // and of most clients, null and empty `to`, duplicate fields.
        for everyday in &MESSAGES[..11] {
            assert!(scanned.contains(everyday), "left to serde: {everyday:?}");
        }
        // What it must leave to serde: escaped keys and `to` strings,
        // numbers and objects in `to`, every syntax error.
        for rare in &MESSAGES[11..] {
            assert!(!scanned.contains(rare), "read by the scanner: {rare:?}");
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_left_to_serde() {
        let nested =
            |depth: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        assert!(agrees(&nested(MAX_DEPTH - 2)));
        assert!(!agrees(&nested(MAX_DEPTH)));
        assert!(by_serde(&nested(MAX_DEPTH)).is_some());
    }

    /// Pieces that move a message across JSON's edges when spliced in.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\\",
        "\\\"",
        "\\u00e9",
        "\\ud800",
        "\\u12",
        "0",
        "1",
        "-1",
        "1.5",
        "1e5",
        "1e400",
        "-0",
        ".",
        "e",
        "+",
        "true",
        "false",
        "null",
        "t",
        " ",
        "\n",
        "\t",
        "\u{1}",
        "\u{e9}",
        "\"to\"",
        "\"from\"",
        "\"id\"",
        "\"type\"",
        "\"t\\u006f\"",
        "{\"id\":\"a\"}",
        "{}",
        "[]",
        "x",
    ];

    /// Thousands of messages mutated from the ones above, by a fixed seed:
    /// wherever the scanner reads one, serde reads the same fields.
    #[test]
    fn mutated_messages_are_read_as_serde_reads_them_or_left_to_serde() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let (mut scanned, mut refused_by_serde) = (0, 0);
        for _ in 0..40_000 {
            let mut text: Vec<char> = MESSAGES[random(MESSAGES.len())].chars().collect();
            for _ in 0..1 + random(3) {
                let at = random(text.len() + 1);
                match random(3) {
                    0 => {
                        let piece = PIECES[random(PIECES.len())];
                        text.splice(at..at, piece.chars());
                    }
                    1 => {
                        let end = (at + 1 + random(3)).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    _ => {
                        let end = (at + 1).min(text.len());
                        let piece = PIECES[random(PIECES.len())];
                        text.splice(at.min(end)..end, piece.chars());
                    }
                }
            }
            let text: String = text.into_iter().collect();
            scanned += usize::from(agrees(&text));
            refused_by_serde += usize::from(by_serde(&text).is_none());
        }
        // Both kinds are well represented, so the comparison means something.
        assert!(scanned > 1_500, "scanned {scanned}");
        assert!(refused_by_serde > 10_000, "refused {refused_by_serde}");
    }
}
