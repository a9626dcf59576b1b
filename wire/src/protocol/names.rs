//! Names: which room names and user ids are valid (the decoder and the server's own checks
//! share these rules) and how a direct conversation's room is named.

use super::{DM_PREFIX, MAX_ROOM_CHARS, MAX_USER_CHARS};

/// Invisible format characters (Unicode category Cf): zero-width spaces and joiners,
/// bidirectional overrides (U+202E turns `room-a` into what looks like another name), the
/// byte order mark, tags. A room name with them looks like another one.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}' | '\u{8E2}'
        | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// Room names: 1-128 characters; no whitespace, control or invisible format characters; no
/// `{` or `}` (a room's Redis keys carry it as their hash tag, `chat:{ROOM}:...`: a brace in
/// the name could change the slot or make one room's key equal another's).
pub fn validate_room(room: &str) -> Result<(), &'static str> {
    if room.is_empty() {
        return Err("room name is empty");
    }
    if room.chars().count() > MAX_ROOM_CHARS {
        return Err("room name is over 128 characters");
    }
    if room.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("room name contains whitespace or control characters");
    }
    if room.chars().any(is_format_char) {
        return Err("room name contains invisible format characters (U+200B, U+202E, ...)");
    }
    if room.contains(['{', '}']) {
        return Err("room name contains { or } (reserved: Redis hash tags)");
    }
    Ok(())
}

/// User ids: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn validate_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() || user.len() > MAX_USER_CHARS {
        return Err("user id must be 1-64 characters");
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("user id may only contain A-Z a-z 0-9 _ . -");
    }
    Ok(())
}

/// The room of a direct conversation: `dm:<a>:<b>` with `a < b`. `None` for a user with
/// themselves.
pub fn dm_room(x: &str, y: &str) -> Option<String> {
    let (a, b) = match x.cmp(y) {
        std::cmp::Ordering::Less => (x, y),
        std::cmp::Ordering::Greater => (y, x),
        std::cmp::Ordering::Equal => return None,
    };
    Some(format!("{DM_PREFIX}{a}:{b}"))
}

/// The two users of a direct-message room, if `room` is a well-formed one.
pub fn dm_members(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix(DM_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    (validate_user(a).is_ok() && validate_user(b).is_ok() && a < b).then_some((a, b))
}
