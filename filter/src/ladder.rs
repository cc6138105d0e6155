//! The benchmark's cost ladder (`make bench`): the filter's outbound work, one step per rung,
//! built from this crate's own host calls and route table so that every microsecond of the
//! full filter is attributed to a step. Compiled only with the `ladder` feature (the
//! `bench/ladder` module), never into the filter itself.
//!
//! The rung is the VM configuration (`vm_config.configuration`), a number; the plugin
//! configuration is the filter's ordinary plugin config. Each rung does everything the
//! rungs below it do:
//!
//! 0. nothing (the floor of this module; compare with the empty filter);
//! 1. read the env header;
//! 2. also read `:authority`;
//! 3. also find the target service and walk the env up its table;
//! 4. also write the route header;
//! 5. also read the `xds.listener_direction` property (what the full filter did per request
//!    before the direction came from the config).
//!
//! 6. rung 4, but both headers read in one call for all headers
//!    (`proxy_get_header_map_pairs`) instead of one call each.
//!
//! The full filter, the rung above 5, is the real module.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use virtual_env_core::{PluginConfig, RouteTable, Target};

use crate::abi;
use crate::header_pairs::HeaderPairs;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// `proxy_get_buffer_bytes` buffer type of the VM configuration.
const VM_CONFIGURATION: u32 = 6;

struct Ladder {
    rung: u8,
    env_header: String,
    route_header: String,
    namespace: String,
    routes: RouteTable,
}

#[derive(Default)]
struct Root {
    rung: u8,
    ladder: Option<Rc<Ladder>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let text = abi::buffer(VM_CONFIGURATION)
            .ok()
            .flatten()
            .unwrap_or_default();
        match std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            Some(rung) => {
                self.rung = rung;
                true
            }
            None => false,
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = abi::buffer(abi::PLUGIN_CONFIGURATION)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Ok(config) = PluginConfig::from_json(&bytes) else {
            return false;
        };
        let namespace = abi::property(&["xds", "node", "metadata", "NAMESPACE"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        self.ladder = Some(Rc::new(Ladder {
            rung: self.rung,
            env_header: config.env_header.to_ascii_lowercase(),
            route_header: config.route_header.to_ascii_lowercase(),
            namespace,
            routes: RouteTable::new(&config),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request(self.ladder.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request(Option<Rc<Ladder>>);

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(ladder) = &self.0 {
            ladder.climb();
        }
        Action::Continue
    }
}

impl Ladder {
    fn climb(&self) {
        if self.rung == 6 {
            return self.climb_with_pairs();
        }
        if self.rung < 1 {
            return;
        }
        let env = abi::request_header(&self.env_header).ok().flatten();
        if self.rung < 2 {
            return;
        }
        let authority = abi::request_header(":authority").ok().flatten();
        if self.rung < 3 {
            return;
        }
        let env = env.and_then(|e| String::from_utf8(e).ok());
        let authority = authority.and_then(|a| String::from_utf8(a).ok());
        let Some(authority) = authority else {
            return;
        };
        let Target::Service(service) = self.routes.target(&authority, &self.namespace) else {
            return;
        };
        let choice = self.routes.choose(service, env.as_deref());
        if self.rung < 4 {
            return;
        }
        if let Some(subset) = choice.env() {
            let _ = abi::replace_request_header(&self.route_header, subset);
        }
        if self.rung < 5 {
            return;
        }
        let _ = abi::encoded_property(b"xds\0listener_direction\0");
    }
}

impl Ladder {
    fn climb_with_pairs(&self) {
        let pairs = HeaderPairs::parse(
            abi::request_header_pairs()
                .ok()
                .flatten()
                .unwrap_or_default(),
        );
        let env = pairs
            .get(&self.env_header)
            .and_then(|e| std::str::from_utf8(e).ok());
        let Some(authority) = pairs
            .get(":authority")
            .and_then(|a| std::str::from_utf8(a).ok())
        else {
            return;
        };
        let Target::Service(service) = self.routes.target(authority, &self.namespace) else {
            return;
        };
        if let Some(subset) = self.routes.choose(service, env).env() {
            let _ = abi::replace_request_header(&self.route_header, subset);
        }
    }
}
