"""Cross-reference checks on hand-built models, as every loader (meshpy YAML, Envoy, xDS) runs them."""

from __future__ import annotations

from meshpy.errors import ConfigIssue
from meshpy.model.check import check_references
from meshpy.model.routes import (
    DirectResponseAction,
    ForwardAction,
    Route,
    RouteConfig,
    VirtualHost,
    WeightedCluster,
)
from meshpy.model.types import Address, Admin, Cluster, Config, Endpoint, HttpOptions, Listener, TcpOptions

BACKEND = Cluster(name="backend", endpoints=(Endpoint(address=Address(host="127.0.0.1", port=9000)),))


def http_listener(name: str, port: int, *vhosts: VirtualHost) -> Listener:
    route_config = RouteConfig(name=name, virtual_hosts=vhosts)
    return Listener(
        name=name,
        address=Address(host="127.0.0.1", port=port),
        kind="http",
        http=HttpOptions(route_config=route_config),
    )


def vhost(name: str, *routes: Route, domains: tuple[str, ...] = ("*",)) -> VirtualHost:
    return VirtualHost(name=name, domains=domains, routes=routes)


def to(cluster: str) -> Route:
    return Route(action=ForwardAction(cluster=cluster))


def test_consistent_config_has_no_issues() -> None:
    config = Config(
        listeners=(
            http_listener("web", 10000, vhost("all", to("backend"))),
            Listener(
                name="db",
                address=Address(host="127.0.0.1", port=10001),
                kind="tcp",
                tcp=TcpOptions(cluster="backend"),
            ),
        ),
        clusters=(BACKEND,),
        admin=Admin(address=Address(host="127.0.0.1", port=9901)),
    )
    assert check_references(config) == []


def test_unknown_clusters_in_routes_splits_and_tcp() -> None:
    split = Route(
        action=ForwardAction(
            weighted=(WeightedCluster(name="backend", weight=1), WeightedCluster(name="bakend", weight=1))
        )
    )
    config = Config(
        listeners=(
            http_listener(
                "web",
                10000,
                vhost("a", Route(action=DirectResponseAction(status=200)), domains=("a",)),
                vhost("b", to("backend"), to("nope"), split, domains=("b",)),
            ),
            Listener(
                name="db", address=Address(host="127.0.0.1", port=1), kind="tcp", tcp=TcpOptions(cluster="x")
            ),
        ),
        clusters=(BACKEND,),
    )
    assert check_references(config) == [
        ConfigIssue("listeners[0].virtual_hosts[1].routes[1].cluster", "unknown cluster 'nope'"),
        ConfigIssue(
            "listeners[0].virtual_hosts[1].routes[2].weighted[1]",
            "unknown cluster 'bakend' (did you mean 'backend'?)",
        ),
        ConfigIssue("listeners[1].tcp.cluster", "unknown cluster 'x'"),
    ]


def test_unknown_cluster_when_none_are_defined() -> None:
    config = Config(listeners=(http_listener("web", 1, vhost("a", to("backend"))),))
    assert check_references(config) == [
        ConfigIssue(
            "listeners[0].virtual_hosts[0].routes[0].cluster",
            "unknown cluster 'backend' (no clusters are defined)",
        )
    ]


def test_duplicate_names() -> None:
    config = Config(
        listeners=(
            http_listener("web", 1, vhost("a", to("backend"))),
            http_listener("web", 2, vhost("a", to("backend"))),
        ),
        clusters=(BACKEND, BACKEND),
    )
    assert check_references(config) == [
        ConfigIssue("listeners[1].name", "duplicate listener name 'web' (also listeners[0])"),
        ConfigIssue("clusters[1].name", "duplicate cluster name 'backend' (also clusters[0])"),
    ]


def test_address_clashes_between_listeners_and_admin_but_not_port_zero() -> None:
    config = Config(
        listeners=(
            http_listener("a", 8080, vhost("v", to("backend"))),
            http_listener("b", 8080, vhost("v", to("backend"))),
            http_listener("c", 0, vhost("v", to("backend"))),
            http_listener("d", 0, vhost("v", to("backend"))),
        ),
        clusters=(BACKEND,),
        admin=Admin(address=Address(host="127.0.0.1", port=8080)),
    )
    assert check_references(config) == [
        ConfigIssue("listeners[1].address", "127.0.0.1:8080 is already used by listeners[0] (a)"),
        ConfigIssue("admin.address", "127.0.0.1:8080 is already used by listeners[0] (a)"),
    ]


def test_same_port_on_different_hosts_is_fine() -> None:
    other = Listener(
        name="b",
        address=Address(host="0.0.0.0", port=8080),
        kind="tcp",
        tcp=TcpOptions(cluster="backend"),
    )
    config = Config(
        listeners=(http_listener("a", 8080, vhost("v", to("backend"))), other), clusters=(BACKEND,)
    )
    assert check_references(config) == []


def test_virtual_host_names_and_domains_unique_per_listener() -> None:
    config = Config(
        listeners=(
            http_listener(
                "web",
                1,
                vhost("x", to("backend"), domains=("a.example", "*")),
                vhost("x", to("backend"), domains=("A.example",)),
            ),
            http_listener("other", 2, vhost("x", to("backend"), domains=("a.example",))),
        ),
        clusters=(BACKEND,),
    )
    assert check_references(config) == [
        ConfigIssue(
            "listeners[0].virtual_hosts[1].name",
            "duplicate virtual host name 'x' (also listeners[0].virtual_hosts[0])",
        ),
        ConfigIssue(
            "listeners[0].virtual_hosts[1].domains[0]",
            "domain 'A.example' is also in listeners[0].virtual_hosts[0]",
        ),
    ]


def test_model_invariants_a_translator_could_break() -> None:
    neither = Route(action=ForwardAction())
    both = Route(
        action=ForwardAction(cluster="backend", weighted=(WeightedCluster(name="backend", weight=1),))
    )
    config = Config(
        listeners=(
            http_listener("web", 1, vhost("v", neither, both)),
            Listener(name="h", address=Address(host="127.0.0.1", port=2), kind="http"),
            Listener(name="t", address=Address(host="127.0.0.1", port=3), kind="tcp"),
        ),
        clusters=(BACKEND,),
    )
    assert check_references(config) == [
        ConfigIssue(
            "listeners[0].virtual_hosts[0].routes[0]",
            "a forwarding route needs one cluster or a weighted split",
        ),
        ConfigIssue(
            "listeners[0].virtual_hosts[0].routes[1]",
            "a forwarding route needs one cluster or a weighted split",
        ),
        ConfigIssue("listeners[1]", "an http listener needs http options"),
        ConfigIssue("listeners[2]", "a tcp listener needs tcp options"),
    ]
