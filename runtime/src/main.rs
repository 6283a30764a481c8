//! The `weft` binary: run a configuration, check one, or run the demo.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use weft::alloc::MiMalloc;
use weft::{demo, load, Server};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const USAGE: &str = "\
weft: a thread-per-core service-mesh data plane

usage:
  weft --config FILE      run the proxy described by FILE
  weft check FILE         validate FILE and print what it would run
  weft demo [--listen ADDR]
                          run two demo upstreams and a proxy splitting 80/20
                          between them (default ADDR 127.0.0.1:8080)
  weft --version | --help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["--config" | "-c", file] => run(load::from_file(&PathBuf::from(file)), Some(PathBuf::from(file))),
        ["check", file] => check(file),
        ["demo"] => run_demo(None),
        ["demo", "--listen", addr] => match addr.parse() {
            Ok(addr) => run_demo(Some(addr)),
            Err(_) => fail(&format!("`{addr}` is not an IP:port address")),
        },
        ["--version" | "-V"] => {
            println!("weft {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    weft::log::write_now(msg);
    ExitCode::FAILURE
}

/// Prints to stdout; a closed stdout (`weft demo | head -1`) is no error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Installs the signal handlers before anything runs: SIGINT and SIGTERM
/// drain and stop; SIGHUP reloads the configuration file; SIGUSR1 reopens
/// the access log files (log rotation).
fn signals() -> Result<Signals, ExitCode> {
    Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(|e| fail(&format!("cannot install signal handlers: {e}")))
}

fn check(file: &str) -> ExitCode {
    match load::from_file(&PathBuf::from(file)) {
        Ok(config) => {
            // Certificates and keys are read and checked as at start.
            if let Err(e) = weft::tls::load(&config).and_then(|_| weft::tls::load_clusters(&config)) {
                return fail(&format!("{file}: {e}"));
            }
            out!("{file}: ok");
            for w in config.warnings() {
                weft::log::write_now(&format!("{file}: warning: {w}"));
            }
            out!("{}", config.describe().trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run(config: Result<weft::Config, String>, source: Option<PathBuf>) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let signals = match signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    for w in config.warnings() {
        weft::log::write_now(&format!("warning: {w}"));
    }
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    weft::log::write_now(&format!(
        "{} worker(s) on {}",
        server.workers().len(),
        server.io()
    ));
    for (name, addr) in server.addrs() {
        weft::log::write_now(&format!("listener {name} on {addr}"));
    }
    if let Some(path) = source {
        server.reload_handle().set_source(path);
    }
    if let Some(addr) = server.admin_addr() {
        weft::log::write_now(&format!(
            "admin on http://{addr} (/metrics, /ready, /live, /config, /clusters, POST /reload, POST /drain)"
        ));
    }
    serve_until_signal(server, signals)
}

fn serve_until_signal(server: Server, mut signals: Signals) -> ExitCode {
    let shutdown = server.shutdown_handle();
    let reopen = server.reopen_logs();
    let reload = server.reload_handle();
    std::thread::spawn(move || {
        let mut stops = 0;
        for signal in signals.forever() {
            if signal == SIGUSR1 {
                reopen.fire();
                continue;
            }
            if signal == SIGHUP {
                // Applied or refused, the reload says so in the log; on a
                // thread of its own, so that a slow resolver never holds
                // up a SIGTERM.
                let reload = reload.clone();
                let _ = std::thread::Builder::new()
                    .name("weft-reload".into())
                    .spawn(move || reload.from_source());
                continue;
            }
            stops += 1;
            if stops == 1 {
                weft::log::write_now("shutting down: no new connections, finishing requests in flight");
                shutdown.fire();
            } else {
                weft::log::write_now("second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
    server.join();
    weft::log::flush(std::time::Duration::from_millis(200));
    weft::log::write_now("stopped");
    ExitCode::SUCCESS
}

fn run_demo(listen: Option<SocketAddr>) -> ExitCode {
    let signals = match signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let (blue, green) = match (
        demo::spawn_upstream("blue", loopback),
        demo::spawn_upstream("green", loopback),
    ) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => return fail(&format!("cannot start the demo upstreams: {e}")),
    };
    let wanted = listen.unwrap_or(([127, 0, 0, 1], 8080).into());
    let start = |addr| {
        let text = demo::config_text(addr, blue, green);
        let config = load::parse(&text).map_err(|e| e.to_string())?;
        Server::start(config).map_err(|e| e.to_string())
    };
    let server = match start(wanted) {
        Ok(s) => s,
        // The default port is taken: use any free port rather than fail.
        Err(_) if listen.is_none() => match start(([127, 0, 0, 1], 0).into()) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        },
        Err(e) => return fail(&e),
    };
    let addr = server.addr("demo").unwrap_or(wanted);
    out!("weft demo: proxy on http://{addr}");
    out!("  upstream blue  on {blue}  (weight 80)");
    out!("  upstream green on {green} (weight 20)");
    out!("try:  for i in $(seq 10); do curl -s http://{addr}/; done");
    out!("Ctrl-C to stop.");
    serve_until_signal(server, signals)
}
