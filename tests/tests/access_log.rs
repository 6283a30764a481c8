//! Access logs end to end: a JSON line per request with the fields of the
//! outcome record and of the request, the default text line, reopening
//! after rotation, a log that cannot be opened, and new files on reload.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_tests::*;

/// The lines of `path` once it has `n` of them (within a bound: a worker
/// hands its lines over every 100 ms).
fn lines(path: &PathBuf, n: usize) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let arrived = eventually(Duration::from_secs(5), || read().len() >= n);
    let got = read();
    assert!(
        arrived,
        "{} has {} lines, {n} expected:\n{}",
        path.display(),
        got.len(),
        got.join("\n")
    );
    got
}

fn config(up: std::net::SocketAddr, log: &str) -> String {
    format!(
        "{runtime}
[[listener]]
name = \"in\"
listen = \"127.0.0.1:0\"
access_log = {log}

[[route]]
name = \"ok\"
match = {{ path_prefix = \"/ok\" }}
cluster = \"up\"

[[cluster]]
name = \"up\"
endpoints = [\"{up}\"]
",
        runtime = runtime_section(2)
    )
}

/// [`config`] logging to `file` in the default format, parsed (what a
/// reload applies).
fn logging_to(up: std::net::SocketAddr, file: &std::path::Path) -> weft::Config {
    let text = config(up, &format!("{{ path = \"{}\" }}", file.display()));
    weft::load::parse(&text).expect("a valid configuration")
}

/// Each JSON line is an object Python's own parser reads, with what the
/// request and its outcome say.
fn a_json_line_per_request() {
    let up = Upstream::echo("up");
    let d = scratch_dir("access-log");
    let file = d.join("access.json");
    let weft = start(&config(
        up.addr,
        &format!("{{ path = \"{}\", format = \"json\" }}", file.display()),
    ));
    let addr = weft.addr("in").expect("listener");
    let mut c = Client::connect(addr);
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        c.get(
            "/ok/1",
            &format!("x-request-id: req-1\r\ntraceparent: {trace}\r\n")
        )
        .status,
        200
    );
    assert_eq!(c.get("/ok/2", "x-status: 503\r\n").status, 503);
    assert_eq!(c.get("/missing", "").status, 404);
    let got = lines(&file, 3);
    assert_eq!(got.len(), 3, "{got:?}");
    // Python's json module reads every line.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json,re,sys\nfor l in sys.stdin:\n o=json.loads(l)\n rid=o['request_id']\n rid='uuid' if re.fullmatch('[0-9a-f-]{36}', rid) else rid\n up='none' if o['upstream_time_ms'] is None else ('waited' if o['upstream_time_ms'] > 0 else 'zero')\n print(o['path'], o['response_code'], o['weft_error'], rid, o['trace_id'], o['route'], o['attempts'], up)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    py.stdin
        .take()
        .expect("stdin")
        .write_all(got.join("\n").as_bytes())
        .expect("lines to python");
    let out = py.wait_with_output().expect("python ran");
    assert!(out.status.success(), "a line is not JSON:\n{}", got.join("\n"));
    let mut parsed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    parsed.sort();
    assert_eq!(
        parsed,
        [
            // A request without an id is logged with the one weft gave it.
            "/missing 404 no-route uuid None None 0 none",
            "/ok/1 200 None req-1 4bf92f3577b34da6a3ce929d0e0e4736 ok 1 waited",
            "/ok/2 503 None uuid None ok 1 waited",
        ]
    );
    let first = got
        .iter()
        .find(|l| l.contains("/ok/1"))
        .expect("the first request's line");
    for field in [
        "\"method\":\"GET\"",
        "\"protocol\":\"HTTP/1.1\"",
        "\"listener\":\"in\"",
        "\"cluster\":\"up\"",
        &format!("\"upstream_host\":\"{}\"", up.addr),
        "\"downstream_remote_address\":\"127.0.0.1\"",
    ] {
        assert!(first.contains(field), "no {field} in {first}");
    }
    drop(c);
    weft.shutdown();
}

/// The default text line, and a rotation: the file moved away and SIGUSR1
/// (here its handle) makes weft write to a new file by the old name.
fn the_text_line_and_reopening_after_rotation() {
    let up = Upstream::echo("up");
    let d = scratch_dir("access-log");
    let file = d.join("access.log");
    let weft = start(&config(up.addr, &format!("{{ path = \"{}\" }}", file.display())));
    let addr = weft.addr("in").expect("listener");
    assert_eq!(get(addr, "/ok/before").status, 200);
    let got = lines(&file, 1);
    assert!(
        got[0].contains("\"GET /ok/before HTTP/1.1\" 200 - ")
            && got[0].contains(&format!("\"{}\" 1 -", up.addr)),
        "{}",
        got[0]
    );
    let rotated = d.join("access.log.1");
    std::fs::rename(&file, &rotated).expect("rotated");
    weft.reopen_logs().fire();
    // The writer reopens before its next write (or within half a second):
    // requests until one shows in the new file.
    let mut sent = 0;
    let reopened = eventually(Duration::from_secs(5), || {
        sent += 1;
        assert_eq!(get(addr, "/ok/after").status, 200);
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("/ok/after"))
    });
    assert!(
        reopened,
        "nothing written to a new {} after {sent} requests",
        file.display()
    );
    let old = std::fs::read_to_string(&rotated).expect("the rotated file");
    assert!(old.contains("/ok/before"), "{old}");
    weft.shutdown();
}

/// A reload that names a new access log file opens it, and the lines of
/// requests after it go there; the old file keeps what it had. A file that
/// cannot be opened refuses the reload and changes nothing. The new file
/// is reopened after rotation as the first one is.
fn a_reload_logs_to_a_new_file() {
    let up = Upstream::echo("up");
    let d = scratch_dir("access-log");
    let first = d.join("first.log");
    let second = d.join("second.log");
    let weft = start(&config(up.addr, &format!("{{ path = \"{}\" }}", first.display())));
    let addr = weft.addr("in").expect("listener");
    let reload = weft.reload_handle();
    assert_eq!(get(addr, "/ok/one").status, 200);
    lines(&first, 1);

    let missing = d.join("no/such/dir/access.log");
    let why = reload
        .apply(logging_to(up.addr, &missing))
        .expect_err("a log that cannot be opened refuses the reload");
    assert!(
        why.contains("cannot open the access log")
            && why.contains("no/such/dir")
            && why.contains("generation 1"),
        "{why}"
    );
    assert_eq!(get(addr, "/ok/two").status, 200);
    assert!(
        lines(&first, 2)[1].contains("/ok/two"),
        "the first file still logs"
    );

    assert_eq!(reload.apply(logging_to(up.addr, &second)).expect("the reload"), 2);
    assert_eq!(get(addr, "/ok/three").status, 200);
    let got = lines(&second, 1);
    assert!(got[0].contains("\"GET /ok/three HTTP/1.1\" 200"), "{}", got[0]);
    let old = std::fs::read_to_string(&first).expect("the first file");
    assert!(
        old.contains("/ok/two") && !old.contains("/ok/three"),
        "the first file keeps its lines and gets no new ones:\n{old}"
    );

    let rotated = d.join("second.log.1");
    std::fs::rename(&second, &rotated).expect("rotated");
    weft.reopen_logs().fire();
    let reopened = eventually(Duration::from_secs(5), || {
        assert_eq!(get(addr, "/ok/four").status, 200);
        std::fs::read_to_string(&second).is_ok_and(|t| t.contains("/ok/four"))
    });
    assert!(reopened, "nothing written to a new {}", second.display());
    weft.shutdown();
}

/// Reloads that move the log between two files while keep-alive clients
/// keep sending lose no line and write none twice: every request is in
/// exactly one of the files.
fn moving_the_log_under_load_loses_no_line() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let up = Upstream::echo("up");
    let d = scratch_dir("access-log");
    let files = [d.join("a.log"), d.join("b.log")];
    let weft = start(&config(
        up.addr,
        &format!("{{ path = \"{}\" }}", files[0].display()),
    ));
    let addr = weft.addr("in").expect("listener");
    let (done, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    assert_eq!(client.get(&format!("/ok/{c}/{i}"), "").status, 200);
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    let reload = weft.reload_handle();
    for n in 1..=6 {
        // Some requests between reloads, so that both files get lines.
        let before = done.load(Ordering::SeqCst);
        let moved_on = eventually(Duration::from_secs(5), || {
            done.load(Ordering::SeqCst) >= before + 20
        });
        assert!(moved_on, "the clients stalled before reload {n}");
        reload
            .apply(logging_to(up.addr, &files[n % 2]))
            .expect("the reload");
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("a client thread");
    }
    let total = done.load(Ordering::SeqCst);
    let paths_in = |f: &PathBuf| -> Vec<String> {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("/ok/"))
                    .map(str::to_string)
            })
            .collect()
    };
    let all = eventually(Duration::from_secs(5), || {
        paths_in(&files[0]).len() + paths_in(&files[1]).len() >= total
    });
    let (a, b) = (paths_in(&files[0]), paths_in(&files[1]));
    assert!(
        all && a.len() + b.len() == total && !a.is_empty() && !b.is_empty(),
        "{} + {} lines for {total} requests",
        a.len(),
        b.len()
    );
    let mut seen = [a, b].concat();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "each request once");
    weft.shutdown();
}

on_both_drivers!(
    a_json_line_per_request,
    the_text_line_and_reopening_after_rotation,
    a_reload_logs_to_a_new_file,
    the_first_access_log_comes_with_a_reload,
    moving_the_log_under_load_loses_no_line
);

/// weft started without access logs starts logging with the reload that
/// names the first one: the writer thread starts, and every worker hands
/// its lines over from then on.
fn the_first_access_log_comes_with_a_reload() {
    let up = Upstream::echo("up");
    let file = scratch_dir("access-log").join("access.log");
    let with_log = config(up.addr, &format!("{{ path = \"{}\" }}", file.display()));
    let without = with_log
        .lines()
        .filter(|l| !l.starts_with("access_log"))
        .collect::<Vec<_>>()
        .join("\n");
    let weft = start(&without);
    let addr = weft.addr("in").expect("listener");
    assert_eq!(get(addr, "/ok/before").status, 200);
    let generation = weft
        .reload_handle()
        .apply(weft::load::parse(&with_log).expect("a valid configuration"))
        .expect("the reload");
    assert_eq!(generation, 2);
    // Two workers: enough requests, on new connections, that both serve
    // some.
    for i in 0..8 {
        assert_eq!(get(addr, &format!("/ok/after/{i}")).status, 200);
    }
    let got = lines(&file, 8);
    assert!(
        got.iter().all(|l| l.contains("/ok/after/")),
        "only requests after the reload are logged:\n{}",
        got.join("\n")
    );
    weft.shutdown();
}
