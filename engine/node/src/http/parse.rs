//! The request head (parsed by `httparse`), the request path and the `Range` header.
//!
//! Sans-IO: these functions see bytes and strings, never a socket. The connection thread
//! (`super::server`) reads and calls [`parse_head`] on what it has so far.

/// Most bytes of request line and headers accepted; a head still not whole at this length
/// is refused with `431`.
pub(super) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted (as hyper's default); more are refused with `431`.
pub(super) const MAX_HEADERS: usize = 100;

/// What this endpoint uses of a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    /// The `Range` header's value, trimmed; `None` if absent or given more than once.
    pub(super) range: Option<String>,
    /// The `If-Range` header's value, trimmed (`Some("")` if given more than once).
    pub(super) if_range: Option<String>,
    /// The client keeps the connection open after the answer: HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive` (RFC 9112 §9.3).
    pub(super) keep_alive: bool,
}

/// Why a request head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// `400`: a byte that no request head may hold where it stands.
    Bad,
    /// `431`: not whole within [`MAX_HEAD_BYTES`], or more than [`MAX_HEADERS`] fields.
    TooLarge,
}

/// Parses the request head at the start of `buf`, the bytes read so far.
///
/// Returns `Ok(Some((request, len)))` once the head is whole (`len`: its bytes, up to and
/// including the empty line; what follows is not looked at), `Ok(None)` if it may still
/// become whole with more bytes. Call it again with the longer buffer after each read.
/// Bytes past [`MAX_HEAD_BYTES`] are not looked at. A head is refused as soon as it holds
/// a bad byte, before its end has arrived.
///
/// Lines may end in CRLF or a bare LF. The version must be `HTTP/1.0` or `HTTP/1.1`, the
/// method letters only: another token is malformed here (`400`), while a word other than
/// `GET` or `HEAD` is a method this endpoint does not serve (`405`, decided by the caller).
/// Never panics.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let buf = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    // httparse skips empty lines before the request line (RFC 9112 §2.2 allows it); this
    // endpoint keeps answering them 400.
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Err(HeadError::Bad);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad),
    };
    // httparse sets the method as soon as it has read it, whole head or not.
    if req
        .method
        .is_some_and(|m| !m.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(HeadError::Bad);
    }
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() == MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        httparse::Status::Partial => return Ok(None),
    };
    // A whole head has both; httparse gives them as options for partial ones.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Bad);
    };
    let mut ranges = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("range"));
    let range = match (ranges.next(), ranges.next()) {
        (Some(h), None) => Some(String::from_utf8_lossy(h.value).trim().to_string()),
        _ => None,
    };
    let mut if_ranges = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("if-range"));
    let if_range = match (if_ranges.next(), if_ranges.next()) {
        (None, _) => None,
        (Some(h), None) => Some(String::from_utf8_lossy(h.value).trim().to_string()),
        // Several: no validator matches them all.
        (Some(_), Some(_)) => Some(String::new()),
    };
    let connection = |token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let keep_alive = if req.version == Some(1) {
        !connection("close")
    } else {
        connection("keep-alive")
    };
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        range,
        if_range,
        keep_alive,
    };
    Ok(Some((request, len)))
}

/// The percent-decoded path of a request target (origin or absolute form), without its
/// query; `None` if the target is not one or has a bad escape.
pub(super) fn request_path(target: &str) -> Option<Vec<u8>> {
    let path = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return None;
        };
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_decode(path)
}

/// Decodes `%XX` escapes; `None` on a bad escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What a `Range` header asks of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RangeSpec {
    /// Malformed, several ranges, or another unit: send the whole object.
    Ignore,
    /// Bytes `start..end` (end exclusive, non-empty, within the object).
    Bytes { start: u64, end: u64 },
    /// `416`.
    Unsatisfiable,
}

/// Parses a `Range` header value against an object of `size` bytes: one range,
/// `bytes=a-b`, `bytes=a-` or `bytes=-n`.
pub(super) fn parse_range(value: &str, size: u64) -> RangeSpec {
    let value = value.trim();
    let Some(unit) = value.get(..6) else {
        return RangeSpec::Ignore;
    };
    if !unit.eq_ignore_ascii_case("bytes=") {
        return RangeSpec::Ignore;
    }
    let specs: Vec<&str> = value[6..]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs[..] else {
        return RangeSpec::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    if first.is_empty() {
        // bytes=-n: the last n bytes.
        let Some(n) = parse_digits(last) else {
            return RangeSpec::Ignore;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes {
            start: size - n.min(size),
            end: size,
        };
    }
    let Some(start) = parse_digits(first) else {
        return RangeSpec::Ignore;
    };
    let last = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(l) if l >= start => Some(l),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    let end = last.map_or(size, |l| l.saturating_add(1).min(size));
    RangeSpec::Bytes { start, end }
}

/// ASCII digits as a number, saturating at `u64::MAX`; `None` if not all digits.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(head: &[u8]) -> (Request, usize) {
        parse_head(head)
            .expect("a good head")
            .expect("a whole head")
    }

    fn get(target: &str, range: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            range: range.map(Into::into),
            if_range: None,
            keep_alive: true,
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_tokens() {
        let keep = |h: &[u8]| whole(h).0.keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn if_range_is_kept_once_and_refused_when_repeated() {
        let if_range = |h: &[u8]| whole(h).0.if_range;
        assert_eq!(if_range(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            if_range(b"GET / HTTP/1.1\r\nIf-Range:  \"ab\" \r\n\r\n").as_deref(),
            Some("\"ab\"")
        );
        assert_eq!(
            if_range(b"GET / HTTP/1.1\r\nIf-Range: \"a\"\r\nif-range: \"a\"\r\n\r\n").as_deref(),
            Some("")
        );
    }

    #[test]
    fn a_get_is_parsed_up_to_its_empty_line() {
        let head = b"GET /dir/a%20b.ts?x=1 HTTP/1.1\r\nHost: x\r\nRange:  bytes=0-9 \r\n\r\nbody";
        let (req, len) = whole(head);
        assert_eq!(req, get("/dir/a%20b.ts?x=1", Some("bytes=0-9")));
        assert_eq!(&head[len..], b"body");
        // Absolute form, no Range.
        let (req, _) = whole(b"GET http://h:1/a.txt HTTP/1.0\r\n\r\n");
        assert_eq!(
            req,
            Request {
                keep_alive: false,
                ..get("http://h:1/a.txt", None)
            }
        );
    }

    #[test]
    fn a_head_request_with_bare_lf_lines_is_parsed() {
        let head = b"HEAD /a.txt HTTP/1.1\nhost: x\nrange: BYTES=-5\n\n";
        let (req, len) = whole(head);
        assert_eq!(req.method, "HEAD");
        assert_eq!(req.target, "/a.txt");
        assert_eq!(req.range.as_deref(), Some("BYTES=-5"));
        assert_eq!(len, head.len());
    }

    #[test]
    fn a_range_given_twice_is_dropped() {
        let (req, _) = whole(b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\nrange: bytes=2-3\r\n\r\n");
        assert_eq!(req.range, None);
        // A value that is not UTF-8 is kept (and later ignored by parse_range).
        let (req, _) = whole(b"GET / HTTP/1.1\r\nRange: bytes=\xff-\r\n\r\n");
        assert_eq!(req.range.as_deref(), Some("bytes=\u{fffd}-"));
        assert_eq!(parse_range("bytes=\u{fffd}-", 100), RangeSpec::Ignore);
    }

    #[test]
    fn a_head_split_across_reads_waits_for_its_end() {
        let head = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\n\r\n";
        let mut partial = 0;
        for cut in 0..head.len() {
            assert_eq!(parse_head(&head[..cut]), Ok(None), "cut at {cut}");
            partial += 1;
        }
        assert_eq!(partial, head.len());
        let (req, len) = whole(head);
        assert_eq!(req, get("/a.txt", Some("bytes=1-2")));
        assert_eq!(len, head.len());
    }

    #[test]
    fn a_head_not_whole_within_the_limit_is_too_large() {
        let mut head = b"GET /a.txt HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_HEAD_BYTES - 1, b'y');
        assert_eq!(parse_head(&head), Ok(None));
        head.push(b'y');
        assert_eq!(parse_head(&head), Err(HeadError::TooLarge));
        // Its end past the limit is not looked at.
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&head), Err(HeadError::TooLarge));
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_accepted() {
        let mut head = b"GET /a.txt HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_HEAD_BYTES - 4, b'y');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), MAX_HEAD_BYTES);
        assert_eq!(whole(&head).1, MAX_HEAD_BYTES);
    }

    #[test]
    fn more_header_fields_than_the_limit_are_too_large() {
        let head = |fields: usize| {
            let mut h = "GET / HTTP/1.1\r\n".to_string();
            for i in 0..fields {
                h += &format!("X-{i}: v\r\n");
            }
            h + "\r\n"
        };
        assert_eq!(whole(head(MAX_HEADERS).as_bytes()).0, get("/", None));
        assert_eq!(
            parse_head(head(MAX_HEADERS + 1).as_bytes()),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn bad_request_lines_and_fields_are_400() {
        let bad: &[&[u8]] = &[
            b"garbage\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"G3T / HTTP/1.1\r\n\r\n",
            b"GET-X / HTTP/1.1\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nRange : bytes=0-1\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: nul\0\r\n\r\n",
        ];
        for head in bad {
            assert_eq!(
                parse_head(head),
                Err(HeadError::Bad),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_bad_head_is_refused_before_its_end() {
        assert_eq!(parse_head(b"garbage\r\n"), Err(HeadError::Bad));
        assert_eq!(parse_head(b"G3T "), Err(HeadError::Bad));
        assert_eq!(parse_head(b"\r"), Err(HeadError::Bad));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nno colon\r\n"),
            Err(HeadError::Bad)
        );
    }

    #[test]
    fn words_other_than_get_and_head_are_parsed_for_a_405() {
        let (req, _) = whole(b"DELETE /status HTTP/1.1\r\n\r\n");
        assert_eq!(req.method, "DELETE");
        let (req, _) = whole(b"get / HTTP/1.1\r\n\r\n");
        assert_eq!(req.method, "get");
    }

    #[test]
    fn range_forms() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes { start: 0, end: 10 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Bytes {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range("bytes=-1", 100),
            Bytes {
                start: 99,
                end: 100
            }
        );
        assert_eq!(parse_range("bytes=-500", 100), Bytes { start: 0, end: 100 });
        assert_eq!(parse_range("bytes= 5-6 ,", 100), Bytes { start: 5, end: 7 });
        assert_eq!(
            parse_range("bytes=99-200", 100),
            Bytes {
                start: 99,
                end: 100
            }
        );
        assert_eq!(parse_range("Bytes=1-1", 100), Bytes { start: 1, end: 2 });
    }

    #[test]
    fn unsatisfiable_ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=18446744073709551616-", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-10", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=2-1",
            "bytes=0-1,2-3",
            "bits=0-1",
            "bytes=1",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=é-",
        ] {
            assert_eq!(parse_range(bad, 100), RangeSpec::Ignore, "{bad:?}");
        }
    }

    #[test]
    fn request_paths() {
        assert_eq!(percent_decode("/a%20b%2Fc").unwrap(), b"/a b/c");
        assert_eq!(percent_decode("/%e2%82%AC").unwrap(), "/€".as_bytes());
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%zz"), None);
        assert_eq!(request_path("/x?y#z").unwrap(), b"/x");
        assert_eq!(request_path("HTTP://h:1").unwrap(), b"/");
        assert_eq!(request_path("https://h/a%20b").unwrap(), b"/a b");
        assert_eq!(request_path("*"), None);
        assert_eq!(request_path("a.txt"), None);
    }

    /// Bytes a request head is made of, and some it must not hold.
    const HEAD_BYTES: &[u8] = b"GETHEADhtp/1.0 \t\r\n:;,=-Rrangebytes0123456789%\0\x7f\xff";

    proptest! {
        #[test]
        fn parse_head_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048)
        ) {
            if let Ok(Some((_, len))) = parse_head(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn parse_head_never_panics_on_head_like_bytes(
            tail in proptest::collection::vec(proptest::sample::select(HEAD_BYTES), 0..512),
            line in 0usize..3,
        ) {
            let start: &[u8] = [&b""[..], b"GET /a HTTP/1.1\r\n", b"HEAD / HTTP/1.0\n"][line];
            let bytes = [start, &tail].concat();
            match parse_head(&bytes) {
                Ok(Some((req, len))) => {
                    prop_assert!(len <= bytes.len());
                    prop_assert!(!req.method.is_empty() && !req.target.is_empty());
                }
                // A proper prefix of a head that is still partial is partial too.
                Ok(None) => prop_assert_eq!(parse_head(&bytes[..bytes.len() / 2]), Ok(None)),
                Err(_) => {}
            }
        }

        #[test]
        fn a_good_head_is_partial_until_its_last_byte(
            target in "/[a-z0-9%./?=]{0,30}",
            range in proptest::option::of("bytes=[0-9]{0,5}-[0-9]{0,5}"),
            lf_only in any::<bool>(),
        ) {
            let nl = if lf_only { "\n" } else { "\r\n" };
            let range_field = range.as_ref().map_or(String::new(), |r| format!("Range: {r}{nl}"));
            let head = format!("GET {target} HTTP/1.1{nl}Host: x{nl}{range_field}{nl}");
            let (req, len) = whole(head.as_bytes());
            prop_assert_eq!(len, head.len());
            prop_assert_eq!(req, get(&target, range.as_deref()));
            for cut in 0..head.len() {
                prop_assert_eq!(parse_head(&head.as_bytes()[..cut]), Ok(None));
            }
        }

        #[test]
        fn parse_range_stays_within_the_object(
            value in "(bytes|BYTES|items)= ?[0-9]{0,21}-?[0-9]{0,21}(,[0-9]{0,3}-[0-9]{0,3})?",
            size in prop_oneof![0u64..2000, any::<u64>()],
        ) {
            match parse_range(&value, size) {
                RangeSpec::Bytes { start, end } => prop_assert!(start < end && end <= size),
                RangeSpec::Unsatisfiable => {}
                RangeSpec::Ignore => {}
            }
        }

        #[test]
        fn parse_range_never_panics_on_arbitrary_text(value in "\\PC{0,40}", size in any::<u64>()) {
            if let RangeSpec::Bytes { start, end } = parse_range(&value, size) {
                prop_assert!(start < end && end <= size);
            }
        }
    }
}
