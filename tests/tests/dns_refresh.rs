//! Endpoints given by host name are resolved again every `dns_refresh`:
//! traffic follows a changed address without a restart, the cluster's
//! other endpoints keep their pooled connections, and a failing resolver
//! keeps the last address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_tests::*;

/// What `svc.test:80` resolves to now (`None`: the resolver fails).
type Answer = Arc<Mutex<Option<SocketAddr>>>;

/// A resolver of `svc.test:80` to `answer`, counting its failures.
fn resolver(answer: &Answer, failures: &Arc<AtomicUsize>) -> weft::dns::Resolver {
    let (answer, failures) = (answer.clone(), failures.clone());
    Arc::new(move |s: &str| -> Result<Vec<SocketAddr>, String> {
        if s == "svc.test:80" {
            let now = *answer.lock().map_err(|_| "poisoned".to_string())?;
            if now.is_none() {
                failures.fetch_add(1, Ordering::SeqCst);
            }
            return now
                .map(|a| vec![a])
                .ok_or_else(|| "no such host (test)".to_string());
        }
        s.parse()
            .map(|a| vec![a])
            .map_err(|_| format!("unknown host {s}"))
    })
}

/// A cluster of `svc.test:80` (first at upstream `a`) and upstream `c`;
/// the name moves to `b`, then the resolver fails.
fn traffic_follows_a_changed_address() {
    let (a, b, c) = (Upstream::echo("a"), Upstream::echo("b"), Upstream::echo("c"));
    let answer: Answer = Arc::new(Mutex::new(Some(a.addr)));
    let failures = Arc::new(AtomicUsize::new(0));
    let resolve = resolver(&answer, &failures);
    let text = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\ncluster = \"up\"\n\n\
         [[cluster]]\nname = \"up\"\nendpoints = [\"svc.test:80\", \"{}\"]\ndns_refresh = \"100ms\"\n",
        runtime_section(1),
        c.addr
    );
    let config = weft::Config::parse(&text, &*resolve).expect("a valid configuration");
    let server = weft::Server::start_with_resolver(config, resolve).expect("weft starts");
    let addr = server.addr("in").expect("listener");
    let mut client = Client::connect(addr);
    let upstream = |client: &mut Client| {
        let r = client.get("/", "");
        assert_eq!(r.status, 200);
        r.header("x-upstream").unwrap_or("?").to_string()
    };
    let seen: Vec<String> = (0..20).map(|_| upstream(&mut client)).collect();
    assert!(seen.iter().all(|u| u == "a" || u == "c"), "{seen:?}");
    assert!(seen.iter().any(|u| u == "a"), "{seen:?}");
    let c_connections = c.accepted();
    *answer.lock().expect("lock") = Some(b.addr);
    assert!(
        eventually(Duration::from_secs(3), || upstream(&mut client) == "b"),
        "no request reached the new address"
    );
    let a_before = a.count();
    let after: Vec<String> = (0..20).map(|_| upstream(&mut client)).collect();
    assert!(after.iter().all(|u| u == "b" || u == "c"), "{after:?}");
    assert_eq!(a.count(), a_before, "the old address still gets requests");
    assert_eq!(
        c.accepted(),
        c_connections,
        "the unchanged endpoint kept its pooled connection"
    );
    assert_eq!(server.reload_handle().generation(), 2);
    assert!(
        server
            .reload_handle()
            .config()
            .describe()
            .contains(&format!("svc.test:80={}", b.addr)),
        "{}",
        server.reload_handle().config().describe()
    );
    // A failing resolver (asked three times): the last address stays.
    *answer.lock().expect("lock") = None;
    let generation = server.reload_handle().generation();
    let asked = eventually(Duration::from_secs(3), || {
        let u = upstream(&mut client);
        assert!(u == "b" || u == "c", "{u}");
        failures.load(Ordering::SeqCst) >= 3
    });
    assert!(asked, "the resolver was not asked again");
    assert_eq!(server.reload_handle().generation(), generation);
    server.shutdown();
}

on_both_drivers!(traffic_follows_a_changed_address);
