//! Issue 13, defect 9: a request the HTTP server cannot even parse (malformed request line or
//! header, URI or headers too long) is answered like every other error of the API: a 4xx with
//! `content-type: application/json` and the `{"detail", "code"}` body. Before, hyper answered these
//! by itself with an empty body.
//!
//! Raw TCP against the real server (`Stack::start`, the same server `opscore-local` runs): no HTTP
//! client would send these requests.

use opscore_core::config::Config;
use opscore_local::{Options, Stack, StoreChoice};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn stack() -> Stack {
    Stack::start(Options {
        port: 0,
        store: StoreChoice::Memory,
        table: "protocol-errors".into(),
        sweep_every: Duration::from_secs(1),
        config: Config::default(),
    })
    .await
    .expect("stack starts")
}

/// One response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Asserts the API's JSON error shape with `status` and `code`, and returns its `detail`.
    fn assert_json_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        assert_eq!(self.header("connection"), Some("close"), "{self:?}");
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)));
        assert_eq!(body["code"], code, "{body}");
        let keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["code", "detail"], "the API's error shape: {body}");
        body["detail"].as_str().expect("detail is a string").to_owned()
    }
}

/// Parses the response at the start of `bytes`; returns it and the bytes after it.
fn parse_answer(bytes: &[u8]) -> (Answer, &[u8]) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a content-length");
    let rest = &bytes[end + 4..];
    assert!(
        rest.len() >= length,
        "body cut short: {}",
        String::from_utf8_lossy(bytes)
    );
    let answer = Answer {
        status,
        headers,
        body: rest[..length].to_vec(),
    };
    (answer, &rest[length..])
}

/// Sends `request` on a new connection and returns the one response the server sends before it
/// closes the connection (nothing may follow it).
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let received = send_and_read_to_close(stream, request).await;
    let (answer, rest) = parse_answer(&received);
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    answer
}

/// Writes `request` from a task of its own while reading, so a server that answers before it has
/// read a large request cannot deadlock the test, and reads until the server closes.
async fn send_and_read_to_close(stream: TcpStream, request: Vec<u8>) -> Vec<u8> {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may stop reading (and close) before it has read everything: not a failure.
        let _ = write.write_all(&request).await;
        write
    });
    let mut received = Vec::new();
    // A reset after the response would only be an error after the bytes already read.
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut received))
        .await
        .expect("the server closes the connection after a protocol error");
    drop(writer.await);
    received
}

/// `GET /health` with `count` headers of `value_len` bytes each.
fn with_filler_headers(count: usize, value_len: usize) -> Vec<u8> {
    let mut request = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..count {
        request.extend(format!("x-filler-{i}: ").as_bytes());
        request.extend(std::iter::repeat_n(b'v', value_len));
        request.extend(b"\r\n");
    }
    request.extend(b"\r\n");
    request
}

/// Sends `request` alone on a fresh connection to a fresh stack and checks that it is refused with
/// `status`, the error `code`, and a detail that says `what`.
async fn refused(request: Vec<u8>, status: u16, code: &str, what: &str) {
    let stack = stack().await;
    let answer = exchange(stack.addr, request).await;
    let detail = answer.assert_json_error(status, code);
    assert!(detail.contains(what), "{detail}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_line_gets_a_json_400() {
    refused(
        b"GARBAGE\r\n\r\n".to_vec(),
        400,
        "malformed_request",
        "could not be parsed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_header_line_gets_a_json_400() {
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n".to_vec();
    refused(request, 400, "malformed_request", "could not be parsed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_of_100_kb_gets_a_json_414() {
    let mut request = b"GET /".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    refused(request, 414, "uri_too_long", "URI longer than 65534 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_of_1_mb_get_a_json_431() {
    // 64 headers of 16 KiB: under the count limit, over the size limit.
    let request = with_filler_headers(64, 16 * 1024);
    assert!(request.len() > 1024 * 1024);
    refused(
        request,
        431,
        "headers_too_large",
        "request headers larger than 131072 bytes",
    )
    .await;
}

/// 100 fields are served, 101 are not (the limit the documentation and the error message name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_header_fields_get_a_json_431() {
    let stack = stack().await;
    let with_fields = |fields: usize| {
        let mut request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        for i in 2..fields {
            request.extend(format!("x-field-{i}: v\r\n").as_bytes());
        }
        request.extend(b"\r\n");
        request
    };
    let answer = exchange(stack.addr, with_fields(100)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = exchange(stack.addr, with_fields(101)).await;
    let detail = answer.assert_json_error(431, "headers_too_large");
    assert!(detail.contains("more than 100 header fields"), "{detail}");
    stack.stop().await;
}

/// The error response is recognised at the start of any response on the connection, not only of
/// its first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_after_a_good_one_on_a_keep_alive_connection_gets_a_json_400() {
    let stack = stack().await;
    let mut stream = TcpStream::connect(stack.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the first response whole before the second request goes out, so the server has
    // written it and is waiting for the next request on the kept-alive connection.
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    let good = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the first answer comes")
            .unwrap();
        assert!(n > 0, "the connection was closed after a good request");
        first.extend_from_slice(&buf[..n]);
        if let Some(end) = first.windows(4).position(|w| w == b"\r\n\r\n")
            && first.len() >= end + 4 + r#"{"status":"ok"}"#.len()
        {
            let (answer, rest) = parse_answer(&first);
            assert!(rest.is_empty());
            break answer;
        }
    };
    assert_eq!(good.status, 200, "{good:?}");
    assert_eq!(good.header("connection"), None, "kept alive: {good:?}");

    let received = send_and_read_to_close(stream, b"GARBAGE\r\n\r\n".to_vec()).await;
    let (answer, rest) = parse_answer(&received);
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    let detail = answer.assert_json_error(400, "malformed_request");
    assert!(detail.contains("could not be parsed"), "{detail}");
    stack.stop().await;
}

/// A client that writes its whole request before it reads (most do) still gets the answer when
/// the server refused the request long before its end: the server reads and discards the rest
/// for a while instead of resetting the connection under the client's writes. 12 MB: more than
/// the two sockets' buffers take on loopback here (without the lingering close, `write_all` fails
/// with a reset every time), less than the 16 MiB the server discards at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_when_refused_reads_the_json_answer() {
    let stack = stack().await;
    let request = with_filler_headers(12 * 1024, 1000);
    let mut stream = TcpStream::connect(stack.addr).await.unwrap();
    stream.write_all(&request).await.expect("the whole request is taken");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("no reset");
    drop(stream);
    let (answer, _) = parse_answer(&received);
    answer.assert_json_error(431, "headers_too_large");
    stack.stop().await;
}
