//! JSON bodies on the HTTP errors hyper answers by itself.
//!
//! When hyper cannot parse a request (malformed request line or header, URI or head too long) it
//! never calls our service: it writes a response of its own — `400`, `414` or `431` with
//! `content-length: 0` and no body — and closes the connection. hyper 1.x has no hook to shape that
//! response (`Http1Transaction::on_error` in `proto/h1/role.rs` is private and fixed), so these
//! were the only errors of the API without its `{"detail", "code"}` body.
//!
//! [`JsonProtocolErrors`] sits between hyper and the socket and replaces that response, and only
//! it, by the API's own error response ([`HttpError::into_response`]) with the same status. It
//! recognises hyper's response by its exact form, as hyper 1.x writes it
//! (`Conn::on_parse_error`, `role::Server::encode`):
//!
//! ```text
//! HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: …\r\n\r\n
//! ```
//!
//! (`HTTP/1.0` and no `connection` header when the connection had spoken HTTP/1.0). That response
//! is the last thing hyper writes on the connection and it is all of one write: a connection reads
//! its next request only once the previous response has been flushed, so the error head lands in
//! an empty write buffer, starts the write and nothing follows it — on the first request of a
//! connection as on a later one. (One exception, left as it was: a client that pipelines a
//! malformed request behind a request refused before its body was read, without reading the
//! refusal, can find the previous response still buffered; then nothing matches and hyper's
//! empty response goes out unchanged.) None of our own responses has that form: every one is
//! built by `HttpError::to_parts` or the router's `json`, so it carries `content-type: application/json` and a non-empty
//! body (a status line alone never matches).
//!
//! The normal path pays one comparison of the first bytes of each write (a 2xx is rejected at its
//! status code; our own 400/414/431 at their first header line). Reads are not looked at.
//!
//! After the replacement, closing lingers: the write side is shut (FIN) and whatever the client is
//! still sending is read and thrown away, up to [`LINGER_FOR`] and [`LINGER_BYTES`], before the
//! socket is dropped. Without it, closing a socket with unread request bytes (the rest of 1 MB of
//! headers) sends a reset: what of the response is not yet sent is dropped, and a client still
//! writing its request gets "connection reset" instead of reading our answer.

use crate::{MAX_HEAD_BYTES, MAX_HEADER_FIELDS, MAX_URI_BYTES};
use bytes::Bytes;
use opscore_http::error::HttpError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a connection whose request was refused keeps reading (and discarding) what the client
/// still sends, so that it reads our answer instead of a reset.
const LINGER_FOR: Duration = Duration::from_secs(2);
/// How much it discards at most meanwhile.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// The socket under hyper, with hyper's empty protocol-error responses replaced by JSON ones.
pub(crate) struct JsonProtocolErrors<S> {
    inner: S,
    replacement: Option<Replacement>,
}

/// Our response in place of hyper's, and how far closing the connection has got.
struct Replacement {
    response: Bytes,
    written: usize,
    shut: bool,
    linger: Option<Linger>,
}

struct Linger {
    until: Pin<Box<tokio::time::Sleep>>,
    discarded: usize,
}

impl<S> JsonProtocolErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            replacement: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonProtocolErrors<S> {
    /// Writes what is left of the replacement, if any; ready once it is all out.
    fn poll_write_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(r) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while r.written < r.response.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &r.response[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonProtocolErrors<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for JsonProtocolErrors<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacement.is_none() {
            if let Some(response) = replacement_for(buf) {
                self.replace(response);
                return Poll::Ready(Ok(buf.len()));
            }
        } else {
            // hyper writes nothing after its error response; were it to, it would go after ours.
            ready!(self.poll_write_replacement(cx))?;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_none() {
            // hyper's error head is its whole write buffer: the first slice, the others empty
            // (looked at only when the first slice is the error head).
            if let Some((first, others)) = bufs.split_first()
                && let Some(response) = replacement_for(first)
                && others.iter().all(|b| b.is_empty())
            {
                self.replace(response);
                return Poll::Ready(Ok(first.len()));
            }
        } else {
            ready!(self.poll_write_replacement(cx))?;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper queues bodies without copying them only over a vectored writer: keep it so.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_none() {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        ready!(self.poll_write_replacement(cx))?;
        let this = &mut *self;
        let r = this.replacement.as_mut().expect("checked above");
        if !r.shut {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            r.shut = true;
        }
        let linger = r.linger.get_or_insert_with(|| Linger {
            until: Box::pin(tokio::time::sleep(LINGER_FOR)),
            discarded: 0,
        });
        let mut scratch = [0u8; 8192];
        while linger.discarded < LINGER_BYTES && linger.until.as_mut().poll(cx).is_pending() {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => linger.discarded += buf.filled().len(),
                // The client has closed (it has our answer) or the connection is gone.
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> JsonProtocolErrors<S> {
    fn replace(&mut self, response: Bytes) {
        self.replacement = Some(Replacement {
            response,
            written: 0,
            shut: false,
            linger: None,
        });
    }
}

/// Our response in place of `write` if `write` is exactly one of hyper's own error responses
/// (see the module's doc), else `None` — decided by the first bytes for any other write.
fn replacement_for(write: &[u8]) -> Option<Bytes> {
    // The status line's first 13 bytes: any other status, or a write that does not start a
    // response, is rejected here.
    let version = write.get(..8).filter(|v| v.starts_with(b"HTTP/1."))?;
    let error = match write.get(8..13)? {
        b" 400 " => HttpError::MalformedRequest,
        b" 414 " => HttpError::UriTooLong { limit: MAX_URI_BYTES },
        b" 431 " => HttpError::HeadersTooLarge {
            bytes: MAX_HEAD_BYTES,
            fields: MAX_HEADER_FIELDS,
        },
        _ => return None,
    };
    let head = write.strip_suffix(b"\r\n\r\n")?;
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // the status line, checked above
    // Only the headers hyper sets on its own response; our responses carry content-type (and a
    // length that is not 0), so the first header line of theirs already fails here.
    let mut empty = false;
    let mut date = None;
    for line in lines {
        match line {
            b"connection: close" => {}
            b"content-length: 0" => empty = true,
            _ if line.starts_with(b"date: ") => date = Some(line),
            _ => return None,
        }
    }
    if !empty {
        return None;
    }
    Some(render(version, error, date))
}

/// The bytes of `error`'s API response (status, headers and body from
/// [`HttpError::into_response`]) as a closing HTTP/1 response, keeping hyper's `date` line.
fn render(version: &[u8], error: HttpError, date: Option<&[u8]>) -> Bytes {
    let (status, headers, body) = error.to_parts();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(version);
    out.push(b' ');
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    if let Some(date) = date {
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Wed, 25 Nov 2026 19:11:26 GMT";

    fn text(b: Option<Bytes>) -> String {
        String::from_utf8(b.expect("replaced").to_vec()).unwrap()
    }

    /// The bytes hyper 1.12 writes, captured from the server.
    #[test]
    fn hyper_error_responses_are_replaced_by_the_api_error() {
        for (status, reason, code) in [
            ("400", "Bad Request", "malformed_request"),
            ("414", "URI Too Long", "uri_too_long"),
            ("431", "Request Header Fields Too Large", "headers_too_large"),
        ] {
            let hyper =
                format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n");
            let ours = text(replacement_for(hyper.as_bytes()));
            let (head, body) = ours.split_once("\r\n\r\n").unwrap();
            let body_json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body_json["code"], code);
            assert_eq!(
                head,
                format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n{DATE}",
                    body.len()
                )
            );
        }
    }

    /// After an HTTP/1.0 request on a kept-alive connection hyper answers in HTTP/1.0, without a
    /// connection header.
    #[test]
    fn the_http_1_0_form_is_replaced_too() {
        let hyper = format!("HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n\r\n");
        let ours = text(replacement_for(hyper.as_bytes()));
        assert!(
            ours.starts_with("HTTP/1.0 400 Bad Request\r\ncontent-type: application/json\r\n"),
            "{ours}"
        );
        assert!(ours.contains("\r\nconnection: close\r\n"), "{ours}");
    }

    #[test]
    fn our_own_responses_are_never_replaced() {
        let own_400 = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 49\r\n\
                       connection: close\r\ndate: Wed, 25 Nov 2026 19:11:26 GMT\r\n\r\n";
        let body = r#"{"detail":"event_type is required","code":"bad_request"}"#;
        for write in [
            own_400.to_owned(),
            format!("{own_400}{body}"),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n".to_owned(),
            // A body or a head's tail at the start of a write.
            body.to_owned(),
            "\r\ncontent-length: 0\r\n\r\n".to_owned(),
            // hyper's form with something after it, or without content-length: 0.
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n{{}}"),
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n{DATE}\r\n\r\n"),
            // Statuses hyper does not answer by itself.
            format!("HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"),
            "HTTP/1.1 4".to_owned(),
            String::new(),
        ] {
            assert!(replacement_for(write.as_bytes()).is_none(), "{write:?}");
        }
    }
}
