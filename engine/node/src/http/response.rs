//! Response heads and the short answers: status lines, headers, media types.

use std::io::{self, Write};
use std::net::TcpStream;

/// The media type of an object, from its name's extension.
pub(super) fn content_type(name: &str) -> &'static str {
    let file = name.rsplit('/').next().unwrap_or(name);
    let ext = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "ts" | "m2ts" => "video/mp2t",
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// A status line and headers, with `Content-Length` and `Connection: close`.
pub(super) fn response_head(
    status: u16,
    headers: &[(&str, String)],
    content_length: u64,
) -> String {
    response_head_kept(status, headers, content_length, false)
}

/// A status line and headers, with `Content-Length` and `Connection: keep-alive` when
/// `keep_alive` (the connection takes another request after this answer), else
/// `Connection: close`.
pub(super) fn response_head_kept(
    status: u16,
    headers: &[(&str, String)],
    content_length: u64,
    keep_alive: bool,
) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    out += &format!("Content-Length: {content_length}\r\nConnection: {connection}\r\n\r\n");
    out
}

/// A status line and headers for a body whose length is not known when it starts: no
/// `Content-Length`, and the connection closes to end it (RFC 9112 §6.3, item 8).
pub(super) fn response_head_close_delimited(status: u16, headers: &[(&str, String)]) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += "Connection: close\r\n\r\n";
    out
}

pub(super) fn write_all_parts(stream: &mut TcpStream, head: &str, body: &[u8]) -> io::Result<()> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// A short text answer (its body left out for `HEAD`).
pub(super) fn simple(
    stream: &mut TcpStream,
    head_only: bool,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> io::Result<()> {
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8".to_string())];
    headers.extend(extra.iter().cloned());
    let head = response_head(status, &headers, body.len() as u64);
    let body = if head_only { "" } else { body };
    write_all_parts(stream, &head, body.as_bytes())
}

/// A `200` with a generated body that is not to be cached.
pub(super) fn send_text(
    stream: &mut TcpStream,
    head_only: bool,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let headers = [
        ("Content-Type", content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
    ];
    let head = response_head(200, &headers, body.len() as u64);
    let body = if head_only { "" } else { body };
    write_all_parts(stream, &head, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_come_from_the_last_extension_of_the_file_name() {
        assert_eq!(content_type("x/Movie.MKV"), "video/x-matroska");
        assert_eq!(content_type("a.m2ts"), "video/mp2t");
        assert_eq!(content_type("a.iso"), "application/octet-stream");
        assert_eq!(content_type(".txt"), "application/octet-stream");
        assert_eq!(content_type("dir.mp4/noext"), "application/octet-stream");
        assert_eq!(content_type("song.m4a"), "audio/mp4");
    }

    #[test]
    fn a_response_head_ends_with_its_length_and_the_close() {
        let head = response_head(206, &[("Content-Range", "bytes 0-0/1".into())], 1);
        assert_eq!(
            head,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\n"
        );
    }
}
