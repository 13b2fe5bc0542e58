//! Single byte ranges of a blob (RFC 9110), with the semantics OCI clients rely on.

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob (200). Multi-range and unknown units land here.
    Full,
    /// Bytes `start..=end` (206).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        // bytes=-n: the last n bytes
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => RangeRequest::Full,
        },
        // bytes=a-
        (false, true) => match num(a) {
            Some(s) if s >= size => RangeRequest::Unsatisfiable,
            Some(s) => RangeRequest::Partial {
                start: s,
                end: size - 1,
            },
            None => RangeRequest::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s > e || s >= size => RangeRequest::Unsatisfiable,
            (Some(s), Some(e)) => RangeRequest::Partial {
                start: s,
                end: e.min(size - 1),
            },
            _ => RangeRequest::Full,
        },
    }
}

/// Parse an upload `Content-Range` (`a-b`, as the distribution-spec writes it; `bytes a-b`
/// and `bytes=a-b` are tolerated). `None` when malformed.
pub fn parse_content_range(h: &str) -> Option<(u64, u64)> {
    let s = h.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(parse(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(parse(Some("bytes=2-100"), 10), Partial { start: 2, end: 9 });
        assert_eq!(parse(Some("bytes=500-0"), 1000), Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse(Some("items=0-1"), 10), Full);
        assert_eq!(parse(Some("bytes=x-1"), 10), Full);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("5-1"), None);
        assert_eq!(parse_content_range("a-b"), None);
        assert_eq!(parse_content_range("-1"), None);
    }
}
