//! The one HTTP request the aggregator answers, `GET /metrics`, and the
//! answers to every other: request head in, response bytes out, no I/O
//! (`serve` reads and writes). HTTP/1.0 and 1.1, one request per
//! connection, `Connection: close`: a scraper needs no more.

/// The media type of the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const TEXT: &str = "text/plain; charset=utf-8";

/// An answer, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: the headers of GET's answer, without its body.
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: TEXT,
            body: body.to_string(),
            head_only: false,
        }
    }

    /// 431: the head is longer than `MAX_METRICS_REQUEST_HEAD`.
    pub fn too_large() -> Response {
        Response::text(
            431,
            "Request Header Fields Too Large",
            "Request head too large.\n",
        )
    }

    /// 503: the endpoint serves as many connections as it may.
    pub fn busy() -> Response {
        Response::text(
            503,
            "Service Unavailable",
            "Too many connections at once; try again.\n",
        )
    }

    pub fn body(&self) -> &str {
        &self.body
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Where the request head in `buf` ends (after its blank line), once it
/// is all there. A bare LF ends a line too (RFC 9112 section 2.2 lets a
/// server accept it).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(n) = buf[i..].iter().position(|&b| b == b'\n') {
        let next = i + n + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => i = next,
        }
    }
    None
}

/// The answer to the request whose head is `head`; `metrics` makes the
/// page, only when it is asked for.
pub fn answer(head: &[u8], metrics: impl FnOnce() -> String) -> Response {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Response::text(400, "Bad Request", "Bad request.\n");
    };
    if !version.starts_with(b"HTTP/1.") || target.is_empty() {
        return Response::text(400, "Bad Request", "Bad request.\n");
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => {
            return Response::text(
                405,
                "Method Not Allowed",
                "Only GET (and HEAD) of /metrics.\n",
            );
        }
    };
    // A query (`?name[]=...`, which Prometheus sends when told to) selects
    // nothing here: the page is small, and always whole.
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let mut response = if path == b"/metrics" {
        Response {
            status: 200,
            reason: "OK",
            content_type: METRICS_CONTENT_TYPE,
            body: metrics(),
            head_only: false,
        }
    } else {
        Response::text(
            404,
            "Not Found",
            "Not found: the metrics are at /metrics.\n",
        )
    };
    response.head_only = head_only;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Response) -> String {
        String::from_utf8(r.to_bytes()).expect("ASCII")
    }

    #[test]
    fn get_metrics_is_the_page_in_format_0_0_4() {
        let r = answer(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:11110\r\nAccept: text/plain\r\n\r\n",
            || "a_total 1\n".to_string(),
        );
        assert_eq!(
            text(&r),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 10\r\nConnection: close\r\n\r\na_total 1\n"
        );
        let r = answer(b"GET /metrics?x=1 HTTP/1.0\n\n", || "x\n".to_string());
        assert_eq!(r.status, 200);
    }

    #[test]
    fn head_gets_the_headers_only() {
        let r = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", || {
            "a_total 1\n".to_string()
        });
        let t = text(&r);
        assert!(t.contains("Content-Length: 10\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
    }

    #[test]
    fn other_paths_methods_and_garbage() {
        let never = || -> String { panic!("the page is made only for /metrics") };
        assert_eq!(answer(b"GET / HTTP/1.1\r\n\r\n", never).status, 404);
        assert_eq!(answer(b"GET /metricsx HTTP/1.1\r\n\r\n", never).status, 404);
        let r = answer(b"POST /metrics HTTP/1.1\r\n\r\n", never);
        assert_eq!(r.status, 405);
        assert!(text(&r).contains("\r\nAllow: GET, HEAD\r\n"));
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SMTP/1.0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(answer(bad, never).status, 400, "{bad:?}");
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r"), None);
        assert_eq!(head_end(b""), None);
        assert_eq!(head_end(b"\n"), None);
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(Response::too_large().status, 431);
        assert_eq!(Response::busy().status, 503);
        assert!(text(&Response::busy()).contains("Connection: close\r\n"));
    }
}
