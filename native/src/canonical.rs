//! RFC 8785 (JSON Canonicalization Scheme, "JCS") canonical JSON.
//!
//! [`canonicalize`] reads JSON text with a strict RFC 8259 parser and returns the one spelling
//! JCS assigns to the data it holds, so equal data hashes equal however it was written:
//!
//! - object members sorted by the UTF-16 code units of their keys (not by UTF-8 bytes: the two
//!   orders differ for keys holding characters above U+FFFF);
//! - no insignificant whitespace;
//! - strings re-escaped the JCS way: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other characters
//!   below U+0020 as `\u00xx` (lowercase hex), everything else as literal UTF-8, `/`, U+2028 and
//!   U+2029 included;
//! - every number parsed to the nearest IEEE 754 double and printed with the ECMAScript
//!   Number-to-String algorithm (via `ryu-js`): `1`, `1.0`, `1e0` and `10e-1` all become `1`,
//!   `-0` becomes `0`, `1e21` becomes `1e+21`.
//!
//! # Number semantics
//!
//! JCS models numbers as doubles, exactly like JavaScript. Integers above 2^53 therefore lose
//! precision: `9007199254740993` canonicalizes to `9007199254740992`, so two documents differing
//! only there hash equal. Callers that need exact big integers must send them as strings.
//! Numbers too large for a double (`1e400`) are rejected; numbers too small for one (`1e-400`)
//! round to `0` like everywhere else in IEEE 754.
//!
//! # What is rejected
//!
//! Anything RFC 8259 does not allow or JCS cannot represent unambiguously, each with a message
//! naming the problem and its byte offset: empty input, a byte order mark, invalid UTF-8,
//! control characters in strings, invalid escapes, lone surrogates in `\u` escapes, duplicate
//! object keys (compared after unescaping, so `"a"` and `"\u0061"` collide), `NaN` and
//! `Infinity`, numbers that overflow, leading zeros, trailing commas, trailing data after the
//! value, and nesting deeper than [`MAX_DEPTH`].
//!
//! # How it works
//!
//! One left-to-right pass with an explicit stack (no recursion, so hostile nesting cannot
//! exhaust the native stack): every token is validated and written to the output in canonical
//! form as it is read, with no intermediate tree. Each object member's output span is recorded
//! with its decoded key; when the object closes, members already in order (the common case for
//! machine-written JSON) stay where they are, otherwise the spans are moved into sorted order.
//! A member is therefore moved at most once per enclosing unsorted object, i.e. at most
//! [`MAX_DEPTH`] times in the worst case, and in practice once or twice.

use std::cmp::Ordering;
use std::fmt;

/// Deepest nesting of arrays and objects accepted: `[[1]]` has depth 2.
///
/// The parser keeps its stack on the heap, so this is a bound on hostile input rather than on
/// stack space. 128 is far beyond any document the gateway hashes (analytics are a few levels
/// deep) and matches the recursion limit of common JSON libraries (serde_json), so documents
/// they accept are accepted here too.
pub const MAX_DEPTH: usize = 128;

/// Why text is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalError(pub String);

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonicalError {}

/// Parses JSON text and returns its RFC 8785 canonical form.
///
/// # Errors
///
/// [`CanonicalError`] when `input` is not a single, strictly valid RFC 8259 JSON value that JCS
/// can represent; the message names the problem and its byte offset.
pub fn canonicalize(input: &[u8]) -> Result<String, CanonicalError> {
    Canonicalizer::new(input).run()
}

/// The longest key or number quoted back in an error message.
const EXCERPT_CHARS: usize = 40;

/// A byte order mark, which RFC 8259 forbids in JSON text sent over a network.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One object member seen so far: its decoded key and where its `"key":value` text sits.
#[derive(Clone, Copy)]
struct Member {
    /// Span of the decoded (unescaped) key in `Canonicalizer::keys`.
    key_start: usize,
    key_end: usize,
    /// Input offset of the key's opening quote, for error messages.
    key_offset: usize,
    /// Span of `"key":value` in the output.
    out_start: usize,
    out_end: usize,
}

/// An array or object that is open at the current position.
enum Frame {
    Array,
    Object {
        /// Where this object's members start in `Canonicalizer::members`.
        members_base: usize,
        /// Where this object's decoded keys start in `Canonicalizer::keys`.
        keys_base: usize,
        /// Output offset just after the `{`.
        body_start: usize,
    },
}

struct Canonicalizer<'a> {
    input: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    stack: Vec<Frame>,
    /// Members of every open object, innermost last.
    members: Vec<Member>,
    /// Decoded keys of every open object, innermost last.
    keys: Vec<u8>,
    /// Reused copy of an object's body while its members are reordered.
    scratch: Vec<u8>,
    numbers: ryu_js::Buffer,
}

impl<'a> Canonicalizer<'a> {
    fn new(input: &'a [u8]) -> Self {
        Canonicalizer {
            input,
            pos: 0,
            // Canonical text is rarely longer than its source (escapes like `\/` and `\u00e9`
            // shrink, only control characters and exotic number spellings grow).
            out: Vec::with_capacity(input.len()),
            stack: Vec::new(),
            members: Vec::new(),
            keys: Vec::new(),
            scratch: Vec::new(),
            numbers: ryu_js::Buffer::new(),
        }
    }

    fn run(mut self) -> Result<String, CanonicalError> {
        if self.input.is_empty() {
            return Err(CanonicalError(
                "empty input: JSON text must contain a value".into(),
            ));
        }
        if self.input.starts_with(BOM) {
            return Err(CanonicalError(
                "JSON text starts with a byte order mark (U+FEFF) at byte 0: remove it".into(),
            ));
        }
        self.skip_whitespace();
        if self.pos == self.input.len() {
            return Err(CanonicalError(
                "input is only whitespace: JSON text must contain a value".into(),
            ));
        }
        loop {
            if !self.value()? {
                // A container opened and is waiting for its first element.
                continue;
            }
            // A value is complete: close every container it completes, then either stop or
            // position on the next element.
            loop {
                self.skip_whitespace();
                let at = self.pos;
                let next = self.peek();
                match self.stack.last() {
                    None => return self.finish(),
                    Some(Frame::Array) => match next {
                        Some(b',') => {
                            self.pos += 1;
                            self.out.push(b',');
                            self.reject_trailing_comma(at, b']')?;
                            break;
                        }
                        Some(b']') => {
                            self.pos += 1;
                            self.out.push(b']');
                            self.stack.pop();
                        }
                        _ => return Err(self.unexpected(at, "',' or ']' after an array element")),
                    },
                    Some(Frame::Object { .. }) => {
                        if let Some(member) = self.members.last_mut() {
                            member.out_end = self.out.len();
                        }
                        match next {
                            Some(b',') => {
                                self.pos += 1;
                                self.out.push(b',');
                                self.reject_trailing_comma(at, b'}')?;
                                self.member_key()?;
                                break;
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                self.close_object()?;
                            }
                            _ => {
                                return Err(self.unexpected(at, "',' or '}' after an object member"))
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks nothing but whitespace follows the value and hands over the output.
    fn finish(self) -> Result<String, CanonicalError> {
        if self.pos != self.input.len() {
            return Err(error(
                self.pos,
                "trailing data after the JSON value (only one value is allowed)",
            ));
        }
        // Valid by construction (validated input runs, encoded chars, ASCII); checking is
        // cheap next to parsing and keeps this module free of `unsafe`.
        String::from_utf8(self.out)
            .map_err(|_| CanonicalError("internal error: canonical output is not UTF-8".into()))
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// After a `,` at `comma`: the container must not close right away.
    fn reject_trailing_comma(&mut self, comma: usize, close: u8) -> Result<(), CanonicalError> {
        self.skip_whitespace();
        if self.peek() == Some(close) {
            return Err(error(
                comma,
                format_args!("trailing comma before '{}'", close as char),
            ));
        }
        Ok(())
    }

    /// Reads one value at the current position (after whitespace). Scalars are written out
    /// whole and return `true`; `[` and `{` open a frame and return `false` when the container
    /// has an element to read next, `true` when it was empty and is already closed.
    fn value(&mut self) -> Result<bool, CanonicalError> {
        self.skip_whitespace();
        let at = self.pos;
        match self.peek() {
            Some(b'{') => {
                self.open(at)?;
                self.out.push(b'{');
                self.stack.push(Frame::Object {
                    members_base: self.members.len(),
                    keys_base: self.keys.len(),
                    body_start: self.out.len(),
                });
                self.skip_whitespace();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    self.close_object()?;
                    return Ok(true);
                }
                self.member_key()?;
                Ok(false)
            }
            Some(b'[') => {
                self.open(at)?;
                self.out.push(b'[');
                self.stack.push(Frame::Array);
                self.skip_whitespace();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    self.out.push(b']');
                    self.stack.pop();
                    return Ok(true);
                }
                Ok(false)
            }
            Some(b'"') => {
                self.string(false)?;
                Ok(true)
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok(true)
            }
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            _ => {
                self.reject_non_finite(at)?;
                Err(self.unexpected(at, "a JSON value"))
            }
        }
    }

    /// Steps over `[` or `{` at `at`, refusing to nest deeper than [`MAX_DEPTH`].
    fn open(&mut self, at: usize) -> Result<(), CanonicalError> {
        if self.stack.len() == MAX_DEPTH {
            return Err(error(
                at,
                format_args!("arrays and objects nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.pos += 1;
        Ok(())
    }

    fn literal(&mut self, word: &'static str) -> Result<bool, CanonicalError> {
        if !self.input[self.pos..].starts_with(word.as_bytes()) {
            return Err(error(
                self.pos,
                format_args!("invalid literal (expected '{word}')"),
            ));
        }
        self.pos += word.len();
        self.out.extend_from_slice(word.as_bytes());
        Ok(true)
    }

    /// JavaScript-style `NaN` / `Infinity` / `-Infinity` get their own message: they are the
    /// usual output of `json.dumps(float("nan"))` and deserve a clearer answer than
    /// "unexpected 'N'".
    fn reject_non_finite(&self, at: usize) -> Result<(), CanonicalError> {
        let rest = &self.input[at..];
        for token in ["NaN", "Infinity", "-Infinity"] {
            if rest.starts_with(token.as_bytes()) {
                return Err(error(
                    at,
                    format_args!(
                        "'{token}' is not a number in JSON (JSON has no NaN/Infinity): \
                         send a finite number, null or a string"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads a member's key (which must come next, after whitespace) and its `:`, and opens
    /// the member's output span.
    fn member_key(&mut self) -> Result<(), CanonicalError> {
        self.skip_whitespace();
        let at = self.pos;
        if self.peek() != Some(b'"') {
            return Err(self.unexpected(at, "a string key for an object member"));
        }
        let out_start = self.out.len();
        let key_start = self.keys.len();
        self.string(true)?;
        self.members.push(Member {
            key_start,
            key_end: self.keys.len(),
            key_offset: at,
            out_start,
            out_end: out_start,
        });
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.unexpected(self.pos, "':' after an object key"));
        }
        self.pos += 1;
        self.out.push(b':');
        Ok(())
    }

    /// Sorts the innermost object's members (rejecting duplicate keys) and writes its `}`.
    fn close_object(&mut self) -> Result<(), CanonicalError> {
        let Some(Frame::Object {
            members_base,
            keys_base,
            body_start,
        }) = self.stack.pop()
        else {
            unreachable!("close_object without an open object");
        };
        let keys = &self.keys;
        let members = &mut self.members[members_base..];
        let key = |m: &Member| &keys[m.key_start..m.key_end];
        let ordered = members
            .windows(2)
            .all(|pair| cmp_utf16(key(&pair[0]), key(&pair[1])) == Ordering::Less);
        if !ordered {
            // Stable, so equal keys stay in input order and the later one is the duplicate.
            members.sort_by(|a, b| cmp_utf16(key(a), key(b)));
            let duplicate = members
                .windows(2)
                .filter(|pair| key(&pair[0]) == key(&pair[1]))
                .map(|pair| pair[1])
                .min_by_key(|m| m.key_offset);
            if let Some(dup) = duplicate {
                return Err(error(
                    dup.key_offset,
                    format_args!(
                        "duplicate object key {} (keys must be unique after unescaping)",
                        excerpt(key(&dup))
                    ),
                ));
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.out[body_start..]);
            self.out.truncate(body_start);
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(
                    &self.scratch[m.out_start - body_start..m.out_end - body_start],
                );
            }
        }
        self.out.push(b'}');
        self.members.truncate(members_base);
        self.keys.truncate(keys_base);
        Ok(())
    }

    /// Reads a string at the current `"` and writes its canonical form; a key is also
    /// decoded into `self.keys` for sorting and duplicate detection.
    fn string(&mut self, key: bool) -> Result<(), CanonicalError> {
        let open = self.pos;
        let input = self.input;
        let mut pos = open + 1;
        let mut run = pos;
        self.out.push(b'"');
        loop {
            let Some(&b) = input.get(pos) else {
                return Err(error(open, "unterminated string starting"));
            };
            if PLAIN[b as usize] {
                pos += 1;
                continue;
            }
            if b >= 0x80 {
                pos += utf8_len(input, pos).ok_or_else(|| invalid_utf8(input, pos))?;
                continue;
            }
            // Everything since `run` is plain text: canonical and decoded forms coincide.
            self.out.extend_from_slice(&input[run..pos]);
            if key {
                self.keys.extend_from_slice(&input[run..pos]);
            }
            match b {
                b'"' => {
                    self.out.push(b'"');
                    self.pos = pos + 1;
                    return Ok(());
                }
                b'\\' => {
                    let (c, len) = escape(input, pos)?;
                    pos += len;
                    run = pos;
                    write_escaped(&mut self.out, c);
                    if key {
                        self.keys
                            .extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                _ => {
                    return Err(error(
                        pos,
                        format_args!(
                            "unescaped control character U+{b:04X} in a string \
                             (write it as {})",
                            escaped_control(b as char)
                        ),
                    ))
                }
            }
        }
    }

    /// Reads a number and writes its ECMAScript form.
    fn number(&mut self) -> Result<(), CanonicalError> {
        let input = self.input;
        let start = self.pos;
        let mut pos = start;
        if input[pos] == b'-' {
            pos += 1;
        }
        match input.get(pos) {
            Some(b'0') => {
                pos += 1;
                if let Some(b'0'..=b'9') = input.get(pos) {
                    return Err(error(
                        start,
                        "number with a leading zero (JSON does not allow them)",
                    ));
                }
            }
            Some(b'1'..=b'9') => pos = skip_digits(input, pos),
            _ => {
                self.reject_non_finite(start)?;
                return Err(error(start, "'-' must be followed by a digit"));
            }
        }
        let int_digits = pos - start - usize::from(input[start] == b'-');
        let mut integer = true;
        if input.get(pos) == Some(&b'.') {
            pos = digits_after(input, pos + 1, "a digit after the decimal point")?;
            integer = false;
        }
        if let Some(b'e' | b'E') = input.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = input.get(pos) {
                pos += 1;
            }
            pos = digits_after(input, pos, "a digit in the exponent")?;
            integer = false;
        }
        self.pos = pos;
        let text = &input[start..pos];
        // Integers of up to 15 digits are exact doubles that ECMAScript prints digit for
        // digit, so the (already leading-zero-free) source text is the canonical form.
        if integer && int_digits <= 15 {
            if text == b"-0" {
                self.out.push(b'0');
            } else {
                self.out.extend_from_slice(text);
            }
            return Ok(());
        }
        let value: f64 = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| error(start, "number that cannot be parsed"))?;
        if !value.is_finite() {
            return Err(error(
                start,
                format_args!(
                    "number {} is too large for a double (it overflows to infinity)",
                    excerpt(text)
                ),
            ));
        }
        if value == 0.0 {
            // ECMAScript prints -0 as "0"; a double has one canonical zero.
            self.out.push(b'0');
        } else {
            self.out
                .extend_from_slice(self.numbers.format_finite(value).as_bytes());
        }
        Ok(())
    }

    /// The error for an unexpected byte (or the end of input) at `at` where `expected` was due.
    fn unexpected(&self, at: usize, expected: &str) -> CanonicalError {
        let input = self.input;
        let Some(&b) = input.get(at) else {
            return error(
                at,
                format_args!("unexpected end of input, expected {expected}"),
            );
        };
        let found = match b {
            0x21..=0x7E => format!("'{}'", b as char),
            0x00..=0x7F => format!("U+{b:04X}"),
            _ => match utf8_len(input, at) {
                None => return invalid_utf8(input, at),
                Some(len) => match std::str::from_utf8(&input[at..at + len]) {
                    Ok(c) => format!("'{c}' (U+{:04X})", c.chars().next().map_or(0, u32::from)),
                    Err(_) => return invalid_utf8(input, at),
                },
            },
        };
        error(at, format_args!("unexpected {found}, expected {expected}"))
    }
}

/// An error message ending in the byte offset it is about.
fn error(at: usize, what: impl fmt::Display) -> CanonicalError {
    CanonicalError(format!("{what} at byte {at}"))
}

fn invalid_utf8(input: &[u8], at: usize) -> CanonicalError {
    error(
        at,
        format_args!(
            "invalid UTF-8 (byte 0x{:02x})",
            input.get(at).copied().unwrap_or(0)
        ),
    )
}

/// Bytes that stand for themselves inside a string in both the source and the canonical form:
/// printable ASCII other than `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// Length of the well-formed UTF-8 sequence starting at `at` (whose first byte is not ASCII),
/// per RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF.
fn utf8_len(input: &[u8], at: usize) -> Option<usize> {
    let (len, second) = match input[at] {
        0xC2..=0xDF => (2, 0x80..=0xBF),
        0xE0 => (3, 0xA0..=0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
        0xED => (3, 0x80..=0x9F),
        0xF0 => (4, 0x90..=0xBF),
        0xF1..=0xF3 => (4, 0x80..=0xBF),
        0xF4 => (4, 0x80..=0x8F),
        _ => return None,
    };
    if !second.contains(input.get(at + 1)?) {
        return None;
    }
    for k in 2..len {
        if input.get(at + k)? & 0xC0 != 0x80 {
            return None;
        }
    }
    Some(len)
}

fn skip_digits(input: &[u8], mut pos: usize) -> usize {
    while let Some(b'0'..=b'9') = input.get(pos) {
        pos += 1;
    }
    pos
}

/// Skips one or more digits at `pos`, or names what is missing.
fn digits_after(input: &[u8], pos: usize, expected: &str) -> Result<usize, CanonicalError> {
    let end = skip_digits(input, pos);
    if end == pos {
        return Err(error(pos, format_args!("expected {expected}")));
    }
    Ok(end)
}

/// Decodes the escape at `at` (a `\`): the character and how many bytes it took.
fn escape(input: &[u8], at: usize) -> Result<(char, usize), CanonicalError> {
    let c = match input.get(at + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return unicode_escape(input, at),
        Some(&b) if b.is_ascii_graphic() => {
            return Err(error(
                at,
                format_args!(
                    "invalid escape '\\{}' (JSON allows \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                    b as char
                ),
            ))
        }
        Some(_) => return Err(error(at, "invalid escape")),
        None => return Err(error(at, "unterminated escape")),
    };
    Ok((c, 2))
}

/// Decodes `\uXXXX` at `at`, joining a surrogate pair written as two escapes.
fn unicode_escape(input: &[u8], at: usize) -> Result<(char, usize), CanonicalError> {
    let unit = hex4(input, at)?;
    let lone = |unit: u16| {
        error(
            at,
            format_args!(
                "lone surrogate \\u{unit:04x} (a \\uD800-\\uDBFF escape must be followed by \
                 a \\uDC00-\\uDFFF escape)"
            ),
        )
    };
    match unit {
        0xD800..=0xDBFF => {
            let low = if input.get(at + 6..at + 8) == Some(b"\\u") {
                hex4(input, at + 6)?
            } else {
                return Err(lone(unit));
            };
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(lone(unit));
            }
            let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
            let c = char::from_u32(code).ok_or_else(|| lone(unit))?;
            Ok((c, 12))
        }
        0xDC00..=0xDFFF => Err(lone(unit)),
        _ => {
            let c = char::from_u32(u32::from(unit)).ok_or_else(|| lone(unit))?;
            Ok((c, 6))
        }
    }
}

/// The four hex digits of the `\u` escape at `at`.
fn hex4(input: &[u8], at: usize) -> Result<u16, CanonicalError> {
    let digits = input
        .get(at + 2..at + 6)
        .ok_or_else(|| error(at, "truncated \\u escape (it needs four hex digits)"))?;
    let mut unit = 0u16;
    for &d in digits {
        let nibble = (d as char)
            .to_digit(16)
            .ok_or_else(|| error(at, "invalid \\u escape (it needs four hex digits)"))?;
        unit = (unit << 4) | nibble as u16;
    }
    Ok(unit)
}

/// Writes `c` as JCS spells it inside a string.
fn write_escaped(out: &mut Vec<u8>, c: char) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{0}'..='\u{1f}' => out.extend_from_slice(escaped_control(c).as_bytes()),
        _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
    }
}

/// The JCS escape of a control character below U+0020.
fn escaped_control(c: char) -> String {
    match c {
        '\u{8}' => "\\b".into(),
        '\u{c}' => "\\f".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        _ => format!("\\u{:04x}", u32::from(c)),
    }
}

/// Compares two UTF-8 strings by their UTF-16 code units, the order JCS sorts keys in.
///
/// UTF-8 byte order is code point order, which agrees with UTF-16 order except that UTF-16
/// puts characters above U+FFFF (surrogate pairs, 0xD800..) before U+E000..U+FFFF. Two valid
/// strings that agree up to their first differing byte share their character boundaries, so
/// that byte is either a continuation byte of characters with the same lead byte (same class,
/// byte order is right) or two lead bytes, where only the 4-byte-vs-EE/EF case flips.
fn cmp_utf16(a: &[u8], b: &[u8]) -> Ordering {
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let (x, y) = (a[i], b[i]);
    let astral = |lead: u8| lead >= 0xF0;
    let upper_bmp = |lead: u8| lead == 0xEE || lead == 0xEF;
    if astral(x) && upper_bmp(y) {
        Ordering::Less
    } else if upper_bmp(x) && astral(y) {
        Ordering::Greater
    } else {
        x.cmp(&y)
    }
}

/// A key or number for an error message, quoted and cut short when long.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        canonicalize(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?} rejected: {e}"))
    }

    fn rejection(input: &[u8]) -> String {
        match canonicalize(input) {
            Ok(out) => panic!("{:?} accepted as {out:?}", String::from_utf8_lossy(input)),
            Err(e) => e.0,
        }
    }

    fn assert_rejected(input: &[u8], fragments: &[&str]) {
        let message = rejection(input);
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "{:?}: message {message:?} lacks {fragment:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc8785_sample_object() {
        // RFC 8785 section 3.2.2.
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50,
                      2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_sort_order_by_utf16_code_units() {
        // RFC 8785 section 3.2.3.
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        assert_eq!(
            canon(input),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\
             \"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    #[test]
    fn rfc8785_appendix_b_numbers() {
        let table = [
            (0x0000000000000000_u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in table {
            let value = f64::from_bits(bits);
            // Two spellings of the same double: Rust's shortest round-trip scientific form
            // and a 17-significant-digit form.
            for text in [format!("{value:e}"), format!("{value:.16e}")] {
                assert_eq!(canon(&text), expected, "{bits:016x} spelled {text}");
            }
        }
    }

    #[test]
    fn number_spellings_of_one_value_agree() {
        for text in [
            "1",
            "1.0",
            "1e0",
            "10e-1",
            "1E+0",
            "0.1e1",
            "1.000000000000000000001",
        ] {
            assert_eq!(canon(text), "1", "{text}");
        }
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("-0.0e5"), "0");
        assert_eq!(canon("1e21"), "1e+21");
        assert_eq!(canon("1e-7"), "1e-7");
        assert_eq!(canon("0.000001"), "0.000001");
        assert_eq!(canon("333333333.33333329"), "333333333.3333333");
        assert_eq!(canon("9007199254740993"), "9007199254740992");
        assert_eq!(canon("123456789012345"), "123456789012345");
        assert_eq!(canon("-123456789012345678"), "-123456789012345680");
        assert_eq!(canon("1e-400"), "0");
    }

    #[test]
    fn strings_are_escaped_the_jcs_way() {
        assert_eq!(
            canon(r#""\b\f\n\r\t\u0000\u001F\u007f\"\\\/""#),
            "\"\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}\\\"\\\\/\""
        );
        assert_eq!(canon(r#""\u2028\u2029\u00e9é""#), "\"\u{2028}\u{2029}éé\"");
        assert_eq!(canon(r#""\uD834\uDD1E𝄞""#), "\"𝄞𝄞\"");
    }

    #[test]
    fn whitespace_and_nesting_are_normalised() {
        assert_eq!(
            canon(" \t\r\n{ \"b\" : [ 1 , { \"d\":null, \"c\" : [] } ] , \"a\" : { } }\n"),
            r#"{"a":{},"b":[1,{"c":[],"d":null}]}"#
        );
        assert_eq!(canon("\"x\""), "\"x\"");
        assert_eq!(canon("[true,false,null]"), "[true,false,null]");
    }

    #[test]
    fn keys_compare_after_unescaping() {
        assert_eq!(canon(r#"{"\u0062":1,"a":2}"#), r#"{"a":2,"b":1}"#);
        assert_rejected(
            br#"{"a":1,"\u0061":2}"#,
            &["duplicate object key \"a\"", "byte 7"],
        );
    }

    #[test]
    fn utf16_order_differs_from_code_point_order() {
        // U+FB33 sorts after U+1F600 in UTF-16 (0xFB33 > 0xD83D) but before it by code point.
        assert_eq!(
            cmp_utf16("\u{fb33}".as_bytes(), "😀".as_bytes()),
            Ordering::Greater
        );
        assert_eq!(
            cmp_utf16("😀".as_bytes(), "\u{e000}".as_bytes()),
            Ordering::Less
        );
        assert_eq!(
            cmp_utf16("\u{d7ff}".as_bytes(), "😀".as_bytes()),
            Ordering::Less
        );
        assert_eq!(cmp_utf16(b"ab", b"abc"), Ordering::Less);
        assert_eq!(cmp_utf16("😀".as_bytes(), "😁".as_bytes()), Ordering::Less);
        let utf16 = |s: &str| s.encode_utf16().collect::<Vec<_>>();
        let samples = [
            "",
            "a",
            "\u{7f}",
            "é",
            "\u{800}",
            "\u{d7ff}",
            "\u{e000}",
            "\u{ffff}",
            "\u{10000}",
            "😀",
            "\u{10ffff}",
            "a😀",
            "a\u{ffff}",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(
                    cmp_utf16(a.as_bytes(), b.as_bytes()),
                    utf16(a).cmp(&utf16(b)),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn depth_limit() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(canon(&nested(MAX_DEPTH)), nested(MAX_DEPTH));
        assert_rejected(
            nested(MAX_DEPTH + 1).as_bytes(),
            &[
                "nested deeper than 128 levels",
                &format!("byte {MAX_DEPTH}"),
            ],
        );
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_rejected(objects.as_bytes(), &["nested deeper than 128 levels"]);
        // Far deeper input fails the same way, without exhausting the stack.
        assert_rejected(nested(1_000_000).as_bytes(), &["nested deeper"]);
    }

    #[test]
    fn rejects_empty_input_and_bom() {
        assert_rejected(b"", &["empty input"]);
        assert_rejected(b" \n\t", &["only whitespace"]);
        assert_rejected(b"\xEF\xBB\xBF{}", &["byte order mark", "byte 0"]);
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert_rejected(b"\"a\xffb\"", &["invalid UTF-8", "0xff", "byte 2"]);
        assert_rejected(b"\"\xc0\xaf\"", &["invalid UTF-8", "byte 1"]); // overlong '/'
        assert_rejected(b"\"\xed\xa0\x80\"", &["invalid UTF-8", "byte 1"]); // encoded surrogate
        assert_rejected(b"\"\xf4\x90\x80\x80\"", &["invalid UTF-8"]); // above U+10FFFF
        assert_rejected(b"\"\xe2\x82\"", &["invalid UTF-8"]); // truncated
        assert_rejected(b"[1,\xff]", &["invalid UTF-8", "byte 3"]);
        assert_rejected(b"{\"k\xfe\":1}", &["invalid UTF-8", "byte 3"]);
    }

    #[test]
    fn rejects_duplicate_keys() {
        assert_rejected(
            br#"{"name":1,"other":2,"name":3}"#,
            &["duplicate object key \"name\"", "byte 20"],
        );
        assert_rejected(
            br#"{"b":{"x":1,"x":1},"a":0}"#,
            &["duplicate object key \"x\"", "byte 12"],
        );
        // The same key in different objects is fine.
        assert_eq!(canon(r#"[{"a":1},{"a":1}]"#), r#"[{"a":1},{"a":1}]"#);
        assert_eq!(canon(r#"{"a":{"a":1}}"#), r#"{"a":{"a":1}}"#);
    }

    #[test]
    fn rejects_nan_and_infinity() {
        for (input, token) in [
            ("NaN", "'NaN'"),
            ("[Infinity]", "'Infinity'"),
            ("{\"a\":-Infinity}", "'-Infinity'"),
        ] {
            assert_rejected(input.as_bytes(), &[token, "JSON has no NaN/Infinity"]);
        }
    }

    #[test]
    fn rejects_overflowing_numbers() {
        assert_rejected(b"1e400", &["1e400", "overflows to infinity", "byte 0"]);
        assert_rejected(b"[-1.8e308]", &["overflows to infinity", "byte 1"]);
        let long = format!("1{}", "0".repeat(400));
        assert_rejected(long.as_bytes(), &["overflows", "…"]);
    }

    #[test]
    fn rejects_lone_surrogates() {
        assert_rejected(br#""\ud83d""#, &["lone surrogate \\ud83d", "byte 1"]);
        assert_rejected(br#""\ud83dx""#, &["lone surrogate \\ud83d"]);
        assert_rejected(br#""\ud83d\u0041""#, &["lone surrogate \\ud83d"]);
        assert_rejected(br#""a\ude00""#, &["lone surrogate \\ude00", "byte 2"]);
        assert_rejected(br#""\ude00\ud83d""#, &["lone surrogate \\ude00"]);
    }

    #[test]
    fn rejects_control_characters_in_strings() {
        assert_rejected(b"\"a\nb\"", &["control character U+000A", "\\n", "byte 2"]);
        assert_rejected(
            b"\"\x01\"",
            &["control character U+0001", "\\u0001", "byte 1"],
        );
        assert_rejected(b"{\"\t\":1}", &["control character U+0009", "byte 2"]);
    }

    #[test]
    fn rejects_trailing_commas() {
        assert_rejected(b"[1,2,]", &["trailing comma before ']'", "byte 4"]);
        assert_rejected(b"{\"a\":1 , }", &["trailing comma before '}'", "byte 7"]);
        assert_rejected(b"[,]", &["unexpected ','", "byte 1"]);
    }

    #[test]
    fn rejects_leading_zeros() {
        assert_rejected(b"01", &["leading zero", "byte 0"]);
        assert_rejected(b"[-007]", &["leading zero", "byte 1"]);
        assert_rejected(b"00.5", &["leading zero"]);
    }

    #[test]
    fn rejects_trailing_data() {
        assert_rejected(b"{} {}", &["trailing data", "byte 3"]);
        assert_rejected(b"1 2", &["trailing data", "byte 2"]);
        assert_rejected(b"nullx", &["trailing data", "byte 4"]);
    }

    #[test]
    fn rejects_malformed_numbers() {
        assert_rejected(b"-", &["'-' must be followed by a digit"]);
        assert_rejected(b"1.", &["a digit after the decimal point", "byte 2"]);
        assert_rejected(b"1.e5", &["a digit after the decimal point"]);
        assert_rejected(b"1e", &["a digit in the exponent", "byte 2"]);
        assert_rejected(b"1e+", &["a digit in the exponent"]);
        assert_rejected(b".5", &["unexpected '.'", "byte 0"]);
        assert_rejected(b"+1", &["unexpected '+'"]);
    }

    #[test]
    fn rejects_malformed_structure() {
        assert_rejected(b"[1 2]", &["expected ',' or ']'", "byte 3"]);
        assert_rejected(b"{\"a\" 1}", &["expected ':'", "byte 5"]);
        assert_rejected(b"{\"a\":1 \"b\":2}", &["expected ',' or '}'", "byte 7"]);
        assert_rejected(b"{a:1}", &["unexpected 'a'", "string key"]);
        assert_rejected(b"{1:1}", &["string key"]);
        assert_rejected(b"[1", &["unexpected end of input", "byte 2"]);
        assert_rejected(b"{\"a\":", &["unexpected end of input"]);
        assert_rejected(b"\"abc", &["unterminated string", "byte 0"]);
        assert_rejected(b"tru", &["invalid literal (expected 'true')", "byte 0"]);
        assert_rejected(b"[nul]", &["invalid literal (expected 'null')", "byte 1"]);
        assert_rejected(b"[True]", &["unexpected 'T'"]);
        assert_rejected(b"\xc3\xa9", &["unexpected 'é' (U+00E9)"]);
        assert_rejected(b"\x0c1", &["unexpected U+000C"]);
        assert_rejected(b"]", &["unexpected ']'"]);
    }

    #[test]
    fn rejects_invalid_escapes() {
        assert_rejected(br#""\x""#, &["invalid escape '\\x'", "byte 1"]);
        assert_rejected(br#""\u12g4""#, &["invalid \\u escape"]);
        assert_rejected(br#""\u12"#, &["truncated \\u escape"]);
        assert_rejected(br#""\uZZZZ""#, &["invalid \\u escape"]);
        assert_rejected(b"\"\\", &["unterminated escape"]);
    }

    #[test]
    fn output_is_idempotent() {
        let inputs = [
            r#"{"z":[1.5e3,{"y":"\u00e9\n","x":-0.0}],"a":"\ud83d\ude00"}"#,
            r#"[{"b":1,"a":{"d":[],"c":{}}},"\u2028",1e-9,123456789012345678901234]"#,
        ];
        for input in inputs {
            let once = canon(input);
            assert_eq!(canon(&once), once);
        }
    }
}
