//! `weft demo`: two small built-in upstreams on loopback and a proxy in
//! front of them that splits traffic by weight.

use crate::io::{nodelay, read_more, write_one};
use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use weft_proto::{parse_request, BodyFraming, ChunkedDecoder, Limits};

/// Starts a tiny HTTP/1.1 server on `addr` in its own thread whose answers
/// name it (`hello from NAME`). Returns the bound address.
pub fn spawn_upstream(name: &str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(format!("demo-{name}"))
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else { return };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    monoio::spawn(serve_demo(stream, name.clone()));
                }
            });
        })?;
    Ok(bound)
}

async fn serve_demo(mut stream: TcpStream, name: String) {
    nodelay(&stream);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let head = loop {
            match parse_request(&mut buf, &Limits::default()) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => return,
            }
            match read_more(&mut stream, &mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        // Skip the request body.
        match head.framing {
            BodyFraming::Length(mut n) => loop {
                let k = n.min(buf.len() as u64);
                let _ = buf.split_to(k as usize);
                n -= k;
                if n == 0 {
                    break;
                }
                if !matches!(read_more(&mut stream, &mut buf).await, Ok(x) if x > 0) {
                    return;
                }
            },
            BodyFraming::Chunked => {
                let mut d = ChunkedDecoder::new();
                loop {
                    let Ok(k) = d.feed(&buf) else { return };
                    let _ = buf.split_to(k);
                    if d.is_done() {
                        break;
                    }
                    if !matches!(read_more(&mut stream, &mut buf).await, Ok(x) if x > 0) {
                        return;
                    }
                }
            }
            _ => {}
        }
        let body = format!("hello from {name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{}",
            body.len(),
            if head.is_head() { "" } else { &body }
        );
        if write_one(&mut stream, resp.into()).await.is_err() || !head.keep_alive {
            return;
        }
    }
}

/// The configuration `weft demo` runs: a listener on `listen`, one route
/// splitting 80/20 between clusters `blue` and `green`.
pub fn config_text(listen: SocketAddr, blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        r#"# The configuration `weft demo` runs.
[runtime]
workers = 1

[[listener]]
name = "demo"
listen = "{listen}"

[[route]]
match = {{ path_prefix = "/" }}
split = [ {{ cluster = "blue", weight = 80 }}, {{ cluster = "green", weight = 20 }} ]

[[cluster]]
name = "blue"
endpoints = ["{blue}"]

[[cluster]]
name = "green"
endpoints = ["{green}"]
"#
    )
}
