//! Trace ids from the tracing headers an application forwards.
//!
//! Each configured trace header is read with the parser its name calls for, strictly by its
//! spec; any other header (`x-request-id`, a vendor id) is taken as an opaque id. Hex trace
//! ids are normalized to 32 lower-case digits (a 64-bit B3 id is left-padded with zeros, as
//! W3C Trace Context says), so `traceparent` and B3 headers of one trace give one id.

use std::borrow::Cow;

/// Shortest opaque id accepted: shorter ones are too easy to guess or to collide (a
/// one-character `x-request-id` must not correlate unrelated requests).
pub const MIN_OPAQUE_ID_LEN: usize = 16;
/// Longest opaque id accepted; longer values are not trace ids worth remembering.
pub const MAX_OPAQUE_ID_LEN: usize = 128;

/// The trace id carried by `value` of header `header` (lower-case name), if it holds one.
pub fn trace_id<'a>(header: &str, value: &'a str) -> Option<Cow<'a, str>> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if !value.is_ascii() {
        return None;
    }
    match header {
        "traceparent" => w3c_trace_id(value).map(Cow::Borrowed),
        "x-b3-traceid" => b3_trace_id(value),
        "b3" => b3_single(value),
        _ => opaque_id(value).map(Cow::Borrowed),
    }
}

/// `version-traceid-parentid-flags`, W3C Trace Context level 1: version `00` is exactly 55
/// characters; a later version may append fields after a `-`; `ff` is invalid.
fn w3c_trace_id(value: &str) -> Option<&str> {
    let b = value.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let length_ok = match version {
        "00" => b.len() == 55,
        _ => b.len() == 55 || b[55] == b'-',
    };
    let ok = length_ok
        && version != "ff"
        && is_hex(version)
        && is_hex(flags)
        && is_hex_id(trace)
        && is_hex_id(parent);
    ok.then_some(trace)
}

/// `X-B3-TraceId`: 16 or 32 lower-case hex digits, not all zero.
fn b3_trace_id(value: &str) -> Option<Cow<'_, str>> {
    match value.len() {
        32 if is_hex_id(value) => Some(Cow::Borrowed(value)),
        16 if is_hex_id(value) => Some(Cow::Owned(format!("{:0>32}", value))),
        _ => None,
    }
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`; a lone sampling state
/// (`0`, `1`, `d`) carries no trace id.
fn b3_single(value: &str) -> Option<Cow<'_, str>> {
    let mut parts = value.split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampling = parts.next();
    let parent = parts.next();
    let ok = parts.next().is_none()
        && span.len() == 16
        && is_hex_id(span)
        && sampling.is_none_or(|s| matches!(s, "0" | "1" | "d"))
        && parent.is_none_or(|p| p.len() == 16 && is_hex_id(p));
    if ok {
        b3_trace_id(trace)
    } else {
        None
    }
}

fn is_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex and not all zeros (the invalid id).
fn is_hex_id(value: &str) -> bool {
    !value.is_empty() && is_hex(value) && value.bytes().any(|b| b != b'0')
}

fn opaque_id(value: &str) -> Option<&str> {
    let ok = (MIN_OPAQUE_ID_LEN..=MAX_OPAQUE_ID_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b'|');
    ok.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn id(header: &str, value: &str) -> Option<String> {
        trace_id(header, value).map(Cow::into_owned)
    }

    #[test]
    fn traceparent_gives_its_trace_id() {
        let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert_eq!(id("traceparent", &tp).as_deref(), Some(TRACE));
        assert_eq!(
            id("traceparent", &format!(" {tp} ")).as_deref(),
            Some(TRACE)
        );
        // A later version may carry more fields.
        let v1 = format!("01-{TRACE}-00f067aa0ba902b7-01-extra");
        assert_eq!(id("traceparent", &v1).as_deref(), Some(TRACE));
    }

    #[test]
    fn malformed_traceparents_have_no_id() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // Version 00 has exactly four fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Non-ASCII where the dashes go must not be sliced through.
            "00\u{e9}4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(id("traceparent", bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_ids_are_normalized_to_128_bits() {
        assert_eq!(
            id("x-b3-traceid", "80f198ee56343ba8").as_deref(),
            Some("000000000000000080f198ee56343ba8")
        );
        assert_eq!(id("x-b3-traceid", TRACE).as_deref(), Some(TRACE));
        assert_eq!(id("x-b3-traceid", "xyz"), None);
        assert_eq!(id("x-b3-traceid", "0000000000000000"), None);
        assert_eq!(
            id("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1").as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(
            id(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90"
            )
            .as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        for bad in [
            "0",
            "1",
            "d",
            "80f198ee56343ba8",
            "80f198ee56343ba8-x",
            "80f198ee56343ba8-e457b5a2e4d86bd1-2",
        ] {
            assert_eq!(id("b3", bad), None, "{bad}");
        }
        // One trace in both formats is one id.
        let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert_eq!(id("traceparent", &tp), id("x-b3-traceid", TRACE));
    }

    #[test]
    fn other_headers_are_opaque_ids_of_a_safe_length() {
        let uuid = "5d6d6ec8-93a1-4f0b-9a4e-5b2b0f3c1d2e";
        assert_eq!(id("x-request-id", uuid).as_deref(), Some(uuid));
        for bad in [
            "",
            "1",
            "short-id",
            "a b c d e f g h i",
            "with|separator-12345",
        ] {
            assert_eq!(id("x-request-id", bad), None, "{bad:?}");
        }
        assert_eq!(id("x-request-id", &"a".repeat(129)), None);
        assert!(id("x-request-id", &"a".repeat(128)).is_some());
    }
}
