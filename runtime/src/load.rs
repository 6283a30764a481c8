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
    let src = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&src).map_err(|e| format!("{}: {e}", path.display()))
}
