//! Trace ids from the tracing headers an application forwards.
//!
//! Each configured trace header is read with the parser its name calls for; any other header
//! (`x-request-id`, a vendor id) is taken as an opaque id.

/// Longest opaque id accepted; longer values are not trace ids worth remembering.
pub const MAX_OPAQUE_ID_LEN: usize = 128;

/// The trace id carried by `value` of header `header` (lower-case name), if it holds one.
pub fn trace_id<'a>(header: &str, value: &'a str) -> Option<&'a str> {
    let value = value.trim();
    match header {
        "traceparent" => w3c_trace_id(value),
        "x-b3-traceid" => hex_id(value, &[16, 32]),
        "b3" => value.split('-').next().and_then(|id| hex_id(id, &[16, 32])),
        _ => opaque_id(value),
    }
}

/// `version-traceid-parentid-flags`, W3C Trace Context level 1.
fn w3c_trace_id(value: &str) -> Option<&str> {
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let valid = version != "ff"
        && is_hex(version, 2)
        && is_hex(flags, 2)
        && hex_id(parent_id, &[16]).is_some();
    valid.then(|| hex_id(trace_id, &[32]))?
}

fn is_hex(value: &str, len: usize) -> bool {
    value.len() == len
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex of one of the given lengths, and not all zeros (the invalid id).
fn hex_id<'a>(value: &'a str, lengths: &[usize]) -> Option<&'a str> {
    let ok = lengths.iter().any(|&len| is_hex(value, len)) && value.bytes().any(|b| b != b'0');
    ok.then_some(value)
}

fn opaque_id(value: &str) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_OPAQUE_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn traceparent_gives_its_trace_id() {
        let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert_eq!(trace_id("traceparent", &tp), Some(TRACE));
        assert_eq!(trace_id("traceparent", &format!(" {tp} ")), Some(TRACE));
    }

    #[test]
    fn malformed_traceparents_have_no_id() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(trace_id("traceparent", bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_ids() {
        assert_eq!(
            trace_id("x-b3-traceid", "80f198ee56343ba8"),
            Some("80f198ee56343ba8")
        );
        assert_eq!(trace_id("x-b3-traceid", TRACE), Some(TRACE));
        assert_eq!(trace_id("x-b3-traceid", "xyz"), None);
        assert_eq!(
            trace_id("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(trace_id("b3", "0"), None);
    }

    #[test]
    fn other_headers_are_opaque_ids() {
        let id = "5d6d6ec8-93a1-4f0b-9a4e-5b2b0f3c1d2e";
        assert_eq!(trace_id("x-request-id", id), Some(id));
        assert_eq!(trace_id("x-request-id", ""), None);
        assert_eq!(trace_id("x-request-id", "a b"), None);
        assert_eq!(trace_id("x-request-id", &"a".repeat(129)), None);
    }
}
