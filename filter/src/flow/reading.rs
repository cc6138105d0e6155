//! Reading a request's env carriers through the host, as the edge guard's edits (if any)
//! leave the request. Every value is untrusted bytes: one that is not UTF-8, or not valid
//! for its purpose (an env name, a trace id), counts as absent and as rejected.

use std::borrow::Cow;

use log::debug;
use virtual_env_core::validate_env_name;

use super::{EnvSource, FilterConfig};
use crate::baggage::baggage_member;
use crate::decision::Edit;
use crate::host::Host;
use crate::trace::trace_id;

/// How much of a rejected value a debug log line shows: a hostile value can be as long as
/// Envoy's header limit.
const LOGGED_VALUE_LEN: usize = 64;

fn shown(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(&bytes[..bytes.len().min(LOGGED_VALUE_LEN)])
}

/// One request being read: the config, the host (read only), the edits made before the
/// reads (the edge guard's), and how many values were rejected.
pub(super) struct Reading<'r, 'c, H: Host> {
    config: &'r FilterConfig,
    pub(super) host: &'r H,
    before: &'r [Edit<'c>],
    pub(super) rejected: u32,
}

impl<'r, 'c, H: Host> Reading<'r, 'c, H> {
    pub(super) fn new(config: &'r FilterConfig, host: &'r H, before: &'r [Edit<'c>]) -> Self {
        Self {
            config,
            host,
            before,
            rejected: 0,
        }
    }

    /// A header's first line, as the request is after the edits made before.
    pub(super) fn raw(&self, header: &str) -> Option<Vec<u8>> {
        match self.before.iter().rev().find(|e| e.name() == header) {
            Some(Edit::Set(_, value)) => Some(value.clone().into_bytes()),
            Some(Edit::Remove(_)) => None,
            None => self.host.request_header(header),
        }
    }

    /// A header as text; a value that is not UTF-8 counts as absent and is rejected.
    pub(super) fn text(&mut self, header: &str) -> Option<String> {
        let bytes = self.raw(header)?;
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(e) => {
                debug!(
                    "virtual-env: ignoring {header}: not UTF-8: {}",
                    shown(e.as_bytes())
                );
                self.rejected += 1;
                None
            }
        }
    }

    pub(super) fn trace_id<'v>(&mut self, header: &str, value: &'v str) -> Option<Cow<'v, str>> {
        let id = trace_id(header, value);
        if id.is_none() {
            debug!(
                "virtual-env: ignoring {header}: not a trace id: {}",
                shown(value.as_bytes())
            );
            self.rejected += 1;
        }
        id
    }

    /// The env carried by the request itself: env header, aliases, patterns, baggage.
    pub(super) fn env_from_request(&mut self) -> Option<(String, EnvSource)> {
        let config = self.config;
        if let Some(env) = self.header_env(&config.env_header) {
            return Some((env, EnvSource::Header));
        }
        for alias in &config.header_aliases {
            if let Some(env) = self.header_env(alias) {
                return Some((env, EnvSource::Alias));
            }
        }
        for (header, pattern) in &config.header_patterns {
            let Some(value) = self.text(header) else {
                continue;
            };
            if let Some(env) = pattern.extract(&value) {
                if let Some(env) = self.accept(header, Cow::Borrowed(env)) {
                    return Some((env, EnvSource::Alias));
                }
            }
        }
        let key = config.baggage_key.as_deref()?;
        let baggage = self.text("baggage")?;
        let member = baggage_member(&baggage, key)?;
        let env = self.accept("baggage", member)?;
        Some((env, EnvSource::Baggage))
    }

    fn header_env(&mut self, header: &str) -> Option<String> {
        let value = self.text(header)?;
        self.accept(header, Cow::Owned(value))
    }

    /// An env value from the request, if it is a valid env name; else it is as if absent.
    fn accept(&mut self, origin: &str, value: Cow<'_, str>) -> Option<String> {
        match validate_env_name(&value, self.config.splitter) {
            Ok(()) => Some(value.into_owned()),
            Err(e) => {
                debug!(
                    "virtual-env: ignoring {origin} value {}: {e}",
                    shown(value.as_bytes())
                );
                self.rejected += 1;
                None
            }
        }
    }

    /// The request's first valid trace id (of the config's trace headers, in order).
    pub(super) fn first_trace_id(&mut self) -> Option<String> {
        let config = self.config;
        config.trace_headers.iter().find_map(|header| {
            let value = self.text(header)?;
            Some(self.trace_id(header, &value)?.into_owned())
        })
    }

    /// The env recorded on the inbound side for one of the request's trace ids.
    pub(super) fn env_from_trace(&mut self) -> Option<String> {
        let config = self.config;
        let table = config.correlation?;
        let now = self.host.now_unix_ms();
        config.trace_headers.iter().find_map(|header| {
            let value = self.text(header)?;
            let id = self.trace_id(header, &value)?;
            let (slot, _) = self.host.shared_data(&table.slot_key(&id))?;
            let env = table.lookup(&slot, &id, now)?;
            // Shared data is writable by any filter in the proxy: check before trusting.
            validate_env_name(env, config.splitter).ok()?;
            Some(env.to_owned())
        })
    }
}
