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

/// Reads lines of `out` until one contains `needle`; returns it, and
/// `out` for more. Bounded: the reading happens on a thread of its own, and
/// no such line within 10 s fails the test (a silent child cannot hang it).
fn wait_for_line<R: BufRead + Send + 'static>(mut out: R, needle: &str) -> (String, R) {
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = needle.to_string();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.contains(&wanted) => {
                    let _ = tx.send((line, out));
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(found) => found,
        Err(_) => panic!("weft never printed `{needle}` (within 10 s)"),
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Lines of a child's output, read by a thread of their own, so that a
/// wait for one is bounded even when none comes.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn new(mut r: impl BufRead + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        Lines(rx)
    }

    /// Every line until the output ends (the child exited), within 10 s.
    fn rest(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) => all.push_str(&line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return all,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("weft's output did not end within 10 s")
                }
            }
        }
    }

    /// The first line from now that contains `needle`, within 10 s.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("weft never printed `{needle}` (within 10 s)"),
            }
        }
    }
}

/// A weft process started from a configuration, with its stderr.
struct Weft {
    child: Child,
    err: Lines,
    /// The address of listener `in`.
    addr: String,
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weft --config` on `config` (listener `in`, port 0) and waits until
/// it prints its IO setup and listener address; returns it with the setup
/// line.
fn launch(name: &str, config: &str) -> (Weft, String) {
    let file = temp_file(name, config);
    let mut cmd = Command::new(WEFT);
    cmd.args(["--config", file.to_str().unwrap()]);
    launch_cmd(cmd)
}

/// [`launch`] with a prepared command (arguments, limits).
fn launch_cmd(mut cmd: Command) -> (Weft, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let (setup, err) = wait_for_line(err, " worker(s) on ");
    let (line, err) = wait_for_line(err, "listener in on ");
    let addr = listener_addr(&line);
    let err = Lines::new(err);
    (Weft { child, err, addr }, setup)
}

/// The address in weft's `listener in on ADDR (...)` line.
fn listener_addr(line: &str) -> String {
    line.split("listener in on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("not a listener line: {line}"))
        .to_string()
}

/// [`launch`], checking that the IO setup is the one this host is expected
/// to run (`WEFT_TEST_IO`, as in weft-tests).
fn spawn_weft(name: &str, config: &str) -> Weft {
    let (weft, setup) = launch(name, config);
    let expected = match std::env::var("WEFT_TEST_IO").as_deref() {
        Ok("epoll-only") => " on epoll",
        Ok("io-uring-plain") => " on io-uring (ring: plain)",
        _ => " on io-uring (ring: coop-taskrun,single-issuer)",
    };
    assert!(setup.trim_end().ends_with(expected), "{setup}");
    weft
}

/// Waits up to `bound` for the process to exit; its status and when.
fn exit_within(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Waits until `seen` reaches `n` (bounded).
fn wait_count(seen: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A request whose answer may never come: what the client got, if anything.
fn get_lossy(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn one_cluster(workers: usize, runtime_extra: &str, up: SocketAddr) -> String {
    format!("[runtime]\nworkers = {workers}\n{runtime_extra}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"{up}\"]\n")
}

/// `drain_timeout` bounds the drain: a request that never finishes does
/// not hold the exit beyond it.
#[test]
fn drain_timeout_bounds_the_drain() {
    let (up, seen) = slow_upstream(Duration::from_secs(60));
    let mut weft = spawn_weft("drain.toml", &one_cluster(1, "drain_timeout = \"500ms\"", up));
    let addr = weft.addr.clone();
    let stuck = std::thread::spawn(move || get_lossy(&addr, "/never"));
    wait_count(&seen, 1);
    let t = Instant::now();
    signal(&weft.child, libc::SIGTERM);
    let status = exit_within(&mut weft.child, Duration::from_secs(10))
        .expect("weft still running 10 s after SIGTERM with drain_timeout = 500ms");
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}: the request in flight was not given its drain time"
    );
    // The client is not left hanging: its connection closed with weft.
    let got = stuck.join().unwrap();
    assert!(!got.contains("200 OK"), "{got}");
}

/// SIGHUP reloads the file (and does not kill, its default action):
/// requests in flight finish and weft keeps serving; a file that no longer
/// checks is refused, and weft goes on as it was.
#[test]
fn sighup_reloads_the_file() {
    let (up, seen) = slow_upstream(Duration::from_millis(300));
    let config = one_cluster(1, "", up);
    let mut weft = spawn_weft("hup.toml", &config);
    let addr = weft.addr.clone();
    let in_flight = std::thread::spawn(move || get(&addr, "/in-flight"));
    wait_count(&seen, 1);
    signal(&weft.child, libc::SIGHUP);
    weft.err.wait_for("configuration reloaded: generation 2");
    assert!(in_flight.join().unwrap().ends_with("slow!"));
    assert!(get(&weft.addr, "/after").ends_with("slow!"));
    temp_file(
        "hup.toml",
        &config.replace("[[route]]", "[[route]]\nnonsense = 1"),
    );
    signal(&weft.child, libc::SIGHUP);
    let refused = weft.err.wait_for("reload refused");
    assert!(
        refused.contains("still running generation 2") && refused.contains("unknown field `nonsense`"),
        "{refused}"
    );
    assert!(get(&weft.addr, "/still").ends_with("slow!"));
    assert!(
        weft.child.try_wait().unwrap().is_none(),
        "weft exited after SIGHUP"
    );
    signal(&weft.child, libc::SIGTERM);
    let status = exit_within(&mut weft.child, Duration::from_secs(10)).expect("weft did not exit");
    assert!(status.success(), "{status}");
}

/// A closed stderr (`weft ... 2>&1 >/dev/null | true`) is no reason to stop:
/// log lines are dropped, weft serves, and exits 0 on SIGTERM.
#[test]
fn a_closed_stderr_does_not_stop_weft() {
    let (up, _) = slow_upstream(Duration::ZERO);
    let file = temp_file("nostderr.toml", &one_cluster(1, "", up));
    let mut child = Command::new(WEFT)
        .args(["--config", file.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let (line, err) = wait_for_line(err, "listener in on ");
    let addr = listener_addr(&line);
    drop(err);
    // Each of these makes weft write a log line into the closed pipe.
    signal(&child, libc::SIGHUP);
    signal(&child, libc::SIGHUP);
    assert!(get(&addr, "/").ends_with("slow!"));
    signal(&child, libc::SIGTERM);
    let status = exit_within(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("weft did not exit after SIGTERM with stderr closed");
    assert!(status.success(), "{status}");
}

/// A second signal during a drain exits at once, with status 1.
#[test]
fn second_signal_exits_at_once() {
    let (up, seen) = slow_upstream(Duration::from_secs(60));
    let mut weft = spawn_weft("second.toml", &one_cluster(1, "drain_timeout = \"60s\"", up));
    let addr = weft.addr.clone();
    let _stuck = std::thread::spawn(move || get_lossy(&addr, "/never"));
    wait_count(&seen, 1);
    signal(&weft.child, libc::SIGTERM);
    weft.err.wait_for("shutting down");
    assert!(
        exit_within(&mut weft.child, Duration::from_millis(300)).is_none(),
        "weft did not wait for the request in flight"
    );
    signal(&weft.child, libc::SIGTERM);
    let status = exit_within(&mut weft.child, Duration::from_secs(5))
        .expect("weft still running 5 s after a second SIGTERM");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// `pin_cores = true` pins worker i to core i.
#[test]
fn pin_cores_pins_each_worker_to_its_core() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let (up, _) = slow_upstream(Duration::ZERO);
    let weft = spawn_weft("pin.toml", &one_cluster(cores, "pin_cores = true", up));
    assert!(get(&weft.addr, "/").ends_with("slow!"));
    let mut pinned = vec![None; cores];
    for task in std::fs::read_dir(format!("/proc/{}/task", weft.child.id())).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(i) = comm.trim_end().strip_prefix("weft-worker-") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            pinned[i.parse::<usize>().unwrap()] = Some(cpus);
        }
    }
    let expected: Vec<_> = (0..cores).map(|i| Some(i.to_string())).collect();
    assert_eq!(pinned, expected, "allowed CPUs of each worker");
}

/// A worker that cannot build its runtime fails the start (exit status 1,
/// a message naming the worker), instead of running on fewer workers.
#[test]
fn a_worker_that_cannot_start_fails_the_start() {
    use std::os::unix::process::CommandExt;
    let (up, _) = slow_upstream(Duration::ZERO);
    let file = temp_file("nofds.toml", &one_cluster(8, "", up));
    let mut cmd = Command::new(WEFT);
    cmd.args(["--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's
    // limit: enough descriptors to bind the 8 listener sockets, too few
    // for 8 worker runtimes.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE_FOR_WORKERS,
                rlim_max: NOFILE_FOR_WORKERS,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let status = exit_within(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    if status.is_none() {
        let _ = child.kill();
    }
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("weft kept running with a worker that could not start:\n{err}"));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("worker") && err.contains("cannot start"), "{err}");
}

/// For each io_uring ring of process `pid`: whether it refuses a submission
/// from another task (EEXIST), which is what IORING_SETUP_SINGLE_ISSUER
/// does. The ring is borrowed with pidfd_getfd (Linux 5.6+; a parent may
/// take its child's descriptors).
fn rings_refuse_other_submitters(pid: u32) -> Vec<bool> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let path = fd.unwrap().path();
        let is_ring = std::fs::read_link(&path).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[io_uring]");
        if !is_ring {
            continue;
        }
        let target: i32 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        // SAFETY: plain system calls on descriptors this function owns.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
            assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
            let ring = libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) as i32;
            assert!(ring >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
            let r = libc::syscall(
                libc::SYS_io_uring_enter,
                ring,
                1u32,
                0u32,
                0u32,
                std::ptr::null::<libc::c_void>(),
                0usize,
            );
            let err = std::io::Error::last_os_error();
            out.push(r < 0 && err.raw_os_error() == Some(libc::EEXIST));
            libc::close(ring);
            libc::close(pidfd);
        }
    }
    out
}

/// The ring setup weft reports is the one the kernel applied: with the
/// tuned and deferred setups, every worker's ring is single-issuer; with
/// `plain`, none is.
#[test]
fn ring_setup_reported_is_the_one_applied() {
    if std::env::var("WEFT_TEST_IO").is_ok_and(|v| v != "io-uring") {
        eprintln!("skipped: WEFT_TEST_IO says this host has no tuned io_uring ring");
        return;
    }
    let (up, _) = slow_upstream(Duration::ZERO);
    for (setup, single, reported) in [
        ("tuned", true, "io-uring (ring: coop-taskrun,single-issuer)"),
        ("defer", true, "io-uring (ring: defer-taskrun,single-issuer)"),
        ("plain", false, "io-uring (ring: plain)"),
    ] {
        let config = one_cluster(2, &format!("driver = \"io-uring\"\nring_setup = \"{setup}\""), up);
        let (weft, line) = launch(&format!("ring-{setup}.toml"), &config);
        assert!(line.trim_end().ends_with(reported), "{line}");
        let rings = rings_refuse_other_submitters(weft.child.id());
        assert_eq!(
            rings,
            vec![single; 2],
            "ring_setup = {setup}: single-issuer per ring"
        );
    }
}

/// Sends one GET on `s` and reads one `Content-Length` answer; None when
/// nothing comes within `wait`.
fn request_on(s: &mut TcpStream, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !String::from_utf8_lossy(&got).ends_with("slow!") {
        match s.read(&mut b) {
            Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).to_string())
}

/// Out of file descriptors: connections already open keep working, weft
/// says so in the log at most about once a second, and accepts again once
/// descriptors are free.
#[test]
fn descriptor_exhaustion_keeps_open_connections_and_recovers() {
    use std::os::unix::process::CommandExt;
    let (up, _) = slow_upstream(Duration::ZERO);
    let file = temp_file("fds.toml", &one_cluster(1, "", up));
    let mut cmd = Command::new(WEFT);
    cmd.args(["--config", file.to_str().unwrap()])
        .stdout(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; it lowers only this child's limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (mut weft, _) = launch_cmd(cmd);
    // Open connections, each answered, until one is not: out of descriptors.
    let mut open = Vec::new();
    let starved = loop {
        assert!(
            open.len() < 100,
            "never ran out of descriptors with a limit of 48"
        );
        let mut s = TcpStream::connect(&weft.addr).unwrap();
        match request_on(&mut s, Duration::from_millis(500)) {
            Some(answer) => {
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                open.push(s);
            }
            None => break s,
        }
    };
    let t = Instant::now();
    // The connections already open still work.
    for s in open.iter_mut().take(3) {
        assert!(
            request_on(s, Duration::from_secs(5)).is_some(),
            "an open connection stopped working"
        );
    }
    // Free some descriptors: the waiting connection is accepted and served.
    open.truncate(open.len() - 3);
    let mut starved = starved;
    starved.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !String::from_utf8_lossy(&got).ends_with("slow!") {
        match starved.read(&mut b) {
            Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
            other => panic!("the queued connection was not served after descriptors were freed: {other:?}"),
        }
    }
    let starved_for = t.elapsed();
    signal(&weft.child, libc::SIGTERM);
    let _ = exit_within(&mut weft.child, Duration::from_secs(10)).expect("weft did not exit");
    let log = weft.err.rest();
    let complaints = log.lines().filter(|l| l.contains("Too many open files")).count();
    assert!(
        complaints >= 1,
        "weft never said it ran out of descriptors:\n{log}"
    );
    let bound = starved_for.as_secs() as usize + 2;
    assert!(
        complaints <= bound,
        "{complaints} log lines in {starved_for:?}: not rate-limited\n{log}"
    );
}

/// Open files allowed in `a_worker_that_cannot_start_fails_the_start`.
const NOFILE_FOR_WORKERS: libc::rlim_t = 14;

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

/// `weft check` warns (exit 0) about a route an earlier one shadows, and
/// names the line of the first byte that is not UTF-8.
#[test]
fn check_warns_about_shadowed_routes_and_bad_bytes() {
    let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nmatch = { path_prefix = \"/v1\" }\ncluster = \"c\"\n[[route]]\nmatch = { path = \"/v1/x\" }\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
    let file = temp_file("shadow.toml", base);
    let out = Command::new(WEFT)
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "shadow.toml: warning: line 7: this route of listener `a` never matches: the route on line 4"
        ),
        "{err}"
    );
    let mut bytes = base.as_bytes().to_vec();
    bytes.splice(57..57, b"# caf\xe9\n".iter().copied());
    let line = bytes[..57].iter().filter(|b| **b == b'\n').count() + 1;
    let file = std::env::temp_dir()
        .join(format!("weft-cli-{}", std::process::id()))
        .join("latin1.toml");
    std::fs::write(&file, &bytes).unwrap();
    let out = Command::new(WEFT)
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("latin1.toml: line {line}: not UTF-8")),
        "{err}"
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let (up, seen) = slow_upstream(Duration::from_millis(600));
    let mut weft = spawn_weft("run.toml", &one_cluster(2, "", up));
    let addr = weft.addr.clone();
    assert!(get(&addr, "/").ends_with("slow!"));

    let a = addr.clone();
    let in_flight = std::thread::spawn(move || get(&a, "/in-flight"));
    // Signal only once the request is in flight at the upstream.
    wait_count(&seen, 2);
    signal(&weft.child, libc::SIGTERM);
    weft.err.wait_for("shutting down");
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("slow!"),
        "{answer}"
    );
    let status = exit_within(&mut weft.child, Duration::from_secs(10)).expect("weft did not exit");
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
    let out = BufReader::new(child.stdout.take().unwrap());
    let (line, _out) = wait_for_line(out, "proxy on http://");
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    let (mut blue, mut green) = (0, 0);
    for _ in 0..600 {
        let r = get(&addr, "/");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        if r.ends_with("hello from blue\n") {
            blue += 1;
        } else if r.ends_with("hello from green\n") {
            green += 1;
        }
    }
    assert_eq!(blue + green, 600);
    // 80/20 over 600: green is Binomial(600, 0.2), mean 120, sd 9.8; the
    // bounds are 4.6 sd wide (a correct split fails 1 run in 250,000). A
    // 50/50 split (mean 300, sd 12.2) lands inside with probability < 1e-25.
    assert!((75..=165).contains(&green), "blue {blue} green {green}");
    signal(&child, libc::SIGINT);
    assert!(child.wait().unwrap().success());
}
