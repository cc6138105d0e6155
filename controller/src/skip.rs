//! What planning left out, and why: one entry of a VirtualEnvironment's `status.skipped`,
//! typed by what it is about, so that `render` and the status say it without reading it
//! back from its text.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// What a skip is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A service of the namespace: left alone, or routed with less than asked (a gateway
    /// or host of it refused, an annotation not applied).
    Service,
    /// A Gateway the namespace names.
    Gateway,
    /// Calls into other namespaces.
    Peers,
    /// The namespace's routing as a whole (the API its routes are written in).
    Routing,
}

/// One skip: its subject and the sentence the status shows (`app-a: ...`,
/// `gateway istio-system/public: ...`, `calls into namespace pay ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub subject: Subject,
    text: String,
}

impl Skip {
    /// About service `name`.
    pub fn service(name: &str, why: impl fmt::Display) -> Self {
        Self {
            subject: Subject::Service,
            text: format!("{name}: {why}"),
        }
    }

    /// About the Gateway `reference` (`<namespace>/<name>`).
    pub fn gateway(reference: &str, why: impl fmt::Display) -> Self {
        Self {
            subject: Subject::Gateway,
            text: format!("gateway {reference}: {why}"),
        }
    }

    /// About calls into other namespaces (`why` says which).
    pub fn peers(why: impl fmt::Display) -> Self {
        Self {
            subject: Subject::Peers,
            text: why.to_string(),
        }
    }

    /// About the namespace's routing as a whole.
    pub fn routing(why: impl fmt::Display) -> Self {
        Self {
            subject: Subject::Routing,
            text: format!("routing: {why}"),
        }
    }

    /// As `render` comments it.
    pub fn rendered(&self) -> String {
        match self.subject {
            Subject::Service => format!("skipped service {}", self.text),
            Subject::Gateway => format!("skipped {}", self.text),
            Subject::Peers | Subject::Routing => self.text.clone(),
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Deref for Skip {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Borrow<str> for Skip {
    fn borrow(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subject_reads_as_the_status_and_render_say_it() {
        let service = Skip::service("app-a", "left to VirtualService front");
        assert_eq!(service.to_string(), "app-a: left to VirtualService front");
        assert_eq!(
            service.rendered(),
            "skipped service app-a: left to VirtualService front"
        );
        let gateway = Skip::gateway("istio-system/public", "not found");
        assert_eq!(
            gateway.rendered(),
            "skipped gateway istio-system/public: not found"
        );
        let peers = Skip::peers("calls into namespace pay are not routed by env: x");
        assert_eq!(
            peers.rendered(),
            "calls into namespace pay are not routed by env: x"
        );
        assert_eq!(
            [service, gateway].join("; "),
            "app-a: left to VirtualService front; gateway istio-system/public: not found"
        );
    }
}
