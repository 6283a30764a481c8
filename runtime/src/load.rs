//! Loading a configuration file: reading it and resolving endpoint names.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use weft_core::Config;

/// Resolves `host:port` with the system resolver (at load time only).
pub fn resolve(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if !s.contains(':') {
        return Err("expected host:port".into());
    }
    s.to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| e.to_string())
}

/// Parses configuration text, resolving endpoints with the system resolver.
pub fn parse(src: &str) -> Result<Config, weft_core::ConfigError> {
    Config::parse(src, &resolve)
}

/// Reads and validates the configuration file at `path`. The error message
/// names the file, the line and the field.
pub fn from_file(path: &Path) -> Result<Config, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let src = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!(
            "{}: line {line}: not UTF-8 text (byte {at} of the file): save the file as UTF-8",
            path.display()
        )
    })?;
    let mut config = parse(&src).map_err(|e| format!("{}: {e}", path.display()))?;
    // Certificate, key and access log paths are relative to the file's
    // directory.
    let dir = path.parent().unwrap_or(Path::new("."));
    for l in &mut config.listeners {
        if let Some(weft_core::AccessLogSettings {
            path: weft_core::LogPath::File(p),
            ..
        }) = &mut l.access_log
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        if let Some(t) = &mut l.tls {
            let pairs = t.sni.iter_mut().flat_map(|(c, k)| [c, k]);
            for p in [&mut t.cert, &mut t.key]
                .into_iter()
                .chain(pairs)
                .chain(t.client_ca.as_mut())
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
    }
    for c in &mut config.clusters {
        if let Some(t) = &mut c.tls {
            let pair = t.client_cert.iter_mut().flat_map(|(c, k)| [c, k]);
            for p in std::iter::once(&mut t.ca).chain(pair) {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
    }
    Ok(config)
}
