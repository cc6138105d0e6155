//! The controller across namespaces, reconciled as its runtime reconciles against an
//! in-memory stand-in for the API server (no API server runs here; see
//! `virtual_env_e2e::fleet`): the small case of the `make bench-controller` figures,
//! asserting what a restart and an env change must and must not write.

use virtual_env_e2e::fleet::{measure, Figures, Heap, Phase, Shape};

/// The three phases (first install, restart, an env added), each without a failed write.
fn phases(figures: &Figures) -> [&Phase; 3] {
    for phase in &figures.phases {
        eprintln!(
            "{}: {} reconciles, {:?}",
            phase.name, phase.reconciles, phase.counts
        );
        assert_eq!(phase.failed, 0, "{}", phase.name);
    }
    let [install, restart, change] = &figures.phases[..] else {
        panic!("three phases");
    };
    [install, restart, change]
}

/// The fleet the tests run: 4 namespaces of 12 services in 4 envs, routes written as
/// HTTPRoutes or VirtualServices.
fn small_fleet(http_routes: bool) -> Figures {
    let shape = Shape {
        namespaces: 4,
        services: 12,
        envs: 4,
        http_routes,
    };
    measure(shape, Heap::UNCOUNTED).unwrap()
}

#[test]
fn a_restart_writes_no_object_and_an_env_change_rewrites_only_the_callers_plugin_objects() {
    let figures = small_fleet(false);
    let [install, restart, change] = phases(&figures);
    // First install: every namespace's routes, subsets and both plugin objects.
    assert!(install.counts.of("apply virtualservices") >= 4 * 12);
    assert!(install.counts.of("apply destinationrules") >= 4 * 12);
    // A restart finds every object as planned and calls the API not once: no plugin
    // object rewritten (before the peer directory was seeded from the cluster, each was
    // rewritten without the other namespaces' tables), no status written again, no list,
    // and each namespace planned once (before, each first publication planned every
    // other namespace again).
    assert_eq!(restart.counts.total(), 0, "{:?}", restart.counts);
    assert_eq!(restart.reconciles, 4);
    // One env added in one namespace: its own objects, and in each other namespace only
    // the calling side's plugin object (the new env in that namespace's table of peers).
    assert!(change.counts.of("apply virtualservices") > 0);
    assert_eq!(
        change.counts.of("apply virtualservices"),
        change.counts.of("apply destinationrules")
    );
    assert_eq!(
        change.counts.of("apply wasmplugins"),
        1 + 3,
        "{:?}",
        change.counts
    );
    assert_eq!(
        change.counts.effective_writes,
        change.counts.total(),
        "no idle writes"
    );
    // The changed namespace, its callers, and the changed namespace once more for its
    // status; the echoes of the controller's own writes reconcile nothing.
    assert!(change.reconciles <= 1 + 3 + 1, "{}", change.reconciles);
}

/// The same with routes written as Gateway API: a restart finds every env Service and
/// HTTPRoute as planned (the env Services are read from the services' cache, with what the
/// API server adds) and calls the API not once; an env change writes only what changed.
#[test]
fn with_routes_in_gateway_api_a_restart_writes_nothing_either() {
    let figures = small_fleet(true);
    let [install, restart, change] = phases(&figures);
    assert!(install.counts.of("apply httproutes") >= 4 * 12);
    assert!(install.counts.of("apply services") >= 4 * 12);
    assert_eq!(install.counts.of("apply virtualservices"), 0);
    assert_eq!(restart.counts.total(), 0, "{:?}", restart.counts);
    assert_eq!(restart.reconciles, 4);
    assert!(
        change.counts.of("apply services") > 0,
        "{:?}",
        change.counts
    );
    assert!(
        change.counts.of("apply httproutes") > 0,
        "{:?}",
        change.counts
    );
    assert_eq!(
        change.counts.effective_writes,
        change.counts.total(),
        "no idle writes"
    );
}
