//! Reasons for the answers hyper writes itself.
//!
//! DESIGN note. When an HTTP/1.1 request head cannot be parsed (a malformed request line or
//! header, a head past the read buffer, a target too long), hyper answers on its own, before any
//! service runs, with a bare head and no body:
//! `HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: …\r\n\r\n`.
//! It offers no hook to change that answer, and every other error of the router says why in one
//! line. So the connection's writer (`conn::Watched`) hands each write that starts like
//! an error head to [`with_reason`], which recognises exactly hyper's bare answer (a status
//! hyper uses for parse errors and no header but `connection`, `content-length: 0` and `date`,
//! so never a node's answer, which always carries `x-jitsi-shard`, nor one of the router's own,
//! which always have a body) and returns it with a plain-text reason as its body.

/// What a bare answer's reason may mention.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// `limits.max_request_head`.
    pub max_request_head: usize,
    /// `limits.max_request_headers`.
    pub max_request_headers: usize,
}

/// Whether `bytes` may be the start of one of hyper's bare error answers (cheap; checked on
/// every write of an HTTP/1.1 connection).
pub fn may_be_bare_error(bytes: &[u8]) -> bool {
    bytes.len() > 12
        && bytes.starts_with(b"HTTP/1.")
        && matches!(&bytes[9..12], b"400" | b"414" | b"431")
}

/// hyper's bare error answer in `bytes`, with the router's reason as its body; `None` when
/// `bytes` is anything else.
pub fn with_reason(bytes: &[u8], limits: HeadLimits) -> Option<Vec<u8>> {
    if !may_be_bare_error(bytes) {
        return None;
    }
    let head = std::str::from_utf8(bytes).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match name {
            "content-length" if value == "0" => empty_body = true,
            "connection" | "date" => kept.push(line),
            _ => return None,
        }
    }
    if !empty_body {
        return None;
    }
    let reason = match &status_line[9..12] {
        "400" => {
            "malformed request: the request line or a header field is not valid HTTP/1.1".to_owned()
        }
        "414" => "request target too long".to_owned(),
        _ => format!(
            "request head too large: over {} bytes or {} header fields",
            limits.max_request_head, limits.max_request_headers
        ),
    };
    let mut answer = format!("{status_line}\r\n");
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str("content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n");
    answer.push_str(&format!(
        "content-length: {}\r\n\r\n{reason}\n",
        reason.len() + 1
    ));
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_head: 16384,
        max_request_headers: 100,
    };

    #[test]
    fn hypers_bare_answers_get_a_reason_and_nothing_else_changes() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 14:21:49 GMT\r\n\r\n";
        let text = String::from_utf8(with_reason(bare, LIMITS).unwrap()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"));
        assert!(head.contains("date: Sat, 05 Dec 2026 14:21:49 GMT"));
        assert!(head.contains("content-type: text/plain"));
        assert!(body.starts_with("malformed request"));
        assert!(head.contains(&format!("content-length: {}", body.len())));

        let large = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let text = String::from_utf8(with_reason(large, LIMITS).unwrap()).unwrap();
        assert!(text
            .ends_with("\r\n\r\nrequest head too large: over 16384 bytes or 100 header fields\n"));

        // A node's empty 400 carries its own headers and the shard; the router's own have bodies.
        let node = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-jitsi-shard: jitsi-a\r\ndate: x\r\n\r\n";
        assert!(with_reason(node, LIMITS).is_none());
        let ours =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\n";
        assert!(with_reason(ours, LIMITS).is_none());
        let partial = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n";
        assert!(with_reason(partial, LIMITS).is_none());
        assert!(with_reason(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", LIMITS).is_none());
    }
}
