//! A transport-neutral request/response, so the same handlers serve Lambda (API Gateway HTTP API,
//! function URL) and the local stack's HTTP server.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    /// The path as received (percent-encoded), without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    /// The raw body bytes as delivered (base64 already decoded by the transport).
    pub body: Bytes,
    /// The Lambda request id (or a local one), carried into every log line.
    pub request_id: String,
}

impl ApiRequest {
    pub fn new(method: Method, path_and_query: &str, headers: HeaderMap, body: impl Into<Bytes>) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_and_query, ""),
        };
        Self {
            method,
            path: path.to_owned(),
            query: parse_query(query),
            headers,
            body: body.into(),
            request_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The single value of a query parameter; a repeated parameter is ambiguous and refused.
    pub fn query_param(&self, name: &str) -> Result<Option<&str>, String> {
        let mut it = self.query.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(format!("query parameter {name:?} is given more than once"));
        }
        Ok(first)
    }
}

/// `application/x-www-form-urlencoded` decoding of a query string (`+` is a space).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Self {
        let body =
            serde_json::to_vec(body).unwrap_or_else(|_| br#"{"detail":"response serialisation failed"}"#.to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Self {
            status,
            headers,
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1&b=x%20y&c=a+b&d"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "a b".into()),
                ("d".into(), "".into())
            ]
        );
        assert_eq!(
            parse_query("bad=%zz&e=%"),
            vec![("bad".into(), "%zz".into()), ("e".into(), "%".into())]
        );
        assert_eq!(parse_query("cursor=abc%3D%3D"), vec![("cursor".into(), "abc==".into())]);
    }
}
