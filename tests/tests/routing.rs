//! Routing end to end: exact path, method and header matches, route order,
//! and routes bound to one of several listeners by `listener =`.

use weft_tests::*;

/// Each listed path, method and headers go to the cluster whose upstream
/// answers; the first matching route wins.
fn routes_by_exact_path_method_and_header() {
    let names = ["exact", "post", "canary", "fallback", "other"];
    let ups: Vec<Upstream> = names.iter().map(|n| Upstream::echo(n)).collect();
    let clusters: String = names
        .iter()
        .zip(&ups)
        .map(|(n, u)| format!("[[cluster]]\nname = \"{n}\"\nendpoints = [\"{}\"]\n", u.addr))
        .collect();
    let config = format!(
        "{runtime}
[[listener]]
name = \"in\"
listen = \"127.0.0.1:0\"

[[listener]]
name = \"second\"
listen = \"127.0.0.2:0\"

[[route]]
listener = \"in\"
match = {{ path = \"/exact\" }}
cluster = \"exact\"

[[route]]
listener = \"in\"
match = {{ method = \"POST\" }}
cluster = \"post\"

[[route]]
listener = \"in\"
match = {{ headers = {{ x-canary = \"1\" }} }}
cluster = \"canary\"

[[route]]
listener = \"in\"
cluster = \"fallback\"

[[route]]
listener = \"second\"
cluster = \"other\"

{clusters}",
        runtime = runtime_section(1)
    );
    let server = start(&config);
    let (first, second) = (server.addr("in").unwrap(), server.addr("second").unwrap());
    let mut c = Client::connect(first);
    let cases: &[(&str, &str, &str)] = &[
        ("GET /exact HTTP/1.1\r\nHost: a\r\n\r\n", "exact", "exact path"),
        (
            "GET /exact?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "exact",
            "the query is not part of the path",
        ),
        (
            "GET /exact/more HTTP/1.1\r\nHost: a\r\n\r\n",
            "fallback",
            "an exact path is not a prefix",
        ),
        (
            "GET /exac HTTP/1.1\r\nHost: a\r\n\r\n",
            "fallback",
            "nor is a prefix of it",
        ),
        (
            "POST /exact HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "exact",
            "the first match wins",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "post",
            "method",
        ),
        (
            "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "fallback",
            "another method",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Canary: 1\r\n\r\n",
            "canary",
            "header, name in any case",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nx-canary: 2\r\n\r\n",
            "fallback",
            "another header value",
        ),
        ("GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "fallback", "no condition"),
    ];
    for (raw, cluster, why) in cases {
        c.send(raw.as_bytes());
        let r = c.response(false).expect("an answer");
        assert_eq!(r.header("x-upstream"), Some(*cluster), "{why}: {raw:?}");
    }
    // The second listener has its own routes, whatever the request says.
    let mut c = Client::connect(second);
    for raw in [
        "GET /exact HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ] {
        c.send(raw.as_bytes());
        assert_eq!(
            c.response(false).unwrap().header("x-upstream"),
            Some("other"),
            "{raw:?}"
        );
    }
    let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    assert_eq!(counts, [3, 1, 1, 5, 2], "requests per upstream ({names:?})");
}

/// Paths are routed and forwarded in normal form: dot segments removed,
/// encoded unreserved characters decoded; a path above the root and a
/// fragment are refused; absolute form goes upstream as origin form. With
/// `merge_slashes`, runs of slashes count as one.
fn paths_are_normalised_before_routing() {
    let (down, other) = (Upstream::echo("down"), Upstream::echo("other"));
    let config = |merge: bool| {
        format!(
            "{}[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nmerge_slashes = {merge}\n[[route]]\nmatch = {{ path_prefix = \"/down/\" }}\ncluster = \"down\"\n[[route]]\ncluster = \"other\"\n[[cluster]]\nname = \"down\"\nendpoints = [\"{}\"]\n[[cluster]]\nname = \"other\"\nendpoints = [\"{}\"]\n",
            runtime_section(1),
            down.addr,
            other.addr
        )
    };
    let server = start(&config(false));
    let mut c = Client::connect(server.addr("in").unwrap());
    let cases: &[(&str, &str, &str)] = &[
        ("/down/../x", "other", "/x"),
        ("/%64own/x?q=%2e%2e", "down", "/down/x?q=%2e%2e"),
        ("/a/./../down/./y", "down", "/down/y"),
        ("http://a.test/down/z", "down", "/down/z"),
        ("//down//x", "other", "//down//x"),
    ];
    for (target, upstream, forwarded) in cases {
        let before = (down.count(), other.count());
        c.send(format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        let r = c.response(false).expect("an answer");
        assert_eq!(r.header("x-upstream"), Some(*upstream), "{target}");
        let got = if *upstream == "down" {
            assert_eq!(down.count(), before.0 + 1);
            down.request(before.0)
        } else {
            other.request(before.1)
        };
        assert!(
            got.head.starts_with(&format!("GET {forwarded} HTTP/1.1\r\n")),
            "{target} went upstream as {:?}",
            got.head.lines().next()
        );
    }
    for bad in ["/../x", "/a/%2e%2e/%2E%2e/x", "/a#b", "/%g0"] {
        let mut c = Client::connect(server.addr("in").unwrap());
        c.send(format!("GET {bad} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        let r = c.response(false).expect("an answer");
        assert_eq!(
            (r.status, r.header("weft-error")),
            (400, Some("bad-request-target")),
            "{bad}"
        );
    }
    let merging = start(&config(true));
    let mut c = Client::connect(merging.addr("in").unwrap());
    let before = down.count();
    c.send(b"GET //down//x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.response(false).unwrap().header("x-upstream"), Some("down"));
    assert!(down.request(before).head.starts_with("GET /down/x HTTP/1.1\r\n"));
}

on_both_drivers!(
    routes_by_exact_path_method_and_header,
    paths_are_normalised_before_routing
);
