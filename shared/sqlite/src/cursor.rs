//! Pagination cursors: opaque, URL-safe (base64url, no padding) and bound to the list they came
//! from — a cursor of one list (or of another agent's list) is refused by every other.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use opscore_core::store::StoreError;

const SEP: char = '\u{1f}';
/// Far longer than any cursor we issue (ids are at most 128 characters).
const MAX_LEN: usize = 1024;

/// `list` names the list (and its scope, e.g. the agent id); `key` the last item of the page.
pub fn encode(list: &str, key: &[&str]) -> String {
    let mut raw = String::from(list);
    for k in key {
        raw.push(SEP);
        raw.push_str(k);
    }
    URL_SAFE_NO_PAD.encode(raw)
}

/// The key parts of a cursor issued by [`encode`] for this `list` with `parts` parts.
pub fn decode(cursor: &str, list: &str, parts: usize) -> Result<Vec<String>, StoreError> {
    if cursor.is_empty() || cursor.len() > MAX_LEN {
        return Err(StoreError::InvalidCursor);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(StoreError::InvalidCursor)?;
    let mut it = raw.split(SEP);
    if it.next() != Some(list) {
        return Err(StoreError::InvalidCursor);
    }
    let key: Vec<String> = it.map(str::to_owned).collect();
    if key.len() != parts {
        return Err(StoreError::InvalidCursor);
    }
    Ok(key)
}

pub fn int(s: &str) -> Result<i64, StoreError> {
    s.parse().map_err(|_| StoreError::InvalidCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_bound_to_its_list() {
        let c = encode("history\u{1e}a1", &["5", "7", "9"]);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&c, "history\u{1e}a1", 3).unwrap(), ["5", "7", "9"]);
        assert_eq!(decode(&c, "history\u{1e}a2", 3), Err(StoreError::InvalidCursor));
        assert_eq!(decode(&c, "agents", 1), Err(StoreError::InvalidCursor));
        assert_eq!(decode("", "agents", 1), Err(StoreError::InvalidCursor));
        assert_eq!(decode("a#b", "agents", 1), Err(StoreError::InvalidCursor));
    }
}
