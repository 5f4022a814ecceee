//! Just enough HTTP/1.1 for the API: requests read with [`httparse`] under strict limits, JSON or
//! empty responses written back, keep-alive.
//!
//! Limits (a client can send anything): the request line and headers at most [`MAX_HEAD`] bytes, a
//! body at most [`MAX_BODY`] bytes (Firecracker's default), the whole request within
//! [`REQUEST_TIMEOUT`] of its first byte (a client that trickles bytes is cut off), and an idle
//! keep-alive connection closed after [`IDLE_TIMEOUT`]. `Transfer-Encoding` is refused: bodies have a
//! `Content-Length`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The most bytes of request line and headers.
pub const MAX_HEAD: usize = 8 << 10;
/// The most bytes of body (Firecracker's default payload limit).
pub const MAX_BODY: usize = 51_200;
/// The most headers in a request.
const MAX_HEADERS: usize = 32;
/// How long a request may take to arrive, from its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `PATCH`...
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// The body (empty if there was none).
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection between requests.
    #[error("connection closed")]
    Closed,
    /// The connection failed, or the client was too slow.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// Not HTTP, or HTTP kvmkit does not take; answered with 400, then the connection is closed.
    #[error("{0}")]
    Malformed(String),
    /// A body larger than [`MAX_BODY`]; answered with 413, then the connection is closed.
    #[error(
        "Request payload with size {0} is larger than the limit of {MAX_BODY} allowed by server."
    )]
    TooLarge(usize),
}

/// An HTTP response: a status and a JSON body, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// 200 with `body` (JSON).
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// `status` with Firecracker's error body, `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message }).to_string()),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: kvmkit API\r\nConnection: {}\r\n",
            self.status,
            self.reason(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None if self.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

/// One client connection: the stream and the bytes read past the last request (pipelining).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl Connection {
    /// A connection on `stream`.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads more bytes into `pending`, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the next request.
    pub fn read_request(&mut self) -> Result<Request, ReadError> {
        // Idle: wait for the first byte of the next request.
        let idle_deadline = Instant::now() + IDLE_TIMEOUT;
        while self.pending.is_empty() {
            if self.fill(idle_deadline)? == 0 {
                return Err(ReadError::Closed);
            }
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let (head_len, request, content_length) = loop {
            if let Some(parsed) = parse_head(&self.pending)? {
                break parsed;
            }
            if self.pending.len() > MAX_HEAD {
                return Err(ReadError::Malformed(format!(
                    "request headers longer than {MAX_HEAD} bytes"
                )));
            }
            if self.fill(deadline)? == 0 {
                return Err(ReadError::Malformed("request cut short".into()));
            }
        };
        if content_length > MAX_BODY {
            return Err(ReadError::TooLarge(content_length));
        }
        while self.pending.len() < head_len + content_length {
            if self.fill(deadline)? == 0 {
                return Err(ReadError::Malformed("request body cut short".into()));
            }
        }
        let body = self.pending[head_len..head_len + content_length].to_vec();
        self.pending.drain(..head_len + content_length);
        Ok(Request { body, ..request })
    }

    /// Writes `response`.
    pub fn write_response(&mut self, response: &Response, keep_alive: bool) -> std::io::Result<()> {
        self.stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        self.stream.write_all(&response.to_bytes(keep_alive))
    }
}

/// Parses the request line and headers at the start of `bytes`: `None` if they are not complete yet,
/// else their length, the request (without its body) and the body's length.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Malformed(format!("malformed HTTP request: {e}"))),
    };
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length = 0usize;
    let mut seen_length = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ReadError::Malformed(format!("header {} is not text", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ReadError::Malformed(format!("invalid Content-Length '{value}'")))?;
            if seen_length && n != content_length {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = n;
            seen_length = true;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Malformed(
                "Transfer-Encoding is not supported: send a Content-Length".into(),
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if !path.starts_with('/') {
        return Err(ReadError::Malformed(format!(
            "invalid request target '{target}'"
        )));
    }
    Ok(Some((
        head_len,
        Request {
            method,
            path,
            body: Vec::new(),
            keep_alive,
        },
        content_length,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Result<Request, String>> {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut conn = Connection::new(server);
        let mut out = Vec::new();
        loop {
            match conn.read_request() {
                Ok(r) => out.push(Ok(r)),
                Err(ReadError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn pipelined_requests_with_and_without_bodies() {
        let got = read_all(
            b"GET /machine-config HTTP/1.1\r\nHost: x\r\n\r\n\
              PUT /actions?x=1 HTTP/1.1\r\nContent-Length: 31\r\n\r\n{\"action_type\":\"InstanceStart\"}\
              GET / HTTP/1.0\r\n\r\n",
        );
        assert_eq!(got.len(), 3);
        let a = got[0].as_ref().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.keep_alive),
            ("GET", "/machine-config", true)
        );
        let b = got[1].as_ref().unwrap();
        assert_eq!(b.path, "/actions");
        assert_eq!(b.body, br#"{"action_type":"InstanceStart"}"#);
        assert!(!got[2].as_ref().unwrap().keep_alive, "HTTP/1.0 closes");
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for (input, expect) in [
            (&b"NOT HTTP AT ALL\r\n\r\n"[..], "malformed"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "Content-Length",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                "larger than the limit",
            ),
            (
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
                "cut short",
            ),
            (b"GET / HTTP/1.1\r\nX: ", "cut short"),
            (b"GET * HTTP/1.1\r\n\r\n", "invalid request target"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
        ] {
            let got = read_all(input);
            let last = got.last().unwrap();
            assert!(
                last.as_ref().is_err_and(|e| e.contains(expect)),
                "{:?}: {got:?}",
                String::from_utf8_lossy(input)
            );
        }
        let huge = vec![b'a'; MAX_HEAD * 2];
        assert!(
            read_all(&huge)[0]
                .as_ref()
                .is_err_and(|e| e.contains("longer than"))
        );
    }

    #[test]
    fn responses_are_framed() {
        let r = Response::fault(400, "no").to_bytes(true);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Content-Length: 22\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"no\"}"));
        let text = String::from_utf8(Response::no_content().to_bytes(false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\n") && text.contains("Connection: close")
        );
        assert!(text.ends_with("\r\n\r\n") && !text.contains("Content-Length"));
    }
}
