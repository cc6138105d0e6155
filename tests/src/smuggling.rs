//! What a hostile client sends to carry an env past a gateway whose edge policy does not
//! admit it: repeated lines of one carrier after an admitted or harmless first line (Envoy
//! keeps every line, its Wasm getter returns the first), other carriers beside an admitted
//! one, a cookie longer than the mesh searches. The mesh suites send each through the
//! gateway of every entry (Istio and Gateway API Gateways).

/// The attempts to carry `env` past the gateway, each a request's header lines in order;
/// `admitted` is an env the policy lets in (sent first, as cover). The carriers are the
/// topologies' (`x-virtual-env`, its alias `x-env`, baggage, the `env=` cookie).
pub fn attempts(env: &str, admitted: &str) -> Vec<Vec<(String, String)>> {
    let h = |name: &str, value: String| (name.to_owned(), value);
    let long_cookie = format!("{}env={env}", "pad=xxxxxxxxxx; ".repeat(600));
    vec![
        vec![
            h("x-virtual-env", admitted.into()),
            h("x-virtual-env", env.into()),
        ],
        vec![h("x-env", admitted.into()), h("x-env", env.into())],
        vec![
            h("baggage", "a=b".into()),
            h("baggage", format!("virtual-env={env}")),
        ],
        vec![h(
            "baggage",
            format!("virtual-env={admitted},virtual-env={env}"),
        )],
        vec![
            h("cookie", "session=1".into()),
            h("cookie", format!("env={env}; theme=dark")),
        ],
        vec![
            h("x-virtual-env", admitted.into()),
            h("baggage", format!("virtual-env={env}")),
            h("cookie", format!("env={env}")),
        ],
        vec![h("cookie", long_cookie)],
    ]
}

/// Where `env` reached an application on `hop`'s chain, in any line of any carrier it
/// received (`None`: nowhere).
pub fn received(hop: &crate::app::Hop, env: &str) -> Option<String> {
    hop.chain().into_iter().find_map(|h| {
        h.carriers
            .iter()
            .find(|(_, lines)| lines.iter().any(|l| l.contains(env)))
            .map(|(carrier, lines)| format!("{} received {carrier}: {lines:?}", h.pod))
    })
}
