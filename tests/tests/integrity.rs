//! Nothing is lost: large bodies arrive byte for byte, and many concurrent
//! connections each get their own answer.

use weft_tests::*;

const SIZE: usize = 8 * 1024 * 1024 + 13;

fn multi_megabyte_content_length_bodies_both_ways() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let body = pattern(SIZE, 7);
    let mut c = Client::connect(addr);
    c.send(format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes());
    // Write the body from another thread while this one reads the echo.
    let mut writer = c.stream().try_clone().unwrap();
    let sent = body.clone();
    let t = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &sent).unwrap());
    let r = c.response(false).unwrap();
    t.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), sha256(&body));
    assert_eq!(sha256(&up.request(0).body), sha256(&body));
    // And a large response to a small request, on the same connection.
    let r = c.get("/down", &format!("x-response-bytes: {SIZE}\r\n"));
    assert_eq!(sha256(&r.body), sha256(&pattern(SIZE, SIZE as u64)));
}

fn multi_megabyte_chunked_bodies_both_ways() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let body = pattern(SIZE, 9);
    let mut c = Client::connect(addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nx-chunked: 70000\r\n\r\n");
    let mut writer = c.stream().try_clone().unwrap();
    let sent = body.clone();
    let t = std::thread::spawn(move || {
        // Uneven chunk sizes, each chunk written separately.
        let mut at = 0;
        let mut size = 1;
        while at < sent.len() {
            let n = size.min(sent.len() - at);
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&sent[at..at + n]);
            chunk.extend_from_slice(b"\r\n");
            std::io::Write::write_all(&mut writer, &chunk).unwrap();
            at += n;
            size = size * 3 % 100_003 + 1;
        }
        std::io::Write::write_all(&mut writer, b"0\r\n\r\n").unwrap();
    });
    let r = c.response(false).unwrap();
    t.join().unwrap();
    assert!(r.chunked);
    assert_eq!(sha256(&r.body), sha256(&body));
    let got = up.request(0);
    assert!(got.chunked);
    assert_eq!(sha256(&got.body), sha256(&body));
}

fn a_thousand_concurrent_connections_each_get_their_answer() {
    let up = Upstream::echo("a");
    // 1,000 requests in flight to one cluster: past the default thresholds
    // (Envoy's 1,024, split across the two workers, and the kernel does not
    // split the connections evenly), so the test raises them.
    let config = simple_config(
        &[up.addr],
        "",
        "limits = { max_requests = 4096, max_connections = 4096 }",
    )
    .replace("workers = 1", "workers = 2");
    let server = start(&config);
    let addr = server.addr("in").unwrap();
    let mut clients: Vec<Client> = (0..1000).map(|_| Client::connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let body = format!("request number {i}");
        c.send(
            format!(
                "POST /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c
            .response(false)
            .unwrap_or_else(|| panic!("no response on connection {i}"));
        assert_eq!(r.status, 200, "connection {i}");
        assert_eq!(r.text(), format!("request number {i}"));
    }
    assert_eq!(up.count(), 1000);
}

on_both_drivers!(
    multi_megabyte_content_length_bodies_both_ways,
    multi_megabyte_chunked_bodies_both_ways,
    a_thousand_concurrent_connections_each_get_their_answer,
);
