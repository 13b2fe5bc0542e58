//! `Link` headers (RFC 8288), as the Hugging Face API paginates with them.

use reqwest::header::{self, HeaderMap};
use reqwest::Url;

/// The `rel="next"` target of the `Link` headers, resolved against `base`.
pub(crate) fn next_link(headers: &HeaderMap, base: &Url) -> Option<Url> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_link)
        .find(|(_, rels)| rels.iter().any(|r| r.eq_ignore_ascii_case("next")))
        .and_then(|(target, _)| base.join(&target).ok())
}

/// The links of one `Link` header value: `<target>; rel="a b"; x=y, <target2>; …` (RFC 8288).
/// Commas and semicolons inside `<…>` and quoted strings do not split.
fn parse_link(value: &str) -> Vec<(String, Vec<String>)> {
    let mut links = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        let target = rest[open + 1..open + close].trim().to_owned();
        rest = &rest[open + close + 1..];
        // Parameters run to the next comma outside quotes.
        let end = find_unquoted(rest, ',').unwrap_or(rest.len());
        let (mut params, after) = rest.split_at(end);
        rest = after;
        let mut rels = Vec::new();
        while !params.is_empty() {
            let end = find_unquoted(params, ';').unwrap_or(params.len());
            if let Some((key, val)) = params[..end].split_once('=') {
                if key.trim().eq_ignore_ascii_case("rel") {
                    let val = val.trim().trim_matches('"');
                    rels.extend(val.split_ascii_whitespace().map(str::to_owned));
                }
            }
            params = params.get(end + 1..).unwrap_or("");
        }
        links.push((target, rels));
    }
    links
}

/// The byte index of the first `sep` outside double quotes.
fn find_unquoted(s: &str, sep: char) -> Option<usize> {
    let mut in_quotes = false;
    s.char_indices().find_map(|(i, c)| {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        (c == sep && !in_quotes).then_some(i)
    })
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn link_headers() {
        let base = Url::parse("https://hub.example/api/models/a/b/tree/c").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LINK,
            HeaderValue::from_static(
                r#"<https://hub.example/api/x?cursor=a,b;c>; rel="prev", <https://hub.example/api/models/a/b/tree/c?recursive=true&cursor=ZZ>; rel="next""#,
            ),
        );
        assert_eq!(
            next_link(&headers, &base).unwrap().as_str(),
            "https://hub.example/api/models/a/b/tree/c?recursive=true&cursor=ZZ"
        );
        let mut headers = HeaderMap::new();
        headers.append(
            header::LINK,
            HeaderValue::from_static(r#"</other>; rel=prev"#),
        );
        headers.append(
            header::LINK,
            HeaderValue::from_static(r#"</p2?c=1>; title="a, b; c"; REL="last Next""#),
        );
        assert_eq!(
            next_link(&headers, &base).unwrap().as_str(),
            "https://hub.example/p2?c=1"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LINK,
            HeaderValue::from_static(r#"<https://x/>; rel="prev""#),
        );
        assert!(next_link(&headers, &base).is_none());
        assert!(next_link(&HeaderMap::new(), &base).is_none());
    }
}
