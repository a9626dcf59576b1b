//! Reading a `msg` back, for every reader of stored or relayed messages (the cluster bus's
//! receive path and store reads, the persister): [`MsgView`], one strict pass over
//! [`super::scan`], then the fields each reader takes, typed, with `serde_json`'s strictness.

use super::scan::{unescape, walk_strict_keyed, ws, ScanError, TextError, Val};
use std::borrow::Cow;
use std::fmt;

/// The fields of a `msg` a reader can ask a [`MsgView`] for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Type,
    Room,
    Seq,
    Id,
    From,
    Ts,
    Body,
    Cid,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::Type,
        Field::Room,
        Field::Seq,
        Field::Id,
        Field::From,
        Field::Ts,
        Field::Body,
        Field::Cid,
    ];

    /// The JSON key.
    pub fn name(self) -> &'static str {
        ["type", "room", "seq", "id", "from", "ts", "body", "cid"][self as usize]
    }

    fn of_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The field a raw key names, if any; a key must be text even when it names none.
    #[inline]
    fn of_key(raw: &[u8]) -> Result<Option<Field>, TextError> {
        Ok(match raw {
            b"type" => Some(Field::Type),
            b"room" => Some(Field::Room),
            b"seq" => Some(Field::Seq),
            b"id" => Some(Field::Id),
            b"from" => Some(Field::From),
            b"ts" => Some(Field::Ts),
            b"body" => Some(Field::Body),
            b"cid" => Some(Field::Cid),
            _ if !raw.contains(&b'\\') => {
                std::str::from_utf8(raw).map_err(|_| TextError::Utf8)?;
                None
            }
            _ => Field::of_name(&unescape(raw)?),
        })
    }
}

/// Why a `msg` could not be read; the messages follow `serde_json`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgError {
    /// Not a well-formed JSON object.
    Syntax(ScanError),
    /// Something other than whitespace after the object.
    Trailing {
        at: usize,
    },
    Missing(Field),
    Duplicate(Field),
    /// A value of the wrong JSON type (`found`), e.g. a string for `seq`.
    Type {
        field: Field,
        found: &'static str,
        expected: &'static str,
    },
    /// An integer out of the field's range.
    Range {
        field: Field,
        expected: &'static str,
    },
    /// A string field that is not text.
    Text {
        field: Field,
        error: TextError,
    },
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgError::Syntax(e) => write!(f, "invalid JSON: {e}"),
            MsgError::Trailing { at } => write!(f, "trailing characters at byte {at}"),
            MsgError::Missing(field) => write!(f, "missing field `{}`", field.name()),
            MsgError::Duplicate(field) => write!(f, "duplicate field `{}`", field.name()),
            MsgError::Type {
                field,
                found,
                expected,
            } => write!(
                f,
                "invalid type: {found}, expected {expected} (field `{}`)",
                field.name()
            ),
            MsgError::Range { field, expected } => write!(
                f,
                "invalid value: integer out of range, expected {expected} (field `{}`)",
                field.name()
            ),
            MsgError::Text { field, error } => write!(f, "{error} in field `{}`", field.name()),
        }
    }
}

impl std::error::Error for MsgError {}

/// A `msg` object read in one strict pass, every value still raw: the reader then takes the
/// fields it needs, typed. Together that refuses exactly what a `serde_json` derive with the
/// same fields refused (see `wire/tests/msg_view.rs`): malformed JSON anywhere (trailing
/// garbage included), and among the fields taken one missing, repeated, of the wrong type or
/// range, or a string that is not text (UTF-8, escapes, surrogate pairs). Fields nobody takes
/// and unknown keys are only checked for well-formedness, as `serde_json` ignores them.
/// (One difference: serde also read a struct from a JSON array, in field order; a `msg` is
/// never one.)
#[derive(Clone, Copy, Debug)]
pub struct MsgView<'a> {
    vals: [Option<Val<'a>>; 8],
    /// Bit `f` set: field `f` appears more than once.
    repeated: u8,
}

impl<'a> MsgView<'a> {
    /// Reads `json`: one object, whitespace around it allowed.
    pub fn parse(json: &'a [u8]) -> Result<MsgView<'a>, MsgError> {
        let mut view = MsgView {
            vals: [None; 8],
            repeated: 0,
        };
        let end = walk_strict_keyed(json, Field::of_key, |key, val| {
            if let Some(f) = key {
                let slot = &mut view.vals[f as usize];
                if slot.is_some() {
                    view.repeated |= 1 << f as u8;
                }
                *slot = Some(val);
            }
        })
        .map_err(MsgError::Syntax)?;
        let rest = ws(json, end);
        if rest != json.len() {
            return Err(MsgError::Trailing { at: rest });
        }
        Ok(view)
    }

    /// The raw value of `f`, if present (and present once).
    pub fn raw(&self, f: Field) -> Result<Option<Val<'a>>, MsgError> {
        if self.repeated & (1 << f as u8) != 0 {
            return Err(MsgError::Duplicate(f));
        }
        Ok(self.vals[f as usize])
    }

    fn required(&self, f: Field) -> Result<Val<'a>, MsgError> {
        self.raw(f)?.ok_or(MsgError::Missing(f))
    }

    /// A string field's text (borrowed unless it has escapes).
    pub fn text(&self, f: Field) -> Result<Cow<'a, str>, MsgError> {
        text(f, self.required(f)?)
    }

    /// A string field that may be absent or `null`.
    pub fn opt_text(&self, f: Field) -> Result<Option<Cow<'a, str>>, MsgError> {
        match self.raw(f)? {
            None | Some(Val::Raw(b"null")) => Ok(None),
            Some(v) => text(f, v).map(Some),
        }
    }

    /// An unsigned integer field (`seq`, `ts`).
    pub fn u64(&self, f: Field) -> Result<u64, MsgError> {
        let (neg, magnitude) = int(f, self.required(f)?, "u64")?;
        match (neg, magnitude) {
            (false, n) => Ok(n),
            (true, _) => Err(MsgError::Range {
                field: f,
                expected: "u64",
            }),
        }
    }

    /// [`MsgView::u64`], or `default` when the field is absent.
    pub fn u64_or(&self, f: Field, default: u64) -> Result<u64, MsgError> {
        match self.raw(f)? {
            None => Ok(default),
            Some(_) => self.u64(f),
        }
    }

    /// A signed integer field.
    pub fn i64(&self, f: Field) -> Result<i64, MsgError> {
        let range = MsgError::Range {
            field: f,
            expected: "i64",
        };
        match int(f, self.required(f)?, "i64")? {
            (false, n) => i64::try_from(n).map_err(|_| range),
            (true, n) if n <= 1 << 63 => Ok((n as i64).wrapping_neg()),
            (true, _) => Err(range),
        }
    }
}

fn text(field: Field, v: Val<'_>) -> Result<Cow<'_, str>, MsgError> {
    match v {
        Val::Str(raw) => unescape(raw).map_err(|error| MsgError::Text { field, error }),
        Val::Raw(raw) => Err(MsgError::Type {
            field,
            found: kind(raw),
            expected: "a string",
        }),
    }
}

/// An integer literal as (negative, magnitude). Like `serde_json`, anything with a fraction
/// or exponent, `-0`, and a magnitude beyond u64 (or beyond 2^63 when negative) is a float.
fn int(field: Field, v: Val<'_>, expected: &'static str) -> Result<(bool, u64), MsgError> {
    let found = match v {
        Val::Raw(raw @ [b'-' | b'0'..=b'9', ..]) => {
            let (neg, digits) = match raw.split_first() {
                Some((b'-', rest)) => (true, rest),
                _ => (false, raw),
            };
            let n = digits.iter().try_fold(0u64, |n, &d| {
                d.is_ascii_digit()
                    .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
                    .flatten()
            });
            match n {
                Some(n) if !neg || (1..=1 << 63).contains(&n) => return Ok((neg, n)),
                _ => "floating point",
            }
        }
        Val::Raw(raw) => kind(raw),
        Val::Str(_) => "string",
    };
    Err(MsgError::Type {
        field,
        found,
        expected,
    })
}

/// What kind of JSON value a raw (non-string) value is, for messages.
fn kind(raw: &[u8]) -> &'static str {
    match raw.first() {
        Some(b'{') => "map",
        Some(b'[') => "sequence",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}
