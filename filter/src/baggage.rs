//! The W3C `baggage` header: `key1=value1;prop=x, key2=value2`.

use std::borrow::Cow;

/// The value of member `key` in a baggage header, percent-decoded.
pub fn baggage_member<'a>(header: &'a str, key: &str) -> Option<Cow<'a, str>> {
    header.split(',').find_map(|member| {
        let member = member.split(';').next()?;
        let (k, v) = member.split_once('=')?;
        (k.trim() == key).then(|| percent_decode(v.trim()))?
    })
}

/// The baggage header without its members named `key`; `None` when it has none.
pub fn without_member(header: &str, key: &str) -> Option<String> {
    let is_key = |member: &&str| {
        let name = member.split(';').next().unwrap_or("");
        name.split_once('=').is_some_and(|(k, _)| k.trim() == key)
    };
    if !header.split(',').any(|m| is_key(&m)) {
        return None;
    }
    let kept: Vec<&str> = header
        .split(',')
        .filter(|m| !is_key(m))
        .map(str::trim)
        .collect();
    Some(kept.join(","))
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_member_among_others() {
        let h = "userId=alice, virtual-env=dev.proj1;ttl=3 ,serverNode=DF%2028";
        assert_eq!(
            baggage_member(h, "virtual-env").as_deref(),
            Some("dev.proj1")
        );
        assert_eq!(baggage_member(h, "serverNode").as_deref(), Some("DF 28"));
        assert_eq!(baggage_member(h, "userId").as_deref(), Some("alice"));
        assert_eq!(baggage_member(h, "missing"), None);
    }

    #[test]
    fn removes_every_member_of_the_key_and_keeps_the_others() {
        let h = "userId=alice, virtual-env=dev.proj1;ttl=3 ,serverNode=x,virtual-env=b";
        assert_eq!(
            without_member(h, "virtual-env").as_deref(),
            Some("userId=alice,serverNode=x")
        );
        assert_eq!(
            without_member("virtual-env=dev", "virtual-env").as_deref(),
            Some("")
        );
        assert_eq!(without_member("userId=alice", "virtual-env"), None);
        assert_eq!(without_member("virtual-env-x=1", "virtual-env"), None);
    }

    #[test]
    fn malformed_members_are_skipped() {
        assert_eq!(baggage_member("virtual-env", "virtual-env"), None);
        assert_eq!(baggage_member("", "virtual-env"), None);
        assert_eq!(baggage_member("virtual-env=dev%2", "virtual-env"), None);
        assert_eq!(baggage_member("virtual-env=%ff", "virtual-env"), None);
        assert_eq!(
            baggage_member("junk,virtual-env = dev ", "virtual-env").as_deref(),
            Some("dev")
        );
    }
}
