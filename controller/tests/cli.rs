//! The `virtual-env` binary on the snapshots under `tests/snapshots/`: golden output of
//! `render` and `explain`, and the committed CRD being what `virtual-env crd` prints.
//!
//! `UPDATE_GOLDEN=1 cargo test -p virtual-env-controller --test cli` rewrites the goldens;
//! review the diff before committing it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

mod common;
use common::{repo, virtual_env};

fn check_golden(path: &str, actual: &str) {
    let path = repo().join(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert!(
        expected == actual,
        "{} differs from the output:\n{actual}",
        path.display()
    );
}

const SEED: [&str; 4] = [
    "-f",
    "tests/snapshots/seed/virtualenvironment.yaml",
    "-f",
    "tests/snapshots/seed/cluster.yaml",
];
/// A fixed module URL, so the goldens do not change with every filter build, and the
/// predictable route-header suffix (never for output that is applied).
const MODULE: [&str; 3] = [
    "--wasm-url",
    "oci://registry.example/virtual-env-filter:0.1.0",
    "--predictable-suffix",
];

#[test]
fn render_the_seed_namespace() {
    let out = virtual_env(&[&["render"][..], &SEED, &MODULE].concat());
    check_golden("tests/snapshots/seed/render.golden.yaml", &out);
}

/// Output that could be applied never carries a route header anyone can compute: without
/// a recorded `status.routeHeader` each render picks a random suffix and says so.
#[test]
fn render_never_prints_a_predictable_route_header_unless_asked() {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_virtual-env"))
            .args([&["render"][..], &SEED, &MODULE[..2]].concat())
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (first, said) = run();
    let (second, _) = run();
    let predictable = virtual_env(&[&["render"][..], &SEED, &MODULE].concat());
    let header = |out: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix("x-virtual-env-route-"))
            .map(|rest| rest.trim_end_matches(':').to_owned())
            .unwrap()
    };
    assert_ne!(header(&first), header(&predictable));
    assert_ne!(header(&first), header(&second), "random each time");
    assert!(
        said.contains("has no status.routeHeader: chose x-virtual-env-route-"),
        "{said}"
    );
    assert!(predictable.contains("never apply it"));
}

#[test]
fn render_reads_stdin_as_kubectl_pipes_it() {
    let snapshot = [
        std::fs::read_to_string(repo().join(SEED[1])).unwrap(),
        std::fs::read_to_string(repo().join(SEED[3])).unwrap(),
    ]
    .join("---\n");
    let out = with_stdin(&[&["render"][..], &MODULE].concat(), &snapshot);
    assert!(out.status.success());
    let from_files = virtual_env(&[&["render"][..], &SEED, &MODULE].concat());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_files);
}

#[test]
fn explain_the_seed_chain() {
    let mut out = String::new();
    // (args, what the case shows)
    let cases: &[&[&str]] = &[
        // The seed's chain.
        &["--env", "dev.proj1", "--service", "app-a"],
        &["--env", "dev.proj1", "--service", "app-b"],
        &["--env", "dev.proj1.user1", "--service", "app-c"],
        &["--env", "dev.proj1.user1", "--service", "app-a"],
        &["--env", "dev.proj9", "--service", "app-b"],
        // An invalid env is ignored, as the filter ignores it.
        &["--env", "Bad..env", "--service", "app-c"],
        // Deeper than any env deployed.
        &[
            "--env",
            "dev.proj1.user1.feature7.try2",
            "--service",
            "app-c",
        ],
        // A service without the default subset: nothing fits an unrelated env.
        &["--env", "qa.x", "--service", "app-d"],
        &["--env", "dev.proj1.user9", "--service", "app-d"],
        // Short, namespaced and full names; and names that are not services of the mesh.
        &["--env", "dev.proj1", "--service", "app-c.default:8080"],
        &[
            "--env",
            "dev.proj1",
            "--service",
            "APP-C.default.svc.cluster.local",
        ],
        &[
            "--env",
            "dev.proj1",
            "--service",
            "app-c.default.svc.evil.example",
        ],
        &["--env", "dev.proj1", "--service", "app-z"],
        // Sent by a pod: its own env under autoInject, also in place of an invalid one.
        &["--from", "app-a-proj1-6b7c8", "--service", "app-b"],
        &["--from", "app-a-proj1-6b7c8", "--service", "app-c"],
        &[
            "--from",
            "app-a-proj1-6b7c8",
            "--env",
            "dev..x",
            "--service",
            "app-c",
        ],
        &[
            "--from",
            "app-c-user1-3d4e5",
            "--env",
            "dev",
            "--service",
            "app-a",
        ],
    ];
    for args in cases {
        out.push_str(&format!("$ virtual-env explain {}\n", args.join(" ")));
        out.push_str(&virtual_env(
            &[&["explain"][..], args, &SEED, &MODULE].concat(),
        ));
    }
    check_golden("tests/snapshots/seed/explain.golden.txt", &out);
}

#[test]
fn the_committed_crds_are_what_the_code_generates() {
    for (args, file) in [
        (
            &["crd"][..],
            "deploy/crds/env.alibaba.com_virtualenvironments_crd.yaml",
        ),
        (
            &["crd", "gateway-policy"][..],
            "deploy/crds/env.alibaba.com_gatewaypolicies_crd.yaml",
        ),
    ] {
        let generated = virtual_env(args);
        let committed = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(generated == committed, "{file} is stale: run `make crd`");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_virtual-env"))
        .args(
            [
                &["render", "-f", "tests/snapshots/seed/cluster.yaml"][..],
                &MODULE,
            ]
            .concat(),
        )
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no VirtualEnvironment in the input"),
        "{stderr}"
    );
}

fn explain_says(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_virtual-env"))
        .args([&["explain"][..], args, &MODULE].concat())
        .current_dir(repo())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `explain` answers what a new user asks: a service that is not there is named as such
/// with the name meant; a service left alone says why (the status's reason); a gateway
/// host is followed from the gateway's plugin; flags that do not apply are not offered.
#[test]
fn explain_answers_every_question_a_user_brings() {
    let seed = [
        "-f",
        "tests/snapshots/seed/virtualenvironment.yaml",
        "-f",
        "tests/snapshots/seed/cluster.yaml",
    ];
    let said = explain_says(&[&seed[..], &["--service", "ap-a", "--env", "dev.proj1"]].concat());
    assert!(
        said.contains(
            "there is no service ap-a in namespace default in the input (did you mean app-a?)"
        ),
        "{said}"
    );
    let bookinfo = [
        "-f",
        "tests/snapshots/seed/virtualenvironment.yaml",
        "-f",
        "tests/istio/bookinfo.yaml",
        "-f",
        "tests/snapshots/bookinfo/pods.yaml",
        "-f",
        "tests/istio/bookinfo-networking/virtual-service-reviews-v3.yaml",
    ];
    let said = explain_says(
        &[
            &bookinfo[..],
            &["--service", "reviews", "--env", "dev.proj1"],
        ]
        .concat(),
    );
    assert!(
        said.contains("is not routed by env: it is left alone: "),
        "{said}"
    );
    assert!(said.contains("VirtualService reviews"), "{said}");
    let gateway = [
        "-f",
        "tests/snapshots/gateway/entry.yaml",
        "-f",
        "tests/snapshots/gateway/virtualenvironment.yaml",
    ];
    let said = explain_says(
        &[
            &gateway[..],
            &["--service", "web.example.com", "--env", "dev.proj1"],
        ]
        .concat(),
    );
    assert!(said.contains("request from outside for web.example.com: decided at the gateway by plugin object istio-system/virtual-env.default.public-gateway (edge policy: allowlist, GatewayPolicy public-ingress's edge guard)"), "{said}");
    assert!(
        said.contains("service web.default.svc.cluster.local has ready pods in: dev, dev.proj1"),
        "{said}"
    );
    // The owner's guard admits dev.proj1.* only: dev.proj1 itself is removed there.
    assert!(
        said.contains("the gateway's edge policy removed 1 env(s)"),
        "{said}"
    );
    assert!(said.contains("chosen: dev (default subset)"), "{said}");
    let said = explain_says(
        &[
            &gateway[..],
            &[
                "--service",
                "web.example.com",
                "--env",
                "dev.proj1.alice",
                "--trace",
            ],
        ]
        .concat(),
    );
    assert!(said.contains("as a trace: call;by=gateway;to=web.example.com;env=dev.proj1.alice;from=header;route=fallback;subset=dev.proj1"), "{said}");
    let help = explain_says(&["--help"]);
    for flag in [
        "--wasm-url",
        "--wasm-sha256",
        "--public-url",
        "--extension-api",
    ] {
        assert!(!help.contains(flag), "{flag} offered:\n{help}");
    }
}

/// The binary run with `args` in the repository, `input` on its stdin.
fn with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtual-env"))
        .args(args)
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `render` of a VirtualEnvironment given on stdin (named `stdin` in what is said).
fn render_stdin(ve: &str) -> (bool, String) {
    let out = with_stdin(
        &[
            &[
                "render",
                "-f",
                "-",
                "-f",
                "tests/snapshots/seed/cluster.yaml",
            ][..],
            &MODULE,
        ]
        .concat(),
        ve,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new user's mistakes, said once and where they are: fields that do not exist are
/// warnings at their line with the name meant (the defaults would be silently in force);
/// an invalid value is one error at the spec's path, not the plugin config's field, and
/// no part of it twice.
#[test]
fn input_mistakes_are_told_once_where_they_are() {
    let head = "apiVersion: env.alibaba.com/v1alpha1\nkind: VirtualEnvironment\nmetadata: {name: demo}\nspec:\n";
    let (ok, stderr) = render_stdin(&format!(
        "{head}  envHeader:\n    nmae: X-Env\n    autoInjct: true\n  envLable:\n    name: virtual-env\n"
    ));
    assert!(ok, "{stderr}");
    for said in [
        "stdin:6: spec.envHeader.nmae is not a field of VirtualEnvironment; ignored (did you mean name?)",
        "stdin:7: spec.envHeader.autoInjct is not a field of VirtualEnvironment; ignored (did you mean autoInject?)",
        "stdin:8: spec.envLable is not a field of VirtualEnvironment; ignored (did you mean envLabel?)",
    ] {
        assert!(stderr.contains(said), "{said}\n{stderr}");
    }
    for (spec, said) in [
        (
            "  envLabel: {splitter: '..'}\n",
            "invalid spec: spec.envLabel.splitter: \"..\" must be exactly one of '.', '-', '_'\n",
        ),
        (
            "  envHeader: {aliases: [{name: cookie, pattern: 'env=(@', placeholder: '(@)'}]}\n",
            "invalid spec: spec.envHeader.aliases[0]: the placeholder \"(@)\" is not in the pattern\n",
        ),
        (
            "  traceCorrelation: {slots: 99999999}\n",
            "invalid spec: spec.traceCorrelation.slots: 99999999 is out of range",
        ),
    ] {
        let (ok, stderr) = render_stdin(&format!("{head}{spec}"));
        assert!(!ok, "{spec}");
        assert!(stderr.contains(said), "{said}\n{stderr}");
        let what = said.split_once(": spec.").unwrap().1;
        let what = what.split_once(": ").unwrap().1.trim_end();
        assert_eq!(stderr.matches(what).count(), 1, "said once: {stderr}");
    }
}

/// `explain --from` a pod in ambient mode answers through the waypoint of the service it
/// calls: the caller's env from its workload, a header that wins over it, and a service
/// without a waypoint said to be passed at L4 only.
#[test]
fn explain_from_a_pod_in_ambient_mode_answers_through_the_waypoint() {
    const AMBIENT: [&str; 4] = [
        "-f",
        "tests/snapshots/seed/virtualenvironment.yaml",
        "-f",
        "tests/snapshots/ambient/cluster.yaml",
    ];
    let cases: &[&[&str]] = &[
        &[
            "--from",
            "app-a-proj1-4f5e6d7c8-x7k2p",
            "--service",
            "app-a",
        ],
        &[
            "--from",
            "app-a-proj1-4f5e6d7c8-x7k2p",
            "--service",
            "app-b",
            "--env",
            "dev.proj9",
        ],
        &["--from", "app-a-dev-5d8f7b9c4-x7k2p", "--service", "app-c"],
    ];
    let mut out = String::new();
    for args in cases {
        out.push_str(&format!("$ virtual-env explain {}\n", args.join(" ")));
        out.push_str(&virtual_env(
            &[&["explain"][..], args, &AMBIENT, &MODULE].concat(),
        ));
    }
    assert!(out.contains("the calling workload's env"), "{out}");
    assert!(out.contains("passes ztunnel only (L4)"), "{out}");
    check_golden("tests/snapshots/ambient/explain.golden.txt", &out);
}
