//! The `weft` binary itself: check, run with a config file, signals, demo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An upstream that answers every request after `delay`, one thread per
/// connection; also returns the count of request heads it has received.
fn slow_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow!");
                }
            });
        }
    });
    (addr, seen)
}

/// Reads stderr lines of `child` until one contains `needle`; returns it.
fn wait_for_line(out: &mut impl BufRead, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains(needle) {
            return line;
        }
    }
    panic!("weft never printed `{needle}`");
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn check_accepts_the_example_and_names_mistakes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/weft.toml");
    let out = Command::new(WEFT).args(["check", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("listener ingress on 127.0.0.1:8080"));

    let bad = temp_file("bad.toml", "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[route]]\nsplit = [{ cluster = \"nope\", weight = 1 }]\n");
    let out = Command::new(WEFT)
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: line 6, field `route[0].split.cluster`: no cluster named `nope`"),
        "{err}"
    );

    let out = Command::new(WEFT)
        .args(["check", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let (up, seen) = slow_upstream(Duration::from_millis(600));
    let config = temp_file(
        "run.toml",
        &format!("[runtime]\nworkers = 2\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"{up}\"]\n"),
    );
    let mut child = Command::new(WEFT)
        .args(["--config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let line = wait_for_line(&mut err, "listener in on ");
    let addr = line
        .split("listener in on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(get(&addr, "/").ends_with("slow!"));

    let a = addr.clone();
    let in_flight = std::thread::spawn(move || get(&a, "/in-flight"));
    // Signal only once the request is in flight at the upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(&child, libc::SIGTERM);
    wait_for_line(&mut err, "shutting down");
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("slow!"),
        "{answer}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn demo_splits_between_two_upstreams() {
    let mut child = Command::new(WEFT)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = wait_for_line(&mut out, "proxy on http://");
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    let (mut blue, mut green) = (0, 0);
    for _ in 0..200 {
        let r = get(&addr, "/");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        if r.ends_with("hello from blue\n") {
            blue += 1;
        } else if r.ends_with("hello from green\n") {
            green += 1;
        }
    }
    assert_eq!(blue + green, 200);
    assert!(blue > green && green > 0, "blue {blue} green {green}");
    signal(&child, libc::SIGINT);
    assert!(child.wait().unwrap().success());
}
